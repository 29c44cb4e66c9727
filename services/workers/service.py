"""Worker service: two durable consumers (one per lane), concurrency caps and a connection pool per provider.

``--target worker:openai`` runs the worker of one provider; ``worker`` runs
one for every configured provider in the catalog. A slow provider fills only
its own consumers' in-flight windows, never another's.

Lanes: ``worker-<provider>`` reads the interactive lane (synchronous and
streamed requests) with the provider's whole ``max_in_flight`` as its window;
``worker-<provider>-batch`` reads the batch lane (async jobs) with a window of
its own (``batch.share`` of it), drained fairly across tenants
(``fairness.py``). A backlog of jobs never stands in front of an interactive
request; at most ``(1 + batch.share) x max_in_flight`` calls run at once.

The worker publishes its own outcomes (then the bus acknowledges the attempt):
a success the stream refuses as a duplicate terminal is looked up, and when the
stored terminal is not this very event (a cancel got there first), the call is
recorded and billed apart (``after_end_of``).

Before calling, the worker claims the attempt (``shared.state.attempts``): an
attempt whose outcome is already in the stream (a message the server delivers
again after losing its acknowledgements) is not called again, and one another
delivery is still calling waits; the mark says ``done`` once the outcome is
published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import AsyncIterator

from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime import Deps
from services.workers.adapters import ProviderAdapter, adapter_class
from services.workers.adapters.transport import AiohttpTransport
from services.workers.cache import AdapterEmbedder, ResponseCache
from services.workers.fairness import FairSlots
from services.workers.handlers import WorkerDeps, after_end_of, attempt
from services.workers.settings import CacheSettings
from shared import genai
from shared.bus import Delivery, PubAck, Subscription
from shared.catalog import Catalog, ProviderSpec
from shared.errors import Defer
from shared.events import (
    BATCH,
    INTERACTIVE,
    AttemptDispatched,
    ChunkMessage,
    CompletionSucceeded,
    Event,
    attempt_subject,
    decoder,
    cancel_subject,
    chunk_encoder,
    chunk_subject,
)
from shared.lifecycle import poison, with_deadline
from shared.state.attempts import CALLING, AttemptMarks
from shared.state.buckets import ATTEMPTS, JOBS
from shared.state.jobs import get_job

log = logging.getLogger("switchyard.workers")

CLAIM_GRACE_S = 5.0  # a claimed call is given up this long after its own timeout
MAX_CLAIM_WAIT_S = 5.0  # a replayed attempt checks again on a live claim this often


class NatsChunkRelay:
    """Chunks out on ``sy.chunk.<origin>.<request_id>``; a gateway's cancel comes in on ``sy.cancel.<request_id>``.

    One subscription to every cancel serves all the streams this process relays (cancels are rare): a
    subscription per stream cost a SUB and an UNSUB, a task in nats-py, and in a cluster the interest
    propagated to every server, for every streamed request.
    """

    def __init__(self, bus) -> None:
        self.bus = bus
        self.nc = bus.nc
        self._streams: dict[str, set[asyncio.Event]] = {}  # request id → the streams relaying it here

    async def start(self) -> None:
        await self.bus.subscribe(cancel_subject("*"), self._on_cancel)

    def _on_cancel(self, msg) -> None:
        for cancelled in self._streams.get(msg.subject.rpartition(".")[2], ()):
            cancelled.set()

    async def send(self, origin: str, request_id: str, message: ChunkMessage) -> None:
        await self.nc.publish(chunk_subject(origin, request_id), chunk_encoder.encode(message))

    @contextlib.asynccontextmanager
    async def cancellation(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        cancelled = asyncio.Event()
        waiting = self._streams.setdefault(request_id, set())
        waiting.add(cancelled)
        try:
            yield cancelled
        finally:
            waiting.discard(cancelled)
            if not waiting:
                self._streams.pop(request_id, None)


def durable(provider: str, lane: str = INTERACTIVE) -> str:
    """The consumer of ``provider``'s attempts in ``lane``."""
    return f"worker-{provider}" if lane == INTERACTIVE else f"worker-{provider}-{lane}"


async def publish_outcome(bus, dispatch: AttemptDispatched, out: list[Event]) -> None:
    """Publish an attempt's events in order; a success refused as a duplicate terminal whose stored terminal is
    another event (the request ended first) is recorded and billed as the attempt's own ``after_end`` outcome."""
    for event in out:
        ack: PubAck = await bus.publish(event)
        if not (ack.duplicate and isinstance(event, CompletionSucceeded)):
            continue
        stored = await stored_event(bus, ack.seq)
        if stored is not None and stored == event:
            continue  # this very event, published once already (a retried publish)
        await bus.publish(after_end_of(dispatch, event, stored))


async def stored_event(bus, seq: int) -> Event | None:
    """The event the stream holds at ``seq`` (None: gone, or not an event)."""
    try:
        msg = await bus.js.get_msg(bus.settings.stream, seq)
        return decoder.decode(msg.data)
    except Exception as exc:  # noqa: BLE001 - unknown is treated as "another terminal": the call is billed
        log.warning("stored event %s not readable: %r", seq, exc)
        return None


async def watch_tenants(bus, provider: str, fair: FairSlots, every_s: float) -> None:
    """Keep ``fair.queued`` to the tenants with jobs in ``provider``'s batch lane (one stream-info call a round;
    acknowledged jobs count until the stream sweep removes them, about a second later)."""
    subject = attempt_subject(provider, BATCH)
    while True:
        try:
            info = await bus.js.stream_info(bus.settings.stream, subjects_filter=subject)
            fair.queued = frozenset(s.rpartition(".")[2] for s, n in (info.state.subjects or {}).items() if n)
        except Exception as exc:  # noqa: BLE001 - the last picture stands until the next round
            log.debug("batch lane of %s: tenants not read: %r", provider, exc)
        await asyncio.sleep(every_s)


def fairly(fair: FairSlots, handler):
    """``handler`` run in its tenant's fair turn for one of the batch lane's call slots."""

    async def in_turn(event: AttemptDispatched, delivery: Delivery) -> list[Event]:
        async with fair.slot(event.ctx.tenant, delivery.num_delivered, delivery.pending):
            return await handler(event, delivery)

    return in_turn


def http_client(spec: ProviderSpec, pool: int) -> AiohttpTransport:
    """One pooled keep-alive client per provider, created once (aiohttp: see adapters/transport.py for why)."""
    return AiohttpTransport(max_connections=min(pool, spec.max_in_flight))


def semantic_embedder(catalog: Catalog, settings: CacheSettings, adapters: dict[str, ProviderAdapter],
                      clients: dict[str, AiohttpTransport], pool: int) -> AdapterEmbedder | None:
    """The embeddings model semantic cache lookups call (``SWITCHYARD_WORKERS__CACHE__EMBEDDING_MODEL``), through
    this process's adapter for its provider (one is added, with its own client, when this worker has none)."""
    name = settings.embedding_model
    if not name:
        return None
    model = catalog.models.get(name)
    targets = [t for t in catalog.targets(name) if catalog.providers[t.provider].configured()] if model else []
    if model is None or "embeddings" not in model.capabilities or not targets:
        raise SystemExit(f"workers.cache.embedding_model: {name!r} is not an embeddings model of the catalog with a "
                         f"configured provider")
    target = targets[0]
    if target.provider not in adapters:
        spec = catalog.providers[target.provider]
        clients[target.provider] = http_client(spec, pool)
        adapters = {**adapters, target.provider: adapter_class(spec.type)(spec, clients[target.provider])}
    return AdapterEmbedder(adapters[target.provider], target, model)


async def run(deps: Deps, arg: str | None = None) -> None:
    catalog = deps.catalog
    if arg:
        if arg not in catalog.providers:
            raise SystemExit(f"worker:{arg}: no such provider in the catalog ({', '.join(catalog.providers)})")
        names = [arg]
    else:
        names = [n for n, p in catalog.providers.items() if p.configured()]
    s = deps.settings.workers
    clients = {n: http_client(catalog.providers[n], s.pool_connections) for n in names}
    adapters = {n: adapter_class(catalog.providers[n].type)(catalog.providers[n], clients[n]) for n in names}
    jobs_kv = await deps.bus.kv(JOBS)

    async def is_cancelled(request_id: str) -> bool:
        record = await get_job(jobs_kv, request_id)
        return record is not None and record.status == "cancelled"

    # The shared circuit breakers (JetStream KV): refuse calls to open deployments, record every outcome.
    health = await deps.stores.open_health("worker")
    deps.on_stop.append(health.close)
    relay = NatsChunkRelay(deps.bus)
    await relay.start()
    embedder = semantic_embedder(catalog, s.cache, adapters, clients, s.pool_connections)
    cache = ResponseCache(await deps.stores.cache(), s.cache, embedder=embedder)
    wdeps = WorkerDeps(adapters=adapters, catalog=catalog, metrics=deps.telemetry.metrics, is_cancelled=is_cancelled,
                       relay=relay, gate=health, cache=cache)

    telemetry = deps.telemetry
    for model in catalog.models:  # each deployment's calls counted from 0: a first burst of failures shows
        for t in catalog.deployments_of(model):
            if t.provider in names:
                for outcome in ("success", "failed"):
                    telemetry.metrics.deployment_attempts.labels(t.deployment, t.provider, t.model, outcome)
    for n in names:
        telemetry.metrics.ttft.labels(n)

    async def call(event: AttemptDispatched, delivery: Delivery, abandoned: bool) -> list[Event]:
        if not telemetry.tracing:
            return await attempt(event, delivery, wdeps, abandoned)
        # The provider call as a GenAI client span (a child of this message's consumer span).
        with telemetry.span(genai.attempt_span_name(event), None, kind=SpanKind.CLIENT,
                            **genai.attempt_attributes(event)) as span:
            out = await attempt(event, delivery, wdeps, abandoned)
            if span.is_recording():
                attrs, error = genai.outcome_attributes(out)
                span.set_attributes(attrs)
                if error is not None:
                    span.set_status(Status(StatusCode.ERROR, error))
        return out

    marks = AttemptMarks(await deps.bus.kv(ATTEMPTS), send=deps.bus.nc.publish,
                         publish=lambda subject, data, headers: deps.bus.replies.publish(
                             subject, data, headers, deps.settings.nats.connect_timeout_s))
    waited: OrderedDict[str, None] = OrderedDict()  # attempts this process sent back to wait for a live claim

    async def handle(event: AttemptDispatched, delivery: Delivery) -> list[Event]:
        rid, n = event.request_id, event.attempt
        if not s.attempt_marks:
            await publish_outcome(deps.bus, event, await call(event, delivery, False))
            return []
        now = time.time()
        until = now + min(event.timeout_s, event.ctx.remaining(now)) + CLAIM_GRACE_S
        mark = await marks.claim(rid, n, until)
        abandoned = False
        if mark is not None:
            if mark.state != CALLING:
                return []  # its outcome, or the request's end, is in the stream already: nothing to call
            ours = waited.pop(f"{rid}.{n}", None) is not None or delivery.num_delivered == 1
            if ours and now < mark.until:
                # Another delivery may still be calling (the server replayed this one): wait for its outcome.
                waited[f"{rid}.{n}"] = None
                while len(waited) > 65536:
                    waited.popitem(last=False)
                raise Defer(min(mark.until - now, MAX_CLAIM_WAIT_S), f"attempt {n} of {rid} is being called")
            if not await marks.retake(rid, n, mark, until):
                raise Defer(0.5, f"attempt {n} of {rid} was taken over by another delivery")
            abandoned = True  # the earlier call was given up (its worker died, or its time ran out)
        await publish_outcome(deps.bus, event, await call(event, delivery, abandoned))
        await marks.done(rid, n)
        return []  # published above, in order: the bus acknowledges the attempt

    async def close() -> None:
        await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)

    deps.on_stop.append(close)
    loops = []
    for n in names:
        slots = catalog.providers[n].max_in_flight
        cs = s.consumer.model_copy(update={"concurrency": slots})
        sub = Subscription(durable(n), (attempt_subject(n),), cs)
        await deps.bus.ensure_consumer(sub)
        loops.append(deps.bus.consume(f"worker:{n}", sub, with_deadline(handle), on_poison=poison))
        # The batch lane: its own window, read ahead of its calls so they go fairly across tenants.
        batch_slots = max(1, round(slots * s.batch.share))
        bcs = s.batch_consumer.model_copy(update={"concurrency": batch_slots + s.batch.read_ahead})
        bsub = Subscription(durable(n, BATCH), (attempt_subject(n, BATCH),), bcs)
        await deps.bus.ensure_consumer(bsub)
        fair = FairSlots(batch_slots, s.batch, max_deliver=bcs.max_deliver)
        deps.bus.start(watch_tenants(deps.bus, n, fair, s.batch.poll_s))
        loops.append(deps.bus.consume(f"worker:{n}:batch", bsub, with_deadline(fairly(fair, with_deadline(handle))),
                                      on_poison=poison))
    deps.ready["worker" + (f":{arg}" if arg else "")] = True
    log.info("workers running for %s", ", ".join(names) or "no provider")
    await asyncio.gather(*loops)
