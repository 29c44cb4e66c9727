"""``make chaos``: Switchyard under faults, as an outside tester would run it, ending in one table of invariants.

    python -m tools.chaos            # the full run (≤ 15 min): a > 30 s NATS outage, a 5,000-job flood
    python -m tools.chaos --short    # ≤ 3 min: what ``make test`` runs (tests/fault/test_chaos.py)

Every service is its own process (``tests.support.procs``) on a local nats-server: two gateways, policy,
router, audit and one worker in front of a fake OpenAI upstream (``tests.fakes.providers``, real HTTP) whose
latency and failures follow a seeded schedule and which counts every call it gets. Several tenants send a
steady mix of synchronous, streamed, Anthropic ``/v1/messages`` and job traffic (one team with a budget, one
with a rate limit) while each service kind is SIGKILLed and restarted in turn, nats-server is killed (a short
outage, and in the full run one over 30 s), running jobs are cancelled, a key is revoked right after a NATS
restart, and one tenant floods jobs while another's interactive latency is measured.

Afterwards the audit store (SQLite, or a fresh PostgreSQL database with ``--store postgres``) and the
counts kept on the way are checked with ``tests.support.invariants``; the table is printed and the exit
status is 1 when any invariant count is not 0. Invariants (DESIGN.md §3) and what counts against them:

    lost                    accepted (202 / an answer with a request id) and never terminal in the audit store; a
                            503 outcome_unknown counts once anything of it exists (a trace, a call, a ledger row):
                            one that never reached the stream must leave nothing, and is shown apart
    double terminal         a request with more than one distinct terminal event on the bus
    duplicate ledger rows   more ledger rows for a request than billable provider calls
    provider calls          a successful upstream call of a request that is neither billed (a ledger row) nor
      unaccounted           recorded as an interrupted delivery (a worker killed before it saw the answer)
    trace/ledger drift      a request whose recorded cost differs from its ledger rows', or an ended request
                            with an attempt still ``dispatched``
    refused-then-executed   answered "not accepted" (503 not_accepted) and later seen by the audit store
    revoked-key acceptances answers 200 to a revoked key later than 1 s after its revocation
    budget overspend        the capped team's ledger total above its daily budget
    flood p99 > 3x idle     the other tenant's interactive p99 during the flood against its idle p99 (p95 in
                            the short run: of its ~50 samples a p99 is the single slowest call)

See docs/reliability.md for the failure model these check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import nats
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python tools/chaos.py`` too
    sys.path.insert(0, str(ROOT))

from shared.events import decoder  # noqa: E402
from shared.natsd import NatsServer, free_port, port_open  # noqa: E402
from tests.fakes.providers import Fault, FakeProviders  # noqa: E402
from tests.support.invariants import tally  # noqa: E402
from tests.support.procs import ServiceProcess, wait_http_ready  # noqa: E402

ADMIN = "sk-chaos-admin"
KEYS = {  # tenant/team per key: a steady interactive tenant, a flooding one, a budget-capped and a rate-limited team
    "sk-chaos-calm": ("calm", "calm"),
    "sk-chaos-flood": ("flood", "flood"),
    "sk-chaos-capped": ("capped", "capped"),
    "sk-chaos-limited": ("limited", "limited"),
}
BUDGET_USD = 0.0003  # about ten calls: the capped team runs into it during the run
RPM = 30
TERMINAL = {"succeeded", "failed", "denied", "cancelled", "expired"}
MODEL = "chaos-1"
PG = ("127.0.0.1", 5432)


class CountingUpstream(FakeProviders):
    """The fake upstream, also noting for every call (in the order of ``requests``) whether an injected fault
    failed it."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[bool] = []

    def _take_fault(self, provider: str, headers: dict[str, str]) -> Fault:
        # Called in the same turn of the loop as the call was recorded: the two lists stay in step.
        fault = super()._take_fault(provider, headers)
        with self._lock:
            self.failed.append(fault.status is not None)
        return fault

    def calls(self) -> list[tuple[str, bool]]:
        """(the call's first message, whether it succeeded) for every call so far."""
        with self._lock:
            pairs = list(zip(self.requests, self.failed))
        out = []
        for rec, failed in pairs:
            body = rec.json or {}
            messages = body.get("messages") or [{}]
            out.append((str(messages[0].get("content", "")), not failed))
        return out


@dataclass(frozen=True)
class Plan:
    """How long and how hard one run is."""

    name: str
    steady_rps: float
    phase_s: float  # traffic between two faults
    outage_s: tuple[float, ...]  # nats-server outages, in order
    flood_jobs: int
    cancels: int
    settle_s: float
    # The calm tenant is measured while the flood is submitted and, at least this long from its start, while
    # its jobs drain: a short flood is submitted in a second or two, too few samples for a p99 (of 7, a max).
    flood_measure_s: float = 0.0
    # The percentile the flood check compares. A short run's tens of samples make its p99 the single slowest
    # call, which one scheduling hiccup of a loaded CI machine decides; its p95 still catches a lane that waits.
    flood_quantile: float = 0.99


SHORT = Plan("short", steady_rps=12, phase_s=4, outage_s=(3,), flood_jobs=400, cancels=6, settle_s=60,
             flood_measure_s=8, flood_quantile=0.95)
FULL = Plan("full", steady_rps=20, phase_s=12, outage_s=(3, 35), flood_jobs=5000, cancels=30, settle_s=240)


@dataclass
class Book:
    """What the client side saw: accepted ids, refusals, latencies, revocation acceptances."""

    accepted: dict[str, str] = field(default_factory=dict)  # request id → kind
    not_accepted: set[str] = field(default_factory=set)
    refused_prompts: set[str] = field(default_factory=set)  # 503 not accepted before the request had an id
    unknown: set[str] = field(default_factory=set)
    answers: Counter = field(default_factory=Counter)  # (kind, status) → n
    calm_idle: list[float] = field(default_factory=list)
    calm_flood: list[float] = field(default_factory=list)
    revoked_accepted: int = 0
    revocation_checks: int = 0
    new_key_delay_s: list[float] = field(default_factory=list)
    cancelled: int = 0
    terminals: dict[str, set] = field(default_factory=lambda: defaultdict(set))  # request id → terminal event ids
    faults_injected: int = 0
    content: dict[str, str] = field(default_factory=dict)  # a request's unique prompt → its id
    log: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {what}"
        self.log.append(line)
        print(line, flush=True)


class Chaos:
    """One chaos run: the processes, the traffic, the faults and the counts."""

    def __init__(self, plan: Plan, work: Path, store: str, seed: int, sync: str | None) -> None:
        self.plan, self.work, self.store_kind, self.seed = plan, work, store, seed
        self.rng = random.Random(seed)
        self.book = Book()
        self.fakes = CountingUpstream()
        self.nats = NatsServer(work / "nats", sync=sync)
        self.ports = (free_port(), free_port())
        self.procs: dict[str, ServiceProcess] = {}
        self.db_url = ""
        self.pg_db: str | None = None
        self.stop_traffic = asyncio.Event()
        self.slow = asyncio.Event()  # the upstream slowed down, so that cancelled jobs are mid-call
        self.clients: list[httpx.AsyncClient] = []

    # ---- setup ------------------------------------------------------------------------------

    async def setup(self) -> None:
        """The upstream, the audit database, nats-server, every service process, and the teams' limits."""
        self.fakes.start()
        catalog = {"providers": [{"name": "up", "type": "openai", "base_url": self.fakes.base_url("openai"),
                                  "api_key": self.fakes.api_key, "timeout_s": 10, "max_in_flight": 32,
                                  "breaker": {"enabled": False}}],
                   "models": [{"name": MODEL, "input_per_mtok": 1.0, "output_per_mtok": 2.0,
                               "capabilities": ["streaming"],
                               "deployments": [{"provider": "up", "upstream_model": "gpt-chaos"}]}]}
        (self.work / "catalog.yaml").write_text(yaml.safe_dump(catalog))
        self.db_url = await self._database()
        self.nats.start()
        base = {
            **self.nats.client_env(),
            "SWITCHYARD_ADMIN_KEY": ADMIN,
            "SWITCHYARD_API_KEYS": json.dumps({k: {"tenant": t, "team": team} for k, (t, team) in KEYS.items()}),
            "SWITCHYARD_CATALOG_PATH": str(self.work / "catalog.yaml"),
            "SWITCHYARD_DATA_DIR": str(self.work / "data"),
            "SWITCHYARD_AUDIT__DATABASE_URL": self.db_url,
            "SWITCHYARD_WORKERS__CONSUMER__ACK_WAIT_S": "3",
            "SWITCHYARD_LOG_LEVEL": "WARNING",
        }
        for i, port in enumerate(self.ports):
            self.procs[f"gateway{i + 1}"] = ServiceProcess("gateway", base | {"SWITCHYARD_GATEWAY__PORT": str(port)},
                                                           self.work, name=f"gateway{i + 1}")
        for target in ("policy", "router", "audit", "worker:up"):
            self.procs[target.partition(":")[0]] = ServiceProcess(target, base, self.work)
        for p in self.procs.values():
            p.start()
        for port in self.ports:
            await wait_http_ready(f"http://127.0.0.1:{port}/readyz", timeout=60)
        for port in self.ports:
            self.clients.append(httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60))
        admin = self.admin()
        for tenant, team, settings in (("capped", "capped", {"daily_budget_usd": BUDGET_USD}),
                                       ("limited", "limited", {"rpm": RPM})):
            r = await admin.post("/v1/admin/teams", json={"tenant": tenant, "name": team, "settings": settings})
            if r.status_code not in (201, 409):
                raise RuntimeError(f"could not create team {team}: {r.status_code} {r.text}")
        self.book.note(f"up: 2 gateways, policy, router, audit ({self.store_kind}), worker; nats {self.nats.url}")

    async def _database(self) -> str:
        if self.store_kind != "postgres":
            return f"sqlite+aiosqlite:///{self.work / 'audit.db'}"
        import asyncpg

        self.pg_db = f"chaos_{os.getpid()}_{int(time.time())}"
        conn = await asyncpg.connect(host=PG[0], port=PG[1], user="postgres", database="test")
        try:
            await conn.execute(f'CREATE DATABASE "{self.pg_db}"')
        finally:
            await conn.close()
        return f"postgresql+asyncpg://postgres@{PG[0]}:{PG[1]}/{self.pg_db}"

    def admin(self, i: int = 0) -> httpx.AsyncClient:
        """A client of gateway ``i`` with the operator's admin key."""
        return self._as(ADMIN, i)

    def _as(self, key: str, i: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.ports[i]}", timeout=60,
                                 headers={"authorization": f"Bearer {key}"})

    async def teardown(self) -> None:
        """Stop everything this run started; drop its PostgreSQL database."""
        for c in self.clients:
            await c.aclose()
        for p in self.procs.values():
            p.stop()
        self.nats.stop()
        self.fakes.stop()
        if self.pg_db:
            import asyncpg

            conn = await asyncpg.connect(host=PG[0], port=PG[1], user="postgres", database="test")
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            finally:
                await conn.close()

    # ---- the upstream's seeded weather ------------------------------------------------------

    async def weather(self) -> None:
        """Every half second: a new latency for the upstream, and now and then a few 503s."""
        while not self.stop_traffic.is_set():
            latency = self.rng.uniform(0.02, 0.25)
            self.fakes.always("openai", Fault(latency_s=1.5 if self.slow.is_set() else latency))
            if self.rng.random() < 0.2:
                n = self.rng.randint(1, 3)
                self.fakes.fail("openai", Fault(status=503, kind="server"), times=n)
                self.book.faults_injected += n
            await asyncio.sleep(0.5)

    # ---- traffic ----------------------------------------------------------------------------

    async def call(self, key: str, kind: str, gw: int | None = None) -> tuple[int, str | None, float]:
        """One request of ``kind`` as ``key``: (status, request id, seconds); the book keeps its fate."""
        gw = self.rng.randrange(2) if gw is None else gw
        prompt = f"chaos {self.rng.getrandbits(64):016x}"  # unique: the upstream's calls map back to requests
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
        path = {"sync": "/v1/chat/completions", "stream": "/v1/chat/completions", "messages": "/v1/messages",
                "job": "/v1/jobs"}[kind]
        if kind == "stream":
            body["stream"] = True
        if kind == "messages":
            body["max_tokens"] = 32
        headers = {"authorization": f"Bearer {key}"}
        started = time.perf_counter()
        try:
            r = await self.clients[gw].post(path, json=body, headers=headers)
            text = r.text
        except httpx.HTTPError:
            self.book.answers[(kind, "conn")] += 1
            return 0, None, time.perf_counter() - started
        took = time.perf_counter() - started
        rid = r.headers.get("x-request-id")
        self.book.answers[(kind, r.status_code)] += 1
        if rid is None and r.status_code == 503 and "not accepted" in text.lower():
            self.book.refused_prompts.add(prompt)
        if rid is not None:
            self.book.content[prompt] = rid
            if r.status_code == 503 and ("not_accepted" in text or "was not accepted" in text):
                self.book.not_accepted.add(rid)
            elif r.status_code == 503 and ("outcome_unknown" in text or "not acknowledged" in text):
                self.book.unknown.add(rid)
                self.book.accepted[rid] = kind  # may have run: it must then end, once
            elif r.status_code not in (401, 403):
                self.book.accepted[rid] = kind
        return r.status_code, rid, took

    async def steady(self) -> None:
        """The steady mix, at about ``steady_rps``, until told to stop."""
        kinds = ("sync", "sync", "stream", "messages", "job")
        keys = ("sk-chaos-calm", "sk-chaos-capped", "sk-chaos-limited", "sk-chaos-flood")
        running: set[asyncio.Task] = set()
        while not self.stop_traffic.is_set():
            task = asyncio.ensure_future(self.call(self.rng.choice(keys), self.rng.choice(kinds)))
            running.add(task)
            task.add_done_callback(running.discard)
            await asyncio.sleep(1 / self.plan.steady_rps)
        if running:
            await asyncio.wait(running, timeout=120)

    async def calm_latency(self, into: list[float], seconds: float) -> None:
        """The calm tenant's synchronous calls one at a time for ``seconds``: their latencies."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            status, _, took = await self.call("sk-chaos-calm", "sync", gw=0)
            if status == 200:
                into.append(took)

    async def watch_terminals(self) -> None:
        """Every terminal event published, by request: more than one distinct event id is a double terminal."""
        async def quiet(_exc: Exception) -> None:
            pass  # the outages are the point

        nc = await nats.connect(**self.nats.connect_options(), max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                error_cb=quiet)

        async def on(msg) -> None:
            try:
                ev = decoder.decode(msg.data)
            except msgspec.DecodeError:
                return
            self.book.terminals[ev.request_id].add(ev.event_id)

        await nc.subscribe("sy.evt.done.>", cb=on)
        try:
            await self.stop_traffic.wait()
            await asyncio.sleep(self.plan.settle_s + 5)
        except asyncio.CancelledError:
            pass
        finally:
            await asyncio.gather(nc.close(), return_exceptions=True)

    # ---- faults ---------------------------------------------------------------------------

    async def kill_and_restart(self, name: str) -> None:
        """SIGKILL one service process, and start it again a moment later."""
        proc = self.procs[name]
        proc.kill()
        self.book.note(f"SIGKILL {name}")
        await asyncio.sleep(1.5)
        proc.start()
        if name.startswith("gateway"):
            await wait_http_ready(f"http://127.0.0.1:{self.ports[int(name[-1]) - 1]}/readyz", timeout=60)
        self.book.note(f"restarted {name}")

    async def nats_outage(self, seconds: float) -> None:
        """SIGKILL nats-server, keep it down ``seconds``, restart it, then check a revocation at once."""
        self.nats.stop(kill=True)
        self.book.note(f"SIGKILL nats-server for {seconds:g}s")
        await asyncio.sleep(seconds)
        self.nats.start()
        self.book.note("nats-server restarted")
        await self.revocation_check("right after a NATS restart")

    async def revocation_check(self, when: str) -> None:
        """Make a key on gateway 1, revoke it there, hammer gateway 2 with it: count answers past revocation + 1 s."""
        admin = self.admin(0)
        try:
            made = None
            give_up = time.monotonic() + 30
            while made is None and time.monotonic() < give_up:
                r = await admin.post("/v1/admin/keys", json={"tenant": "calm", "team": "calm"})
                if r.status_code == 201:
                    made = r.json()
                else:
                    await asyncio.sleep(0.05)
            if made is None:
                self.book.note(f"revocation check {when}: could not create a key")
                return
            created = time.monotonic()
            far = self._as(made["key"], 1)
            try:
                while time.monotonic() < created + 5:
                    if (await far.get("/v1/models")).status_code == 200:
                        self.book.new_key_delay_s.append(time.monotonic() - created)
                        break
                    await asyncio.sleep(0.02)
                while (await admin.post(f"/v1/admin/keys/{made['id']}/revoke")).status_code != 200:
                    await asyncio.sleep(0.05)
                revoked = time.monotonic()
                late = 0
                while time.monotonic() < revoked + 2.5:
                    sent = time.monotonic()
                    a, b = await asyncio.gather(far.get("/v1/models"), self._as(made["key"], 0).get("/v1/models"))
                    if sent > revoked + 1.0:
                        late += (a.status_code == 200) + (b.status_code == 200)
                self.book.revoked_accepted += late
                self.book.revocation_checks += 1
                self.book.note(f"revocation check {when}: {late} acceptance(s) after revocation + 1 s")
            finally:
                await far.aclose()
        finally:
            await admin.aclose()

    async def cancels(self, n: int) -> None:
        """Jobs cancelled while their provider call runs (the upstream slowed for them)."""
        flood = self._as("sk-chaos-flood", 0)
        self.slow.set()
        await asyncio.sleep(0.6)  # the weather has turned
        try:
            for _ in range(n):
                status, rid, _ = await self.call("sk-chaos-flood", "job", gw=0)
                if status != 202:
                    continue
                for _ in range(100):  # until its provider call runs (1.5 s long now)
                    r = await flood.get(f"/v1/jobs/{rid}")
                    if r.status_code == 200 and r.json()["status"] == "in_progress":
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)
                c = await flood.post(f"/v1/jobs/{rid}/cancel")
                if c.status_code == 200:
                    self.book.cancelled += 1
        finally:
            self.slow.clear()
            await flood.aclose()
        self.book.note(f"cancelled {self.book.cancelled} running job(s)")

    async def flood(self) -> None:
        """One tenant's job flood while the calm tenant's interactive latency is measured."""
        n = self.plan.flood_jobs
        sem = asyncio.Semaphore(32)

        async def one() -> None:
            async with sem:
                await self.call("sk-chaos-flood", "job")

        self.book.note(f"flood: {n} jobs from tenant 'flood'")
        flooding = asyncio.ensure_future(asyncio.gather(*(one() for _ in range(n))))
        until = time.monotonic() + self.plan.flood_measure_s
        await asyncio.sleep(1.0)
        while not flooding.done() or time.monotonic() < until:
            await self.calm_latency(self.book.calm_flood, 2.0)
        await flooding
        self.book.note("flood submitted")

    # ---- the run --------------------------------------------------------------------------

    async def run(self) -> int:
        """The whole run: steady traffic, each fault in turn, the flood, settling; the exit status."""
        await self.setup()
        weather = asyncio.ensure_future(self.weather())
        watcher = asyncio.ensure_future(self.watch_terminals())
        await asyncio.sleep(0.5)
        steady = asyncio.ensure_future(self.steady())
        try:
            await self.calm_latency(self.book.calm_idle, max(8.0, self.plan.phase_s))
            await self.revocation_check("steady")
            for name in ("worker", "router", "policy", "audit", "gateway2"):
                await self.kill_and_restart(name)
                await asyncio.sleep(self.plan.phase_s)
            await self.cancels(self.plan.cancels)
            for seconds in self.plan.outage_s:
                await self.nats_outage(seconds)
                await asyncio.sleep(self.plan.phase_s)
            await self.flood()
        finally:
            self.stop_traffic.set()
            await steady
            weather.cancel()
        self.book.note(f"traffic stopped; settling (up to {self.plan.settle_s:g}s)")
        rows = await self.settle()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        return self.report(rows)

    async def settle(self) -> dict:
        """Until every accepted request is terminal in the audit store (or the settle time is over)."""
        deadline = time.monotonic() + self.plan.settle_s
        while True:
            rows = await self.read_store()
            # An "outcome unknown" answer the store never heard of may never have reached the stream: it is
            # waited for only once it shows up (the report then decides which it was).
            open_ = [r for r in self.book.accepted if rows["status"].get(r) not in TERMINAL
                     and (r not in self.book.unknown or r in rows["status"])]
            if not open_ or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(1.0)

    async def read_store(self) -> dict:
        """Requests, ledger rows and attempts as the audit store holds them now."""
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(self.db_url)
        try:
            async with engine.connect() as c:
                status = {r[0]: r[1] for r in await c.execute(text("SELECT request_id, status FROM audit_requests"))}
                cost = {r[0]: r[1] for r in await c.execute(text("SELECT request_id, cost_usd FROM audit_requests"))}
                ledger = [dict(r._mapping) for r in await c.execute(text(
                    "SELECT request_id, attempt, team, cost_usd, cache FROM audit_ledger"))]
                attempts = [dict(r._mapping) for r in await c.execute(text(
                    "SELECT request_id, attempt, delivery, outcome FROM audit_attempts"))]
        finally:
            await engine.dispose()
        return {"status": status, "cost": cost, "ledger": ledger, "attempts": attempts}

    def report(self, rows: dict) -> int:
        """Count, print the table, and return 1 when any invariant count is not 0."""
        b = self.book
        billed_rows = [r for r in rows["ledger"] if (r["cache"] or "") != "hit"]
        billed = Counter(r["request_id"] for r in billed_rows)
        interrupted = Counter(r["request_id"] for r in rows["attempts"] if r["delivery"] >= 1)
        calls = self.fakes.calls()
        ok_calls: Counter = Counter()
        stray = 0  # calls for a request the client holds no id for (its gateway died mid-call)
        refused_called = 0  # calls for a request answered "not accepted" before it had an id
        for prompt, ok in calls:
            rid = b.content.get(prompt)
            if prompt in b.refused_prompts:
                refused_called += 1
            elif rid is None:
                stray += 1
            elif ok:
                ok_calls[rid] += 1
        # "Outcome unknown" (sent, not acknowledged): either it reached the stream and so must end, once, like
        # any accepted request, or it never did, and then nothing of it may exist: no trace, no call, no row.
        never_stored = {rid for rid in b.unknown if rid not in rows["status"] and rid not in b.terminals
                        and not ok_calls.get(rid) and not billed.get(rid)}
        accepted = {rid: kind for rid, kind in b.accepted.items() if rid not in never_stored}
        # One checker (tests.support.invariants): a ledger row per successful provider call of a request.
        t = tally(accepted, rows["status"], billed_rows, ok_calls)
        made = len(calls)
        failed = sum(1 for _, ok in calls if not ok)
        unbilled = sum(max(0, n - billed.get(rid, 0)) for rid, n in ok_calls.items())
        # A call whose worker died before it saw the answer cannot be billed; it must then be in the trace as an
        # interrupted delivery (its outcome unknown). Anything else is unaccounted.
        unaccounted_ids = [rid for rid, n in ok_calls.items() if n > billed.get(rid, 0) + interrupted.get(rid, 0)]
        unaccounted = sum(n - billed.get(rid, 0) - interrupted.get(rid, 0) for rid, n in ok_calls.items()
                          if rid in set(unaccounted_ids))
        ledger_cost: dict[str, float] = defaultdict(float)
        for r in rows["ledger"]:
            ledger_cost[r["request_id"]] += r["cost_usd"]
        open_attempts = {r["request_id"] for r in rows["attempts"] if r["outcome"] == "dispatched"}
        drifted = [rid for rid, st in rows["status"].items() if st in TERMINAL and (
            abs((rows["cost"].get(rid) or 0.0) - ledger_cost.get(rid, 0.0)) > 1e-9 or rid in open_attempts)]
        drift = len(drifted)
        double = sum(1 for ids in b.terminals.values() if len(ids) > 1)
        refused_ran = refused_called + sum(1 for rid in b.not_accepted
                                           if rid in rows["status"] or rid in b.terminals or ok_calls.get(rid))
        spent = sum(r["cost_usd"] for r in rows["ledger"] if r["team"] == "capped")
        overspend = max(0.0, spent - BUDGET_USD)
        idle, busy = sorted(b.calm_idle), sorted(b.calm_flood)

        def pct(xs: list[float], q: float) -> float:
            return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")

        def spread(xs: list[float]) -> str:
            return " / ".join(f"{pct(xs, p):.1f}" for p in (0.5, 0.95, 0.99)) + f" (n={len(xs)})"

        q = self.plan.flood_quantile
        slow = int(bool(idle and busy) and pct(busy, q) > 3 * pct(idle, q))
        invariants = {
            "lost": t.lost,
            "more than one terminal": double,
            "duplicate ledger rows": t.duplicated_ledger_rows,
            "provider calls unaccounted (not billed, not recorded)": unaccounted,
            "trace/ledger drift": drift,
            "refused then executed": refused_ran,
            "revoked-key acceptances after revocation + 1 s": b.revoked_accepted,
            "budget overspend (count; $ below)": int(overspend > 1e-9),
            f"flood p{q * 100:g} over 3x idle p{q * 100:g}": slow,
        }
        facts = [
            ("run", f"{self.plan.name}, seed {self.seed}, audit store {self.store_kind}"),
            ("submitted (accepted)", t.submitted),
            ("terminal", t.terminal),
            ("completed", t.completed),
            ("answered not accepted (503, never run): with id / before one",
             f"{len(b.not_accepted)} / {len(b.refused_prompts)}"),
            ("answered outcome unknown (503, id): ran / never reached the stream",
             f"{len(b.unknown) - len(never_stored)} / {len(never_stored)}"),
            ("jobs cancelled mid-call", b.cancelled),
            ("provider calls made", made),
            ("provider calls billed (ledger rows)", len(billed_rows)),
            ("provider calls unbilled (answer never seen: recorded)", unbilled),
            ("provider calls failed (injected 503)", failed),
            ("deliveries recorded as interrupted", sum(interrupted.values())),
            ("calls for requests without an id (gateway died)", stray),
            ("revocation checks", b.revocation_checks),
            ("new key usable on the other gateway (max s)",
             f"{max(b.new_key_delay_s):.3f}" if b.new_key_delay_s else "n/a"),
            ("budget: capped team spent / budget ($)", f"{spent:.6f} / {BUDGET_USD:.6f}"),
            ("budget overspend ($)", f"{overspend:.6f}"),
            ("calm p50 / p95 / p99 idle (ms)", spread(idle)),
            ("calm p50 / p95 / p99 during flood (ms)", spread(busy)),
            ("answers by kind and status", dict(sorted((f"{k}:{s}", n) for (k, s), n in b.answers.items()))),
        ]
        width = max(len(k) for k in [*invariants, *(k for k, _ in facts)]) + 2
        print("\n" + "=" * (width + 20))
        print(f"switchyard chaos — {self.plan.name} run")
        print("-" * (width + 20))
        for k, v in facts:
            print(f"{k:<{width}}{v}")
        print("-" * (width + 20))
        for k, v in invariants.items():
            print(f"{k:<{width}}{v}{'' if v == 0 else '   <-- INVARIANT BROKEN'}")
        print("=" * (width + 20), flush=True)
        examples = {
            "lost": [r for r in accepted if rows["status"].get(r) not in TERMINAL],
            "more than one terminal": [r for r, ids in b.terminals.items() if len(ids) > 1],
            "provider calls unaccounted": [
                f"{r} ({b.accepted.get(r)}, {rows['status'].get(r)}, calls {ok_calls[r]}, billed {billed.get(r, 0)}, "
                f"interrupted {interrupted.get(r, 0)})" for r in unaccounted_ids],
            "trace/ledger drift": [f"{r} ({rows['status'][r]}, cost {rows['cost'].get(r)}, ledger "
                                   f"{ledger_cost.get(r, 0.0)}, dispatched attempt: {r in open_attempts})"
                                   for r in drifted],
        }
        for k, ids in examples.items():
            if ids:
                print(f"{k}, e.g.: " + "; ".join(ids[:5]))
        return 1 if any(invariants.values()) else 0


def postgres_reachable() -> bool:
    """Whether PostgreSQL answers on 127.0.0.1:5432."""
    return port_open(*PG)


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.chaos``: one run; its exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="the ≤ 3 minute run make test uses")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--store", choices=("auto", "sqlite", "postgres"), default="auto",
                   help="the audit store (auto: PostgreSQL on 127.0.0.1:5432 when it answers, else SQLite)")
    p.add_argument("--sync", default=None, help="nats-server sync_interval (e.g. always)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs of every process)")
    args = p.parse_args(argv)
    store = args.store if args.store != "auto" else ("postgres" if postgres_reachable() else "sqlite")
    work = Path(tempfile.mkdtemp(prefix="switchyard-chaos-"))
    chaos = Chaos(SHORT if args.short else FULL, work, store, args.seed, args.sync)

    async def go() -> int:
        try:
            return await chaos.run()
        finally:
            await chaos.teardown()

    try:
        code = asyncio.run(go())
    finally:
        if args.keep or os.environ.get("SWITCHYARD_CHAOS_KEEP"):
            print(f"work directory (process logs): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
