"""The worker's side of the response cache: serve a hit, coalesce identical misses, store what upstream answered.

It runs where the served deployment is known and after admission: policy has
already checked, redacted, rate-limited and budgeted the request and put its
``CachePlan`` in the context (``shared.cache.plan``). For a plan of ``use``:

1. exact lookup by ``cache_key`` → a hit;
2. on a team in ``semantic`` mode with an embeddings model configured: embed
   the prompt text, compare it with the team's index on this deployment
   (entries made with the same parameters only), and take the most similar
   entry at or above the team's threshold → a semantic hit;
3. otherwise coalesce: one identical request in flight asks upstream (first
   in this process, then across processes through the key's KV lock), the
   others wait for its answer, bounded by ``coalesce_wait_s`` and their
   deadline; if it fails, each goes upstream itself.

A hit is the attempt's success: no upstream call and no circuit-breaker
permit, ``cost_usd`` 0 (plus the embeddings call of a semantic lookup),
replayed as a stream when the client streams, and ``cache`` on the terminal
event (status, kind, age, source request, the savings). A miss goes upstream
as usual and its success is stored with the plan's TTL. ``refresh`` skips the
lookups and stores; ``bypass`` only notes why. The cache fails open: a store
that cannot be reached makes every lookup a miss and every write a no-op,
never a failed request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Awaitable, Callable, Protocol

import msgspec

from shared.cache import CacheEntry, cache_key, cosine, pack, params_key, unpack
from shared.canonical import ChatResponse, EmbeddingRequest, prompt_text
from shared.catalog import ModelSpec
from shared.events import AttemptDispatched, CacheInfo, CompletionSucceeded, Event, Target, terminal_id
from shared.pricing import cost_usd
from shared.state.cache import CacheLock, CacheStore, IndexItem

from services.workers.settings import CacheSettings

log = logging.getLogger("switchyard.workers.cache")

Call = Callable[[], Awaitable[Event]]
Replay = Callable[[ChatResponse], Awaitable[int]]  # streams a whole answer to the client; returns the chunk count
LOCK_GRACE_S = 2.0  # a lock outlives its holder's upstream timeout by this much


class Embedder(Protocol):
    """Embeds a prompt for semantic lookups."""

    async def embed(self, text: str) -> tuple[list[float], float]: ...  # (vector, cost in USD)


class AdapterEmbedder:
    """An embeddings model of the catalog, called through its provider's adapter."""

    def __init__(self, adapter, target: Target, model: ModelSpec, timeout_s: float = 10.0) -> None:
        self.adapter = adapter
        self.target = target
        self.model = model
        self.timeout_s = timeout_s

    async def embed(self, text: str) -> tuple[list[float], float]:
        async with asyncio.timeout(self.timeout_s):
            result = await self.adapter.embed(EmbeddingRequest(model=self.target.upstream_model, input=text),
                                              self.target, self.timeout_s)
        return result.data[0], cost_usd(self.model, result.usage)


def with_cache(result: Event, info: CacheInfo) -> Event:
    """``result`` carrying what the cache did, when it is a success (failures say nothing about the cache)."""
    if not isinstance(result, CompletionSucceeded):
        return result
    return msgspec.structs.replace(result, cache=info, cost_usd=result.cost_usd + info.lookup_cost_usd)


class ResponseCache:
    """The cache steps around one attempt's upstream call."""

    def __init__(self, store: CacheStore, settings: CacheSettings, embedder: Embedder | None = None,
                 owner: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.embedder = embedder
        self.owner = owner or f"worker-{uuid.uuid4().hex[:12]}"
        self.clock = store.clock  # expiries and lock deadlines are compared by the store: one clock for both
        # Identical requests in flight in this process: the first one's future, awaited by the others. Only a
        # shortcut: across processes the KV lock does the same.
        self._inflight: dict[str, asyncio.Future] = {}

    async def serve(self, event: AttemptDispatched, call: Call, replay: Replay | None) -> Event:
        plan, ctx = event.ctx.cache_plan, event.ctx
        if plan is None or plan.mode == "bypass":
            return with_cache(await call(), CacheInfo(status="bypass", reason=plan.reason if plan else ""))
        started = time.perf_counter()
        key = cache_key(ctx.tenant, ctx.team, event.target, event.request)
        vector: list[float] | None = None
        lookup_cost = 0.0
        if plan.mode == "use":
            entry = await self._safely(self.store.get(ctx.tenant, ctx.team, key), None, "lookup")
            if entry is not None:
                return await self._hit(event, entry, started, replay)
        if plan.semantic and self.embedder is not None:
            vector, lookup_cost = await self._embed(event)
            if vector is not None and plan.mode == "use":
                found = await self._similar(event, vector, plan.similarity)
                if found is not None:
                    entry, similarity = found
                    return await self._hit(event, entry, started, replay, kind="semantic", similarity=similarity,
                                           lookup_cost=lookup_cost)
        reason = "refresh" if plan.mode == "refresh" else ""
        return await self._coalesced(event, key, call, replay, vector, lookup_cost, started, reason)

    # ---- lookups --------------------------------------------------------------------------

    async def _safely(self, coro: Awaitable, default, what: str):
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 - the cache fails open: a miss, never a failed request
            log.warning("response cache %s failed, going on without it: %r", what, exc)
            return default

    async def _embed(self, event: AttemptDispatched) -> tuple[list[float] | None, float]:
        text = prompt_text(event.request)
        if not text.strip():
            return None, 0.0
        return await self._safely(self.embedder.embed(text), (None, 0.0), "embedding")

    async def _similar(self, event: AttemptDispatched, vector: list[float],
                       threshold: float) -> tuple[CacheEntry, float] | None:
        """The most similar live entry made with the same parameters, at or above ``threshold``."""
        ctx = event.ctx
        items = await self._safely(self.store.index(ctx.tenant, ctx.team, event.target.deployment), [], "index read")
        params = params_key(ctx.tenant, ctx.team, event.target, event.request)
        scored = sorted(((cosine(unpack(i.vector), vector), i.key) for i in items if i.params == params),
                        reverse=True)
        for similarity, key in scored:
            if similarity < threshold:
                break
            entry = await self._safely(self.store.get(ctx.tenant, ctx.team, key), None, "lookup")
            if entry is not None:  # else it expired or was purged: the next one may still do
                return entry, similarity
        return None

    async def _hit(self, event: AttemptDispatched, entry: CacheEntry, started: float, replay: Replay | None, *,
                   kind: str = "exact", similarity: float | None = None, lookup_cost: float = 0.0,
                   coalesced: bool = False) -> CompletionSucceeded:
        """The attempt answered from ``entry``: no upstream call, streamed when the client streams."""
        chunks = 0
        ttft_ms = None
        if event.ctx.stream and replay is not None:
            ttft_ms = (time.perf_counter() - started) * 1000
            chunks = await replay(entry.response)
        rid = event.request_id
        info = CacheInfo(status="hit", kind=kind, similarity=None if similarity is None else round(similarity, 4),
                         age_s=round(max(0.0, self.clock() - entry.created_at), 3), source=entry.source,
                         savings_usd=entry.cost_usd, lookup_cost_usd=lookup_cost, coalesced=coalesced)
        return CompletionSucceeded(event_id=terminal_id(rid), request_id=rid, ctx=event.ctx, attempt=event.attempt,
                                   target=event.target, response=entry.response, cost_usd=lookup_cost,
                                   latency_ms=(time.perf_counter() - started) * 1000, ttft_ms=ttft_ms,
                                   history=list(event.history), chunks=chunks, decision=event.decision,
                                   degraded=event.degraded, cache=info)

    # ---- misses ---------------------------------------------------------------------------

    async def _coalesced(self, event: AttemptDispatched, key: str, call: Call, replay: Replay | None,
                         vector: list[float] | None, lookup_cost: float, started: float, reason: str) -> Event:
        """Ask upstream once for every identical request in flight; the others get its answer as a hit."""
        ctx = event.ctx
        now = self.clock()
        wait_until = min(ctx.deadline, now + self.settings.coalesce_wait_s)
        running = self._inflight.get(key)
        if running is not None:  # an identical request is asking upstream in this process
            try:
                async with asyncio.timeout(max(0.0, wait_until - now)):
                    entry = await asyncio.shield(running)
            except TimeoutError:
                entry = None
            if entry is not None:
                return await self._hit(event, entry, started, replay, lookup_cost=lookup_cost, coalesced=True)
            return await self._upstream(event, key, call, vector, lookup_cost, reason)  # it failed: on our own
        mine = asyncio.get_running_loop().create_future()
        self._inflight[key] = mine
        locked = False
        try:
            lock_until = now + min(event.timeout_s, max(0.0, ctx.remaining(now))) + LOCK_GRACE_S
            holder: CacheLock | None = await self._safely(
                self.store.lock(ctx.tenant, ctx.team, key, self.owner, lock_until), None, "lock")
            locked = holder is None
            if holder is not None:  # another process is asking upstream: wait for its answer
                entry = await self._safely(self.store.wait(ctx.tenant, ctx.team, key, holder, wait_until), None,
                                           "wait")
                if entry is not None:
                    mine.set_result(entry)
                    return await self._hit(event, entry, started, replay, lookup_cost=lookup_cost, coalesced=True)
            result, entry = await self._call_and_store(event, key, call, vector, lookup_cost, reason)
            mine.set_result(entry)
            return result
        finally:
            if not mine.done():
                mine.set_result(None)
            if self._inflight.get(key) is mine:
                del self._inflight[key]
            if locked:
                await self._safely(self.store.unlock(ctx.tenant, ctx.team, key, self.owner), None, "unlock")

    async def _upstream(self, event: AttemptDispatched, key: str, call: Call, vector: list[float] | None,
                        lookup_cost: float, reason: str) -> Event:
        result, _ = await self._call_and_store(event, key, call, vector, lookup_cost, reason)
        return result

    async def _call_and_store(self, event: AttemptDispatched, key: str, call: Call, vector: list[float] | None,
                              lookup_cost: float, reason: str) -> tuple[Event, CacheEntry | None]:
        result = await call()
        if not isinstance(result, CompletionSucceeded):
            return result, None
        ctx, plan = event.ctx, event.ctx.cache_plan
        now = self.clock()
        entry = CacheEntry(response=result.response, created_at=now, expires_at=now + plan.ttl_s,
                           source=event.request_id, cost_usd=result.cost_usd)
        stored = len(self.store.entries.encode(entry)) <= self.settings.max_entry_bytes
        if stored:
            await self._safely(self.store.put(ctx.tenant, ctx.team, key, entry), None, "write")
            if vector is not None:
                item = IndexItem(key=key, params=params_key(ctx.tenant, ctx.team, event.target, event.request),
                                 vector=pack(vector), expires_at=entry.expires_at)
                await self._safely(self.store.add_to_index(ctx.tenant, ctx.team, event.target.deployment, item,
                                                           self.settings.index_size, self.settings.index_max_bytes),
                                   None, "index write")
        info = CacheInfo(status="miss", reason=reason if stored else "the answer is too large to store",
                         lookup_cost_usd=lookup_cost)
        return with_cache(result, info), entry if stored else None
