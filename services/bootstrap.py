"""The composition root: settings → telemetry → bus → catalog → keys → the targets a process was asked to run.

Which targets exist, which module runs each and what a process does around
them (key seeding, busy polling, the ops server, stage fusion) is declared in
``services/targets.py``; this module only builds what that table asks for.
Nothing imports it but ``python -m services`` and the tests.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import ipaddress
import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import msgspec

from services.ops import serve_ops
from services.runtime import Deps
from services.settings import DEFAULT_KEY_SECRET, Settings
from services.targets import BY_NAME, Shape, name_of, parse_targets
from shared.auth import KeyEntry, KeyLimits, KeyStore, generate_key
from shared.bus import Bus
from shared.bus.permissions import Access
from shared.catalog import load_catalog
from shared.collectors import start_collectors
from shared.logs import use_json_logs
from shared.state.buckets import KEYS
from shared.state.stores import Stores
from shared.telemetry import Telemetry

log = logging.getLogger("switchyard")

BUSY_POLL_S = 0.0005  # the busy-poll window of a process that runs the whole request path


def build_keyring(settings: Settings, clock: Callable[[], float] = time.time) -> tuple[KeyStore, str | None]:
    """The key store, seeded with the configured keys; when no admin key is set one is generated (and returned
    to be printed once). The configured admin key is the operator's: it may manage every tenant."""
    entries = [KeyEntry(key=k, tenant=v.tenant, team=v.team, role=v.role, name="configured", expires_at=v.expires_at,
                        allowed_models=v.allowed_models, allowed_providers=v.allowed_providers,
                        # msgspec validates the limits' ranges, so a bad configuration stops the start here.
                        limits=msgspec.convert(v.limits, KeyLimits) if v.limits is not None else None)
               for k, v in settings.api_keys.items()]
    generated = None
    if settings.admin_key is not None:
        admin = settings.admin_key.get_secret_value()
    else:
        admin, generated = _local_admin_key(Path(settings.data_dir))
    entries.append(KeyEntry(key=admin, tenant="default", team="default", role="admin", operator=True,
                            name="configured admin"))
    return KeyStore(settings.key_secret.get_secret_value().encode(), entries, clock), generated


def check_key_secret(settings: Settings, shape: Shape) -> None:
    """Refuse the public default ``SWITCHYARD_KEY_SECRET`` unless this runs the embedded default on loopback.

    With the default secret anyone can compute a key's HMAC, so a key record written to the bus would let any
    key in; it is tolerated only while the bus and the API are reachable from this machine alone, and said
    loudly then.
    """
    if settings.key_secret.get_secret_value() != DEFAULT_KEY_SECRET:
        return
    exposed = [f"the bus ({u})" for u in settings.nats.servers if not _loopback(urlsplit(u).hostname)]
    if shape.runs("gateway") and not _loopback(settings.gateway.host):
        exposed.append(f"the API ({settings.gateway.host}:{settings.gateway.port})")
    if exposed:
        raise SystemExit(f"refusing to start: SWITCHYARD_KEY_SECRET is the public default and {' and '.join(exposed)} "
                         f"is reachable beyond this machine; set it to a long random secret "
                         f"(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    log.warning("!!! SWITCHYARD_KEY_SECRET is the public default: acceptable only for this local, loopback-only "
                "run; set a long random secret before anything else can reach the bus or the API !!!")


def _loopback(host: str | None) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def _local_admin_key(data_dir: Path) -> tuple[str, str | None]:
    """The generated admin key, kept (mode 600) in the data dir so every process on this machine agrees.

    Returns the key, and the key again when it was created just now (to be printed once).
    """
    path = data_dir / "admin.key"
    if path.exists():
        return path.read_text().strip(), None
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this machine won the race
        return path.read_text().strip(), None
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key, key


async def build(settings: Settings, targets: list[str], clock: Callable[[], float] = time.time) -> Deps:
    """Everything the targets share; ``clock`` is what the key store checks expiry against (tests move it)."""
    telemetry = Telemetry(settings.telemetry, service_name=service_name(targets))
    shape = Shape.of(targets)
    check_key_secret(settings, shape)
    access = Access(shape.role)  # the bus user of this process: its targets' permissions (shared.bus.permissions)
    bus = Bus(settings.nats, telemetry, name="switchyard:" + ",".join(targets),
              busy_poll_s=BUSY_POLL_S if shape.busy_polls else 0.0, access=access)
    await bus.connect()
    await bus.ensure_stream()
    catalog = load_catalog(settings.catalog_path)
    keyring, generated = build_keyring(settings, clock)
    if shape.needs("keys"):
        # Seeds the configured keys into KV (where this role owns the keys) and keeps a watched index of all keys.
        await keyring.start(bus, seed=access.writes(KEYS.name))
    if shape.runs("gateway"):
        bus.capacity.start()  # how full the stream is, for refusing new work before it is (shared.bus.capacity)
    if generated and shape.runs("gateway"):
        # Printed once so a developer can call the API; set SWITCHYARD_ADMIN_KEY to choose it.
        print(f"switchyard: generated admin key (kept in {settings.data_dir}/admin.key; set SWITCHYARD_ADMIN_KEY "
              f"to choose one): {generated}", flush=True)
    stores = Stores(bus, catalog, cas_timeout_s=settings.policy.cas_timeout_s, breaker=settings.router.breaker,
                    health=settings.router.health, retry_budget_window_s=settings.router.retry_budget_window_s,
                    metrics=telemetry.metrics)
    return Deps(settings=settings, telemetry=telemetry, bus=bus, catalog=catalog, keyring=keyring, targets=targets,
                stores=stores)


async def run_targets(deps: Deps, stop: asyncio.Event) -> None:
    """Start every target, then wait for ``stop``; shut down in reverse order."""
    tasks = []
    for target in deps.targets:
        _, _, arg = target.partition(":")
        module = importlib.import_module(BY_NAME[name_of(target)].module)
        tasks.append(asyncio.ensure_future(module.run(deps, arg or None)))
    if not deps.shape.serves_ops and deps.settings.metrics_port is not None:
        tasks.append(asyncio.ensure_future(serve_ops(deps, deps.settings.metrics_port)))
    tel = deps.settings.telemetry
    start_collectors(deps.bus, deps.telemetry.metrics, tel.collect_interval_s, tel.loop_lag_interval_s)
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for t in done:
        if t is not waiter and t.exception() is not None:
            log.error("target failed: %r", t.exception())
    await drain(deps, deps.settings.shutdown_grace_s)
    for fn in reversed(deps.on_stop):
        try:
            await fn()
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("stop hook failed: %r", exc)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await deps.bus.close()
    deps.telemetry.shutdown()


async def drain(deps: Deps, grace_s: float) -> None:
    """Shutdown's first steps, within ``grace_s``: /readyz turns 503, the HTTP servers stop accepting and answer
    the requests they hold (the pipeline still runs for them), then the consumers stop pulling and finish or
    hand back their messages. Whatever is still running at the deadline is cancelled by the caller."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    deps.draining = True
    steps = [asyncio.ensure_future(fn()) for fn in deps.on_drain]
    if steps:
        done, _ = await asyncio.wait(steps, timeout=grace_s)
        for t in done:
            if t.exception() is not None:
                log.warning("drain step failed: %r", t.exception())
    await deps.bus.drain(max(0.0, deadline - loop.time()))


def service_name(targets: list[str]) -> str:
    """The process's name in traces and logs: ``switchyard-gateway``, ``switchyard-worker-openai`` ..."""
    return "switchyard-" + "-".join(t.replace(":", "-") for t in targets)[:60]


async def main(settings: Settings, targets: list[str]) -> None:
    json_logs = settings.telemetry.log_format == "json"
    if json_logs:
        use_json_logs(service_name(targets))
    lower_cpu_priority(settings.nice)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deps = await build(settings, targets)
    if json_logs:  # from now on with the trace and request ids of the work that logs
        use_json_logs(service_name(targets), deps.telemetry)
    tune_gc()
    await run_targets(deps, stop)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    Every message allocates a tree of event structs; with the default thresholds a young-generation
    collection ran every few hundred allocations and a full one, traversing every live object (the catalog,
    the imported modules, the batches in flight), every ten of those: in the audit process it showed as a
    sixth of its CPU inside event decoding. What exists after start-up is frozen (never traversed again) and
    collections run less often; reference counting still frees everything that forms no cycle.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


_AUTOGROUP = Path("/proc/self/autogroup")


def lower_cpu_priority(nice: int) -> None:
    """Run this process at nice ``nice`` (``SWITCHYARD_NICE``) or lower, set before it starts any thread.

    On Linux a nice value belongs to a thread: set here, before the bus, the audit store's thread or the
    telemetry exporters exist, every thread of the process inherits it. A kernel that groups processes by
    session (autogroup) shares the CPU between sessions first and applies nice only inside one, so a process
    that leads its own session (as each target started by the bench or a supervisor does) sets its session's
    group too; a process inside someone else's session (a shell's) leaves that group alone. Raising priority
    needs privileges, so only lowering is offered. Why lower it at all: on one host, job ingest is bounded by
    the gateway's share of the CPU while the pipeline drains, and a drain can wait in the stream where a
    submission cannot.
    """
    if nice <= 0:
        return
    if os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if os.getsid(0) == os.getpid():
        group_nice = session_group_nice()
        if group_nice is not None and group_nice < nice:
            try:
                _AUTOGROUP.write_text(str(nice))
            except OSError as exc:  # e.g. a read-only /proc: the threads' nice still applies
                log.warning("could not set this session's CPU priority (%r); the process's own nice applies", exc)
    log.info("running at nice %d", nice)


def session_group_nice() -> int | None:
    """The nice of this process's session group (autogroup), or None where it has none to set.

    The file reads "/autogroup-125 nice 0"; it is absent on a kernel without autogroups and empty for a
    process still in the boot session's default group (a descendant of PID 1 that never started a session),
    which is how a CI runner may start the suite.
    """
    try:
        fields = _AUTOGROUP.read_text().split()
        return int(fields[-1]) if fields else None
    except (OSError, ValueError):
        return None
