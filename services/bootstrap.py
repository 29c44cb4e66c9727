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
import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable

import msgspec

from services.ops import serve_ops
from services.runtime import Deps
from services.settings import Settings
from services.targets import BY_NAME, Shape, name_of, parse_targets
from shared.auth import KeyEntry, KeyLimits, KeyStore, generate_key
from shared.bus import Bus
from shared.catalog import load_catalog
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
    telemetry = Telemetry(settings.telemetry, service_name="switchyard-" + "-".join(t.replace(":", "-") for t in targets)[:60])
    shape = Shape.of(targets)
    bus = Bus(settings.nats, telemetry, name="switchyard:" + ",".join(targets),
              busy_poll_s=BUSY_POLL_S if shape.busy_polls else 0.0)
    await bus.connect()
    await bus.ensure_stream()
    catalog = load_catalog(settings.catalog_path)
    keyring, generated = build_keyring(settings, clock)
    if shape.needs("keys"):
        await keyring.start(bus)  # seeds the configured keys into KV and keeps a watched index of all keys
    if generated and shape.runs("gateway"):
        # Printed once so a developer can call the API; set SWITCHYARD_ADMIN_KEY to choose it.
        print(f"switchyard: generated admin key (kept in {settings.data_dir}/admin.key; set SWITCHYARD_ADMIN_KEY "
              f"to choose one): {generated}", flush=True)
    stores = Stores(bus, catalog, cas_timeout_s=settings.policy.cas_timeout_s, breaker=settings.router.breaker,
                    health=settings.router.health, retry_budget_window_s=settings.router.retry_budget_window_s,
                    metrics=telemetry.metrics)
    return Deps(settings=settings, telemetry=telemetry, bus=bus, catalog=catalog, keyring=keyring, targets=targets,
                shape=shape, stores=stores)


async def run_targets(deps: Deps, stop: asyncio.Event) -> None:
    """Start every target, then wait for ``stop``; shut down in reverse order."""
    tasks = []
    for target in deps.targets:
        _, _, arg = target.partition(":")
        module = importlib.import_module(BY_NAME[name_of(target)].module)
        tasks.append(asyncio.ensure_future(module.run(deps, arg or None)))
    if not deps.shape.serves_ops and deps.settings.metrics_port is not None:
        tasks.append(asyncio.ensure_future(serve_ops(deps, deps.settings.metrics_port)))
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for t in done:
        if t is not waiter and t.exception() is not None:
            log.error("target failed: %r", t.exception())
    for fn in reversed(deps.on_stop):
        try:
            await fn()
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("stop hook failed: %r", exc)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await deps.bus.close()


async def main(settings: Settings, targets: list[str]) -> None:
    lower_cpu_priority(settings.nice)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deps = await build(settings, targets)
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
