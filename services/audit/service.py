"""Audit service: every event, in batches, into the trace/ledger store and the job records.

Reads the whole stream (``sy.evt.>``) through its own durable consumer, folds
each fetched batch into rows written in one transaction, advances job records
in KV, and answers trace and ledger queries from the gateway over NATS
request/reply (queue group ``audit``, so any replica answers): traces, the
ledger, the request list, statistics and the audit trail. When an export is
configured it also runs the audit export (``services.audit.export``) on its
own durable consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind

from services.audit.export import Exporter, remove_stale_consumer, sinks_of
from services.audit.handlers import build_rows, job_updates, trace_id_from_headers
from services.audit.queries import (
    BadQuery,
    EventsQuery,
    RequestsQuery,
    StatsQuery,
    list_events,
    list_requests,
    stats,
)
from services.audit.settings import AuditSettings
from services.audit.store import AuditStore
from services.runtime import Deps
from shared.bus import Delivery, Subscription
from shared.bus.retention import Sweeper
from shared.collectors import every
from shared.events import (
    ALL_EVENTS,
    RPC_AUDIT_EVENTS,
    RPC_AUDIT_LEDGER,
    RPC_AUDIT_REQUESTS,
    RPC_AUDIT_STATS,
    RPC_AUDIT_TRACE,
    TERMINAL_JOB_STATUSES,
    AnyEvent,
    Event,
    JobRecord,
)
from shared.settings import ConsumerSettings
from shared.state.buckets import JOBS
from shared.state.jobs import advance_job
from shared.state.queues import Queued

log = logging.getLogger("switchyard.audit")
DURABLE = "audit"


def database_url(deps: Deps) -> str:
    s = deps.settings
    return s.audit.database_url or f"sqlite+aiosqlite:///{Path(s.data_dir).resolve() / 'audit.db'}"


class _LedgerQuery(msgspec.Struct, forbid_unknown_fields=True):
    tenant: str
    team: str | None = None
    model: str | None = None
    provider: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100


class _TraceQuery(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str
    tenant: str
    operator: bool = False  # the reader is an operator: attempts carry their detail


async def run(deps: Deps, arg: str | None = None) -> None:
    s = deps.settings.audit
    store = await AuditStore.open(database_url(deps))
    jobs_kv = await deps.bus.kv(JOBS)
    queues = await deps.stores.queues()
    nc = deps.bus.nc

    telemetry, metrics = deps.telemetry, deps.telemetry.metrics
    for status in TERMINAL_JOB_STATUSES:
        metrics.jobs_finished.labels(status)  # at 0 from the start: rate() sees the first

    async def handle(items: list[tuple[AnyEvent, Delivery]]) -> list[Event]:
        events = [e for e, _ in items]
        trace_ids = {e.request_id: t for e, d in items if (t := trace_id_from_headers(d.headers))}
        await store.apply(build_rows(events, store_text=s.store_text, trace_ids=trace_ids))
        # Job records after the rows: a poll that sees "completed" finds the trace too.
        updates = job_updates(events)
        ended: list[JobRecord] = []  # the jobs this batch finished: their tenants' queue counts go back
        await asyncio.gather(*(advance_job(jobs_kv, u.job_id, u, finished=ended.append) for u in updates))
        if ended:
            await queues.release(Queued(tenant=r.tenant, size=r.size, deadline=r.deadline) for r in ended)
        for u in updates:  # a batch applied again (redelivered) counts its finished jobs again
            if u.proposed.status in TERMINAL_JOB_STATUSES:
                metrics.jobs_finished.labels(u.proposed.status).inc()
        if telemetry.tracing:  # each event recorded, in its request's trace
            for e, d in items:
                with telemetry.span(f"audit {type(e).__name__}", d.headers or {}, kind=SpanKind.CONSUMER,
                                    **{"switchyard.request_id": e.request_id}):
                    pass
        return []

    async def collect_jobs() -> None:
        """The job gauges, from the store's unfinished jobs (a partial index holds only those)."""
        now, by_status = time.time(), {"queued": (0, None), "in_progress": (0, None)}
        for status, (n, oldest) in (await store.open_jobs()).items():
            job_status = "queued" if status == "requested" else "in_progress"
            count, first = by_status[job_status]
            by_status[job_status] = (count + n, oldest if first is None else min(first, oldest))
        for job_status, (n, oldest) in by_status.items():
            metrics.jobs.labels(job_status).set(n)
            metrics.jobs_oldest_age.labels(job_status).set(max(0.0, now - oldest) if oldest is not None else 0.0)

    async def answer(msg, query_type: type, fn) -> None:
        try:
            query = msgspec.json.decode(msg.data, type=query_type)
            body: dict[str, Any] = await fn(query)
        except msgspec.DecodeError as exc:
            body = {"error": f"bad query: {exc}"}
        except BadQuery as exc:  # the caller's input: a 400 naming the parameter
            body = {"invalid": {"message": str(exc), "param": exc.param}}
        except Exception as exc:  # noqa: BLE001 - the caller turns this into a 503
            log.exception("audit query failed")
            body = {"error": f"audit store unavailable: {type(exc).__name__}"}
        await msg.respond(msgspec.json.encode(body))

    async def on_trace(msg) -> None:
        await answer(msg, _TraceQuery, lambda q: _trace(store, q))

    async def on_ledger(msg) -> None:
        await answer(msg, _LedgerQuery, lambda q: _ledger(store, q))

    async def on_requests(msg) -> None:
        await answer(msg, RequestsQuery, lambda q: list_requests(store, q))

    async def on_stats(msg) -> None:
        await answer(msg, StatsQuery, lambda q: stats(store, q))

    async def on_events(msg) -> None:
        await answer(msg, EventsQuery, lambda q: list_events(store, q))

    subs = [await nc.subscribe(RPC_AUDIT_TRACE, queue="audit", cb=on_trace),
            await nc.subscribe(RPC_AUDIT_LEDGER, queue="audit", cb=on_ledger),
            await nc.subscribe(RPC_AUDIT_REQUESTS, queue="audit", cb=on_requests),
            await nc.subscribe(RPC_AUDIT_STATS, queue="audit", cb=on_stats),
            await nc.subscribe(RPC_AUDIT_EVENTS, queue="audit", cb=on_events)]

    gauges = deps.bus.start(every(deps.settings.telemetry.collect_interval_s, collect_jobs, "jobs", metrics))

    async def stop() -> None:
        gauges.cancel()  # before the store closes under it
        for sub in subs:
            await sub.unsubscribe()
        await store.close()

    deps.on_stop.append(stop)
    sub = Subscription(DURABLE, (ALL_EVENTS,), consumer_for(s, deps.shape.shares_process("audit")), replayable=True)
    await deps.bus.ensure_consumer(sub)
    # The export's consumer exists before the sweeper's first round, so nothing it has not delivered is purged.
    if s.export.enabled:
        exporter = Exporter(deps.bus, s.export, sinks_of(s.export))
        await deps.bus.ensure_consumer(exporter.sub)
        deps.bus.start(exporter.serve())
    else:
        await remove_stale_consumer(deps.bus)
    if deps.settings.nats.sweep_s > 0:  # audit keeps the stream: what every reader acknowledged leaves it
        deps.bus.start(Sweeper(deps.bus).run())
    deps.ready["audit"] = True
    await deps.bus.consume_batches("audit", sub, handle)


def consumer_for(s: AuditSettings, shares_process: bool) -> ConsumerSettings:
    """The audit consumer's settings for this process.

    Sharing the event loop with any other target, a batch's synchronous work (folding its rows, building the
    statements' parameters) holds every request of the process for its duration, so batches stay small there
    (the tail latency of ``--target all`` under load fell with the smaller cap; docs/performance/README.md).
    Alone, audit keeps its larger batches, which cost less CPU per event.
    """
    if shares_process and s.consumer.batch > s.shared_loop_batch:
        return s.consumer.model_copy(update={"batch": s.shared_loop_batch})
    return s.consumer


async def _trace(store: AuditStore, q: _TraceQuery) -> dict:
    return {"trace": await store.trace(q.request_id, q.tenant, operator=q.operator)}


async def _ledger(store: AuditStore, q: _LedgerQuery) -> dict:
    return {"ledger": await store.ledger(q.tenant, team=q.team, model=q.model, provider=q.provider, since=q.since,
                                         until=q.until, limit=q.limit)}
