"""Worker service: one durable consumer, concurrency cap and connection pool per provider.

``--target worker:openai`` runs the worker of one provider; ``worker`` runs
one for every configured provider in the catalog. A slow provider fills only
its own consumer's in-flight window, never another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime import Deps
from services.workers.adapters import ProviderAdapter, adapter_class
from services.workers.adapters.transport import AiohttpTransport
from services.workers.cache import AdapterEmbedder, ResponseCache
from services.workers.handlers import WorkerDeps, attempt
from services.workers.settings import CacheSettings
from shared import genai
from shared.bus import Delivery, Subscription
from shared.catalog import Catalog, ProviderSpec
from shared.events import (
    AttemptDispatched,
    ChunkMessage,
    Event,
    attempt_subject,
    cancel_subject,
    chunk_encoder,
    chunk_subject,
)
from shared.lifecycle import poison, with_deadline
from shared.state.buckets import JOBS
from shared.state.jobs import get_job

log = logging.getLogger("switchyard.workers")


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


def durable(provider: str) -> str:
    return f"worker-{provider}"


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

    async def handle(event: AttemptDispatched, delivery: Delivery) -> list[Event]:
        if not telemetry.tracing:
            return await attempt(event, delivery, wdeps)
        # The provider call as a GenAI client span (a child of this message's consumer span).
        with telemetry.span(genai.attempt_span_name(event), None, kind=SpanKind.CLIENT,
                            **genai.attempt_attributes(event)) as span:
            out = await attempt(event, delivery, wdeps)
            if span.is_recording():
                attrs, error = genai.outcome_attributes(out)
                span.set_attributes(attrs)
                if error is not None:
                    span.set_status(Status(StatusCode.ERROR, error))
        return out

    async def close() -> None:
        await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)

    deps.on_stop.append(close)
    loops = []
    for n in names:
        cs = s.consumer.model_copy(update={"concurrency": catalog.providers[n].max_in_flight})
        sub = Subscription(durable(n), (attempt_subject(n),), cs)
        await deps.bus.ensure_consumer(sub)
        loops.append(deps.bus.consume(f"worker:{n}", sub, with_deadline(handle), on_poison=poison))
    deps.ready["worker" + (f":{arg}" if arg else "")] = True
    log.info("workers running for %s", ", ".join(names) or "no provider")
    await asyncio.gather(*loops)
