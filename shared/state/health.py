"""Shared health in JetStream KV: breaker state, observed outcomes and latency, in-flight calls, retry budgets.

Every replica of every service sees the same picture, so two routers agree on
which deployment is open and a worker refuses calls to it.

KV layout::

    bucket sy_breakers   (history 1, no TTL: an operator's forced state must not expire)
      brk.<deployment>               BreakerRecord   changed only by compare-and-set (transitions, probe permits)
    bucket sy_health     (history 1, TTL 10 min: what nobody refreshes fades away)
      obs.<deployment>.<writer>      ObsRecord       one worker process's calls to the deployment
      rb.<deployment>.<writer>       BudgetRecord    one router process's first attempts and retries

``<deployment>`` is the deployment id with every byte outside ``[A-Za-z0-9_-]``
written ``=XX`` (KV keys allow no ``:``; ``/`` and ``.`` would read as tokens).

Each process writes only its own ``obs``/``rb`` keys (no contention): it
keeps them in memory, publishes them at most every ``flush_interval_s``
(and at least every ``heartbeat_s`` while calls are in flight), and reads
everyone else's through a KV watch into a local cache. A reader therefore
merges records per deployment: its own, fresh, and the others', at most one
flush old. The breaker record is the single shared state that must not
diverge, so it changes only through compare-and-set; its cached copy is
refreshed by the watch and immediately after each of this process's writes.

A breaker's window is the union of every writer's results of the current
generation (each result carries its time), cut to the last ``window_size``;
the process that records a failure evaluates the window and, if the breaker
must open, makes the transition (one CAS wins, the others see it done).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

import msgspec
from msgspec import Struct
from nats.js.kv import KeyValue

from shared.catalog import Catalog
from shared.events import Target
from shared.state import breakers as b
from shared.state.breakers import BreakerRecord, Permit
from shared.state.buckets import BREAKERS, HEALTH
from shared.state.kv import Codec, Known, cas, kv_get
from shared.state.settings import BreakerSettings, HealthSettings

log = logging.getLogger("switchyard.health")

R = TypeVar("R")

# Outcome classes (ErrorInfo.outcome) as the breaker counts them.
SUCCESS = "success"
FAILURES = frozenset({"failed", "timeout", "rate_limited", "stream_broken"})
AUTH = "auth"
# bad_request, denied, cancelled, circuit_open ...: the provider is not at fault; not counted either way.

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def token(name: str) -> str:
    """A deployment id as one KV key token."""
    return "".join(chr(c) if c in _SAFE else f"={c:02X}" for c in name.encode())


def untoken(tok: str) -> str:
    out, i, raw = bytearray(), 0, tok.encode()
    while i < len(raw):
        if raw[i:i + 1] == b"=":
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode()


def new_writer(role: str) -> str:
    """A process-unique writer id (KV key token)."""
    return f"{role}-{uuid.uuid4().hex[:12]}"


class TaskStats(Struct, array_like=True):
    """Outcomes of calls for one task (the bandit's evidence): counts and sums, halved as they grow."""

    n: float = 0.0
    ok: float = 0.0
    latency_ms: float = 0.0  # sum over successful calls
    cost_usd: float = 0.0  # sum over calls


class ObsRecord(Struct, kw_only=True, omit_defaults=True):
    """One process's observations of one deployment (KV ``obs.<deployment>.<writer>``)."""

    deployment: str
    writer: str
    ts: float = 0.0  # when published
    gen: int = 0  # the breaker generation ``outcomes`` belong to
    outcomes: list[tuple[float, int]] = msgspec.field(default_factory=list)  # (time, 1 ok / 0 failed)
    latency_ms: float | None = None  # EWMA of successful calls
    samples: int = 0
    in_flight: int = 0
    tasks: dict[str, TaskStats] = msgspec.field(default_factory=dict)


class BudgetRecord(Struct, kw_only=True, omit_defaults=True):
    """One router process's dispatches to one deployment, per second (KV ``rb.<deployment>.<writer>``)."""

    deployment: str
    writer: str
    ts: float = 0.0
    buckets: list[tuple[int, int, int]] = msgspec.field(default_factory=list)  # (epoch second, firsts, retries)


BREAKER_CODEC: Codec[BreakerRecord] = Codec(BreakerRecord)
_obs_dec = msgspec.json.Decoder(ObsRecord)
_budget_dec = msgspec.json.Decoder(BudgetRecord)
_enc = msgspec.json.Encoder()


@dataclass(frozen=True)
class DeploymentStats:
    """What has been observed of one deployment."""

    calls: int  # in the breaker's window
    failures: int
    error_rate: float
    latency_ms: float | None  # EWMA over successful calls, None when none was observed
    samples: int
    in_flight: int


def add_dispatch(budgets: dict[str, dict[str, BudgetRecord]], writer: str, deployment: str, kind: str, now: float,
                 window_s: float) -> None:
    """Count one dispatch in ``writer``'s per-second buckets (older buckets than the window are dropped)."""
    table = budgets.setdefault(deployment, {})
    own = table.get(writer)
    if own is None:
        own = table[writer] = BudgetRecord(deployment=deployment, writer=writer)
    sec = int(now)
    buckets = [bk for bk in own.buckets if bk[0] > sec - int(window_s) - 1]
    retry = kind == "retry"
    if buckets and buckets[-1][0] == sec:
        _, f, r = buckets[-1]
        buckets[-1] = (sec, f + (not retry), r + retry)
    else:
        buckets.append((sec, int(not retry), int(retry)))
    own.buckets = buckets


def deployment_index(catalog: Catalog) -> dict[str, tuple[str, str]]:
    """deployment id → (provider, model), for every deployment the catalog declares."""
    out: dict[str, tuple[str, str]] = {}
    for m in catalog.doc.models:
        for d in m.deployments:
            out[d.id or f"{d.provider}/{d.upstream_model or m.name}"] = (d.provider, m.name)
    return out


class BreakerConfigs:
    """The breaker settings of each deployment: the router's, with its provider's catalog overrides."""

    def __init__(self, base: BreakerSettings, catalog: Catalog | None = None) -> None:
        self.base = base
        self._by_provider: dict[str, BreakerSettings] = {}
        self._index = deployment_index(catalog) if catalog is not None else {}
        if catalog is not None:
            for name, p in catalog.providers.items():
                if p.breaker is not None and p.breaker.overrides():
                    self._by_provider[name] = base.model_copy(update=p.breaker.overrides())

    def deployments(self) -> list[str]:
        return sorted(self._index)

    def provider_of(self, deployment: str) -> str:
        known = self._index.get(deployment)
        return known[0] if known else deployment.split("/", 1)[0]

    def __call__(self, deployment: str) -> BreakerSettings:
        return self._by_provider.get(self.provider_of(deployment), self.base)


class HealthView:
    """Observed health as this process sees it: pure reads over the cached records (no I/O)."""

    def __init__(self, breakers: Mapping[str, BreakerRecord] | None = None,
                 obs: Mapping[str, Mapping[str, ObsRecord]] | None = None,
                 budgets: Mapping[str, Mapping[str, BudgetRecord]] | None = None,
                 configs: Callable[[str], BreakerSettings] | None = None,
                 settings: HealthSettings | None = None) -> None:
        self.breakers = breakers if breakers is not None else {}
        self.obs = obs if obs is not None else {}
        self.budgets = budgets if budgets is not None else {}
        self.configs = configs or BreakerConfigs(BreakerSettings())
        self.settings = settings or HealthSettings()

    def breaker(self, deployment: str) -> BreakerRecord:
        return self.breakers.get(deployment) or BreakerRecord()

    def state(self, deployment: str, now: float) -> str:
        """The breaker state a call would meet now (``closed`` when breakers are off for it)."""
        if not self.configs(deployment).enabled:
            return b.CLOSED
        return b.effective_state(self.breaker(deployment), now)

    def admits(self, deployment: str, now: float) -> tuple[bool, str]:
        """Would the breaker let a call through now? (Without taking the permit; the worker does that.)"""
        _, permit = b.acquire(self.breaker(deployment), now, self.configs(deployment))
        return permit.granted, permit.reason

    def open_for(self, deployment: str, now: float) -> float:
        """Seconds until the deployment may be probed (0: it may be called now)."""
        rec = self.breaker(deployment)
        if rec.state == b.FORCED_OPEN:
            return self.configs(deployment).open_wait_s
        if rec.state == b.HALF_OPEN:
            return 1.0  # the probes are out; their results decide soon
        return b.open_remaining(rec, now)

    def results(self, deployment: str, gen: int, now: float) -> list[bool]:
        """The breaker's sliding window for generation ``gen``, merged over every writer."""
        cfg = self.configs(deployment)
        merged = (
            (t, bool(ok))
            for rec in self.obs.get(deployment, {}).values() if rec.gen == gen
            for t, ok in rec.outcomes
        )
        return b.window(merged, now, cfg)

    def stats(self, deployment: str, now: float) -> DeploymentStats:
        rec = self.breaker(deployment)
        results = self.results(deployment, rec.gen, now)
        failures = results.count(False)
        weight = latency = 0.0
        samples = in_flight = 0
        for o in self.obs.get(deployment, {}).values():
            if o.latency_ms is not None and o.samples:
                w = min(o.samples, 50)
                weight += w
                latency += w * o.latency_ms
                samples += o.samples
            if now - o.ts <= self.settings.stale_after_s:
                in_flight += o.in_flight
        return DeploymentStats(calls=len(results), failures=failures,
                               error_rate=failures / len(results) if results else 0.0,
                               latency_ms=latency / weight if weight else None, samples=samples,
                               in_flight=in_flight)

    def latency_estimate(self, deployment: str, prior_ms: float, now: float,
                         stats: DeploymentStats | None = None) -> tuple[float, str]:
        """Observed latency shrunk towards the prior by ``latency_prior_weight`` samples."""
        s = stats or self.stats(deployment, now)
        if s.latency_ms is None:
            return prior_ms, "prior"
        k, n = self.settings.latency_prior_weight, min(s.samples, 50)
        return (k * prior_ms + n * s.latency_ms) / (k + n), "observed"

    def budget(self, deployment: str, now: float, window_s: float) -> tuple[int, int]:
        """First attempts and retries dispatched to the deployment in the last ``window_s`` (every router)."""
        since = int(now - window_s)
        firsts = retries = 0
        for rec in self.budgets.get(deployment, {}).values():
            for sec, f, r in rec.buckets:
                if sec > since:
                    firsts += f
                    retries += r
        return firsts, retries

    def task_stats(self, task: str, deployment: str) -> TaskStats | None:
        total = TaskStats()
        for rec in self.obs.get(deployment, {}).values():
            t = rec.tasks.get(task)
            if t is not None:
                total = TaskStats(n=total.n + t.n, ok=total.ok + t.ok, latency_ms=total.latency_ms + t.latency_ms,
                                  cost_usd=total.cost_usd + t.cost_usd)
        return total if total.n else None

    def deployments(self) -> list[str]:
        return sorted(set(self.breakers) | set(self.obs) | set(self.budgets))


class HealthStore:
    """This process's access to shared health: a watched cache, its own records, compare-and-set transitions."""

    def __init__(self, breakers_kv: KeyValue, health_kv: KeyValue, *, writer: str, breaker: BreakerSettings,
                 health: HealthSettings, retry_budget_window_s: float, catalog: Catalog | None = None, metrics=None,
                 clock: Callable[[], float] = time.time, cas_timeout_s: float = 5.0) -> None:
        self.breakers_kv = breakers_kv
        self.health_kv = health_kv
        self.writer = writer
        self.hs = health
        self.retry_budget_window_s = retry_budget_window_s
        self.configs = BreakerConfigs(breaker, catalog)
        self.metrics = metrics
        self.clock = clock
        self.cas_timeout_s = cas_timeout_s
        self._brk: dict[str, BreakerRecord] = {}
        self._rev: dict[str, int] = {}
        self._obs: dict[str, dict[str, ObsRecord]] = {}
        self._budgets: dict[str, dict[str, BudgetRecord]] = {}
        self._dirty_obs: set[str] = set()
        self._dirty_budget: set[str] = set()
        self._flushed: dict[str, float] = {}
        self._tasks: list[asyncio.Task] = []
        self._watchers: list = []
        self._kick = asyncio.Event()  # publish soon: a deployment went idle or busy
        self._view = HealthView(self._brk, self._obs, self._budgets, self.configs, self.hs)

    @classmethod
    async def open(cls, bus, *, role: str, breaker: BreakerSettings, health: HealthSettings,
                   retry_budget_window_s: float, catalog: Catalog | None = None, metrics=None,
                   clock: Callable[[], float] = time.time, cas_timeout_s: float = 5.0) -> "HealthStore":
        store = cls(await bus.kv(BREAKERS), await bus.kv(HEALTH), writer=new_writer(role), breaker=breaker,
                    health=health, retry_budget_window_s=retry_budget_window_s, catalog=catalog, metrics=metrics,
                    clock=clock, cas_timeout_s=cas_timeout_s)
        await store.start()
        return store

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every record, then keep the cache current from KV watches and publish our own records."""
        loaded = [asyncio.get_running_loop().create_future() for _ in range(2)]
        self._tasks = [
            asyncio.ensure_future(self._watch(self.breakers_kv, "brk.>", loaded[0])),
            asyncio.ensure_future(self._watch(self.health_kv, ">", loaded[1])),
            asyncio.ensure_future(self._flush_loop()),
        ]
        await asyncio.wait_for(asyncio.gather(*loaded), 10)
        if self.metrics is not None:  # every known deployment shows in the metric, closed until told otherwise
            for dep in self.configs.deployments():
                if dep not in self._brk:
                    self._gauge(dep, b.CLOSED)

    async def close(self) -> None:
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.debug("final health flush failed: %r", exc)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._watchers:
            try:
                await w.stop()
            except Exception:  # noqa: BLE001 - connection already gone
                pass

    async def _watch(self, kv: KeyValue, keys: str, loaded: asyncio.Future) -> None:
        """Apply every update of ``keys`` to the cache; start over if the watch breaks."""
        while True:
            try:
                watcher = await kv.watch(keys)
                self._watchers.append(watcher)
                async for entry in watcher:
                    if entry is None:
                        if not loaded.done():
                            loaded.set_result(True)
                        continue
                    self._apply(entry)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a lost connection: watch again
                log.warning("health watch on %s broke, restarting: %r", keys, exc)
                await asyncio.sleep(1.0)

    def _apply(self, entry) -> None:
        kind, _, rest = entry.key.partition(".")
        deleted = entry.operation in ("DEL", "PURGE") or not entry.value
        try:
            if kind == "brk":
                dep = untoken(rest)
                if deleted:
                    self._set_breaker(dep, BreakerRecord(), None)
                elif entry.revision > self._rev.get(dep, 0):
                    self._set_breaker(dep, BREAKER_CODEC.decode(entry.value), entry.revision)
                return
            tok, _, writer = rest.partition(".")
            if writer == self.writer:
                return  # our own records live in memory, fresher than KV
            dep = untoken(tok)
            table = self._obs if kind == "obs" else self._budgets if kind == "rb" else None
            if table is None:
                return
            if deleted:
                table.get(dep, {}).pop(writer, None)
            else:
                table.setdefault(dep, {})[writer] = (_obs_dec if kind == "obs" else _budget_dec).decode(entry.value)
        except (msgspec.DecodeError, ValueError) as exc:
            log.warning("ignoring unreadable health record %s: %s", entry.key, exc)

    def _set_breaker(self, dep: str, rec: BreakerRecord, revision: int | None) -> None:
        old = self._brk.get(dep)
        self._brk[dep] = rec
        if revision is None:
            self._rev.pop(dep, None)
        else:
            self._rev[dep] = revision
        own = self._obs.get(dep, {}).get(self.writer)
        if own is not None and own.gen != rec.gen:
            own.gen, own.outcomes = rec.gen, []  # metrics reset on every transition
            self._dirty_obs.add(dep)
        if self.metrics is not None and (old is None or old.state != rec.state):
            self._gauge(dep, rec.state)
        if old is not None and old.gen != rec.gen:
            log.info("breaker %s: %s → %s (%s)", dep, old.state, rec.state, rec.reason)

    def _gauge(self, dep: str, state: str) -> None:
        provider = self.configs.provider_of(dep)
        for name in b.STATES:
            self.metrics.breaker_state.labels(dep, provider, name).set(1 if name == state else 0)

    # ---- reads -----------------------------------------------------------------------------

    def view(self) -> HealthView:
        """The current picture (a live view: read it within one synchronous step)."""
        return self._view

    # ---- worker side: permits and results ----------------------------------------------------

    def _own(self, dep: str) -> ObsRecord:
        table = self._obs.setdefault(dep, {})
        own = table.get(self.writer)
        if own is None:
            own = table[self.writer] = ObsRecord(deployment=dep, writer=self.writer,
                                                 gen=self._brk.get(dep, BreakerRecord()).gen)
        return own

    async def acquire(self, target: Target) -> Permit:
        """Take a permit for one call (a probe permit takes a CAS); refused calls never reach the provider."""
        dep = target.deployment
        cfg = self.configs(dep)
        now = self.clock()
        new, permit = b.acquire(self._brk.get(dep, BreakerRecord()), now, cfg, self.writer)
        if new is not None:
            try:
                permit = await self._transition(dep, lambda r: b.acquire(r, self.clock(), cfg, self.writer))
            except Exception as exc:  # noqa: BLE001 - the state is unknown: do not call
                log.warning("breaker %s unreadable, refusing the call: %r", dep, exc)
                permit = Permit(granted=False, state=b.HALF_OPEN, reason="breaker_unavailable")
        if permit.granted:
            own = self._own(dep)
            own.in_flight += 1
            self._dirty_obs.add(dep)
            if own.in_flight == 1:
                self._kick.set()
        return permit

    async def record(self, target: Target, permit: Permit, outcome: str, latency_ms: float,
                     task: str | None = None, cost_usd: float = 0.0) -> None:
        """A permitted call ended with ``outcome``; never raises (health is recorded on a best-effort basis)."""
        try:
            await self._record(target.deployment, permit, outcome, latency_ms, task, cost_usd)
        except Exception as exc:  # noqa: BLE001 - the call's own result matters more than its bookkeeping
            log.warning("could not record the outcome of a call to %s: %r", target.deployment, exc)

    async def _record(self, dep: str, permit: Permit, outcome: str, latency_ms: float, task: str | None,
                      cost_usd: float) -> None:
        cfg = self.configs(dep)
        now = self.clock()
        own = self._own(dep)
        own.in_flight = max(0, own.in_flight - 1)
        self._dirty_obs.add(dep)
        if own.in_flight == 0:
            self._kick.set()  # an idle deployment should look idle to the routers at once
        ok = outcome == SUCCESS
        failed = outcome in FAILURES and (outcome != "rate_limited" or cfg.count_rate_limited)
        if ok:
            a = self.hs.latency_alpha
            own.latency_ms = latency_ms if own.latency_ms is None else (1 - a) * own.latency_ms + a * latency_ms
            own.samples += 1
        if task and (ok or failed):
            t = own.tasks.setdefault(task, TaskStats())
            t.n += 1
            t.ok += ok
            t.latency_ms += latency_ms if ok else 0.0
            t.cost_usd += cost_usd
            if t.n >= 500:  # forget slowly: the bandit keeps adapting
                t.n, t.ok, t.latency_ms, t.cost_usd = t.n / 2, t.ok / 2, t.latency_ms / 2, t.cost_usd / 2
        if not cfg.enabled or not permit.granted:
            return
        if outcome == AUTH:
            await self._cas(dep, lambda r: b.trip(r, now, cfg.auth_open_wait_s,
                                                  "the provider refused our credentials (401/403)", self.writer))
            return
        if not (ok or failed):
            return  # the request's own fault, or cancelled: not the provider's health
        if permit.probe:
            await self._cas(dep, lambda r: b.on_probe(r, permit.gen, ok, now, cfg, self.writer))
            return
        rec = self._brk.get(dep, BreakerRecord())
        if permit.gen != rec.gen or rec.state not in (b.CLOSED, b.FORCED_CLOSED):
            return  # permitted before the last transition: it does not count for this state
        if own.gen != rec.gen:
            own.gen, own.outcomes = rec.gen, []
        own.outcomes.append((now, int(ok)))
        del own.outcomes[:-cfg.window_size]
        if not ok and rec.state == b.CLOSED:
            await self._cas(dep, lambda r: b.on_window(r, self._view.results(dep, r.gen, now), now, cfg,
                                                       self.writer))

    # ---- transitions -------------------------------------------------------------------------

    async def _transition(self, dep: str, step: Callable[[BreakerRecord], tuple[BreakerRecord | None, R]]) -> R:
        """Compare-and-set on the shared record, starting from the watched copy (a conflict reads KV).

        The record this process writes is in its cache at once, before the watch brings it back.
        """
        known = Known(self._brk.get(dep), self._rev.get(dep))
        return await cas(self.breakers_kv, f"brk.{token(dep)}", BREAKER_CODEC, lambda r: step(r or BreakerRecord()),
                         timeout_s=self.cas_timeout_s, what="breaker store", known=known,
                         written=lambda new, revision: self._set_breaker(dep, new, revision))

    async def _reload(self, dep: str) -> None:
        """Bring the cached record up to date from KV now, without waiting for the watch."""
        entry = await kv_get(self.breakers_kv, f"brk.{token(dep)}", "breaker store")
        if entry is None:
            self._set_breaker(dep, BreakerRecord(), None)
        elif entry.value:
            self._set_breaker(dep, BREAKER_CODEC.decode(entry.value), entry.revision)
        else:
            self._rev[dep] = entry.revision

    async def _cas(self, dep: str, change: Callable[[BreakerRecord], BreakerRecord | None]) -> BreakerRecord:
        """Apply ``change`` to the shared record with compare-and-set; returns the record stored afterwards."""

        def step(rec: BreakerRecord) -> tuple[BreakerRecord | None, BreakerRecord]:
            new = change(rec)
            return new, rec if new is None else new

        return await self._transition(dep, step)

    async def operate(self, deployment: str, action: str, by: str = "operator") -> BreakerRecord:
        """An operator's ``force_open`` / ``force_closed`` / ``reset``."""
        if action not in b.ACTIONS:
            raise ValueError(f"unknown breaker action {action!r}; known: {', '.join(b.ACTIONS)}")
        await self._reload(deployment)
        return await self._cas(deployment, lambda r: b.operate(r, action, self.clock(), by))

    # ---- router side: retry budgets ----------------------------------------------------------

    def note_dispatch(self, deployment: str, kind: str, now: float) -> None:
        """Count a dispatch for the retry budget: ``first`` (incl. fallbacks arriving) or ``retry``."""
        add_dispatch(self._budgets, self.writer, deployment, kind, now, self.retry_budget_window_s)
        self._dirty_budget.add(deployment)

    # ---- publishing our own records ----------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Publish every ``flush_interval_s``, or sooner when a deployment went idle or busy."""
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), self.hs.flush_interval_s)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - next round
                log.debug("health flush failed: %r", exc)
            # Bounds the KV traffic: without it, sequential traffic flips idle/busy (and kicks) on every call.
            await asyncio.sleep(self.hs.min_flush_gap_s)

    async def flush(self) -> None:
        now = self.clock()
        due = set(self._dirty_obs)
        for dep, table in self._obs.items():
            own = table.get(self.writer)
            if own is not None and own.in_flight and now - self._flushed.get(dep, 0.0) >= self.hs.heartbeat_s:
                due.add(dep)
        self._dirty_obs.clear()
        budgets, self._dirty_budget = self._dirty_budget, set()
        puts = []
        for dep in due:
            own = self._obs.get(dep, {}).get(self.writer)
            if own is None:
                continue
            own.ts = now
            self._flushed[dep] = now
            puts.append(self.health_kv.put(f"obs.{token(dep)}.{self.writer}", _enc.encode(own)))
        for dep in budgets:
            own = self._budgets.get(dep, {}).get(self.writer)
            if own is not None:
                own.ts = now
                puts.append(self.health_kv.put(f"rb.{token(dep)}.{self.writer}", _enc.encode(own)))
        if puts:
            results = await asyncio.gather(*puts, return_exceptions=True)
            if any(isinstance(r, Exception) for r in results):
                self._dirty_obs |= due
                self._dirty_budget |= budgets

    # ---- the status API ------------------------------------------------------------------------

    def status(self, catalog: Catalog, now: float | None = None) -> list[dict]:
        """Live health per deployment the catalog offers (and any other with shared state)."""
        now = self.clock() if now is None else now
        return status_rows(self._view, catalog, self.configs, now)


def status_rows(view: HealthView, catalog: Catalog, configs: BreakerConfigs, now: float) -> list[dict]:
    """``GET /v1/providers/status``: one row per deployment."""
    index = deployment_index(catalog)
    configured = {t.deployment for m in catalog.models for t in catalog.deployments_of(m)}
    rows = []
    for dep in sorted(set(index) | set(view.deployments())):
        provider, model = index.get(dep, (configs.provider_of(dep), ""))
        if dep not in configured and dep not in view.breakers and dep not in view.obs:
            continue  # not offered here and never seen
        rec = view.breaker(dep)
        cfg = configs(dep)
        stats = view.stats(dep, now)
        spec = catalog.models.get(model)
        prior = spec.latency_prior_ms if spec is not None else 1000.0
        latency, source = view.latency_estimate(dep, prior, now)
        rows.append({
            "deployment": dep,
            "provider": provider,
            "model": model,
            "configured": dep in configured,
            "breaker": {
                "state": view.state(dep, now),
                "stored_state": rec.state,
                "since": rec.since or None,
                "open_until": rec.until if rec.state == b.OPEN else None,
                "retry_in_s": round(view.open_for(dep, now), 3) if rec.state in (b.OPEN, b.FORCED_OPEN) else 0.0,
                "reason": rec.reason or None,
                "generation": rec.gen,
                "probes": {"issued": rec.probes, "ok": rec.probe_ok, "failed": rec.probe_fail,
                           "needed": cfg.half_open_probes} if rec.state == b.HALF_OPEN else None,
                "enabled": cfg.enabled,
            },
            # Oldest first; who made each is left out: every tenant's key reads this, and an operator's key id
            # is not theirs to see.
            "transitions": [{k: v for k, v in msgspec.to_builtins(t).items() if k != "by"} for t in rec.history],
            "window": {"calls": stats.calls, "failures": stats.failures, "size": cfg.window_size,
                       "minimum_calls": cfg.minimum_calls, "threshold": cfg.failure_rate_threshold},
            "error_rate": round(stats.error_rate, 4),
            "latency_ms": round(latency, 3),
            "latency_source": source,
            "latency_observed_ms": round(stats.latency_ms, 3) if stats.latency_ms is not None else None,
            "samples": stats.samples,
            "in_flight": stats.in_flight,
        })
    return rows
