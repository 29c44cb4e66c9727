"""One attempt against one provider: call the adapter, then report success (terminal) or failure (to the router).

A redelivered attempt (its earlier delivery died mid-call) is first recorded
as ``AttemptAbandoned``: the earlier call's outcome is unknown, so this second
upstream call is made knowingly and shows in the trace.

Every call first takes a permit from the deployment's shared circuit breaker
(``gate``): an open breaker refuses it without any upstream call (the attempt
fails as ``circuit_open`` and the router falls back), a half-open one lets
only its probes through. The call's outcome and latency are recorded after it.

A job's attempt listens for the job's cancellation (``sy.cancel.<request_id>``,
sent by the gateway after the cancel terminal is stored): the upstream call is
cancelled and the attempt ends ``cancelled`` with what it cost (the prompt, as
estimated), recorded and billed as an ``AttemptFailed`` marked ``after_end``,
while the request's terminal stays the cancel. A call that answered while its
request ended anyway (the cancel's terminal got into the stream first) is found
when its success is refused as a duplicate, and recorded the same way
(``after_end_of``): every provider call is billed exactly once.

Streamed attempts relay each chunk to the gateway as it arrives. Until the
first chunk is out, a failure is an ordinary failed attempt (the router may
fall back); after it, the attempt ends as ``stream_broken`` (no fallback: the
client already has part of an answer) and what was produced is billed. A
client that disconnects cancels the upstream call; its tokens are billed too.

When policy put a cache plan in the request's context, the response cache
(``cache``, see ``services/workers/cache.py``) wraps the call: a hit answers
without it (replayed as chunks to a streaming client), a miss stores its answer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncContextManager, Awaitable, Callable, Protocol

import msgspec

from shared.bus import Delivery
from shared.catalog import Catalog
from shared.canonical import ChatResponse, EmbeddingRequest, Usage, estimate_prompt_tokens
from shared.errors import ErrorInfo, InvalidRequest, SwitchyardError, UpstreamBadResponse, UpstreamTimeout
from shared.events import (
    AttemptAbandoned,
    AttemptDispatched,
    AttemptFailed,
    ChunkMessage,
    CompletionSucceeded,
    Event,
    Target,
    terminal_id,
)
from shared.openai_format import response_headers
from shared.pricing import cost_usd, savings_usd
from shared.scrub import scrub
from shared.telemetry import Metrics

from services.workers.adapters import ProviderAdapter
from services.workers.adapters.base import DETAIL_LIMIT
from services.workers.streaming import StreamAssembler, replay_chunks


class Gate(Protocol):
    """The shared circuit breakers: a permit before every provider call, its outcome after."""

    async def acquire(self, target: Target) -> Any: ...

    async def record(self, target: Target, permit: Any, outcome: str, latency_ms: float,
                     task: str | None = None, cost_usd: float = 0.0) -> None: ...


class ChunkRelay(Protocol):
    """Where streamed chunks go, and how a client's disconnect comes back."""

    async def send(self, origin: str, request_id: str, message: ChunkMessage) -> None: ...

    def cancellation(self, request_id: str) -> AsyncContextManager[asyncio.Event]: ...


class CacheLayer(Protocol):
    """The response cache around the upstream call (``services/workers/cache.py``)."""

    async def serve(self, event: AttemptDispatched, call: Callable[[], Awaitable[Event]],
                    replay: Callable[[ChatResponse], Awaitable[int]] | None) -> Event: ...


@dataclass(frozen=True)
class WorkerDeps:
    """What an attempt needs."""

    adapters: dict[str, ProviderAdapter]
    catalog: Catalog
    metrics: Metrics
    is_cancelled: Callable[[str], Awaitable[bool]]
    relay: ChunkRelay | None = None
    gate: Gate | None = None
    cache: CacheLayer | None = None


async def attempt(event: AttemptDispatched, delivery: Delivery, deps: WorkerDeps,
                  abandoned: bool = False) -> list[Event]:
    """The attempt's events: its outcome, after an ``AttemptAbandoned`` when an earlier delivery's call was
    abandoned (the server redelivered it, or ``abandoned``: its claim ran out, ``shared.state.attempts``)."""
    out: list[Event] = []
    rid, target = event.request_id, event.target
    if delivery.num_delivered > 1 or abandoned:
        previous = max(1, delivery.num_delivered - 1)
        out.append(AttemptAbandoned(event_id=f"{rid}.attempt.{event.attempt}.abandoned.{previous}", request_id=rid,
                                    ctx=event.ctx, attempt=event.attempt, target=target, delivery=previous))
    if not event.ctx.job:
        out.append(await _serve(event, delivery, deps, None))
        return out
    if deps.relay is None:
        if await deps.is_cancelled(rid):
            out.append(not_called(event))  # the cancel already ended the request
            return out
        out.append(await _serve(event, delivery, deps, None))
        return out
    # Listening before the record is read: a cancel stored after that read is signalled to this listener.
    async with deps.relay.cancellation(rid) as cancelled:
        if await deps.is_cancelled(rid):
            out.append(not_called(event))
            return out
        out.append(await _serve(event, delivery, deps, cancelled))
    return out


def not_called(event: AttemptDispatched) -> AttemptFailed:
    """The outcome of an attempt whose job was cancelled before its call began: nothing called, nothing billed,
    and the trace says so (else the attempt would stay ``dispatched`` under a cancelled request)."""
    info = ErrorInfo(status=499, type="cancelled", code="cancelled_before_call", outcome="cancelled",
                     message="the job was cancelled before this attempt's call began; the provider was not called")
    return msgspec.structs.replace(_failed(event, info, 0.0), after_end=True)


async def _serve(event: AttemptDispatched, delivery: Delivery, deps: WorkerDeps,
                 cancelled: asyncio.Event | None) -> Event:
    """The call, through the response cache when policy planned one for the request."""
    if deps.cache is not None and event.ctx.cache_plan is not None:
        # A hit never reaches the breaker below: it neither needs a permit nor says anything about the provider.
        return await deps.cache.serve(event, lambda: _gated_call(event, delivery, deps, cancelled),
                                      _replayer(event, delivery, deps))
    return await _gated_call(event, delivery, deps, cancelled)


async def _gated_call(event: AttemptDispatched, delivery: Delivery, deps: WorkerDeps,
                      cancelled: asyncio.Event | None = None) -> Event:
    """The upstream call behind the deployment's circuit breaker: a permit first, the outcome recorded after."""
    target = event.target
    permit = None
    if deps.gate is not None:
        permit = await deps.gate.acquire(target)
        if not permit.granted:
            count_attempt(deps.metrics, target, "circuit_open")
            return _refused(event, permit)
    result: Event | None = None
    try:
        call = _call(event, delivery, deps)
        result = await (call if cancelled is None else _until_cancelled(event, deps, call, cancelled))
    finally:
        if permit is not None:
            outcome, latency_ms, cost = _outcome_of(result)
            await deps.gate.record(target, permit, outcome, latency_ms,
                                   task=event.decision.task if event.decision is not None else None, cost_usd=cost)
    return result


def _cache_status(event: AttemptDispatched) -> str:
    """What a streamed upstream call tells the gateway about the cache (its response header)."""
    plan = event.ctx.cache_plan
    if plan is None:
        return ""
    return "bypass" if plan.mode == "bypass" else "miss"


def _replayer(event: AttemptDispatched, delivery: Delivery,
              deps: WorkerDeps) -> Callable[[ChatResponse], Awaitable[int]] | None:
    """How a cached answer reaches a streaming client: replayed as the chunks a provider would have sent."""
    if not (event.ctx.stream and deps.relay is not None):
        return None
    relay = deps.relay

    async def replay(response: ChatResponse) -> int:
        chunks = replay_chunks(response)
        for seq, chunk in enumerate(chunks, 1):
            await relay.send(event.ctx.origin, event.request_id, ChunkMessage(
                attempt=event.attempt, delivery=delivery.num_delivered, seq=seq, chunk=chunk,
                model=event.target.model, cache="hit",
                headers=response_headers(event.ctx, event.target.provider) if seq == 1 else None))
        return len(chunks)

    return replay


def _refused(event: AttemptDispatched, permit: Any) -> AttemptFailed:
    """The attempt the breaker did not let through: no upstream call was made."""
    why = f" ({permit.reason})" if permit.reason else ""
    info = ErrorInfo(status=503, type="service_unavailable", code="circuit_open", outcome="circuit_open",
                     message=f"{event.target.deployment} was not called: its circuit breaker is {permit.state}{why}")
    return _failed(event, info, 0.0)


def _outcome_of(result: Event | None) -> tuple[str, float, float]:
    """(outcome class, latency, cost) of a finished call, for the breaker and the bandit."""
    if isinstance(result, CompletionSucceeded):
        return "success", result.latency_ms, result.cost_usd
    if isinstance(result, AttemptFailed):
        return result.error.outcome, result.latency_ms, result.cost_usd
    return "cancelled", 0.0, 0.0  # the handler itself failed: say nothing about the provider


async def _call(event: AttemptDispatched, delivery: Delivery, deps: WorkerDeps) -> Event:
    """One upstream call in the request's shape: streamed, embeddings, or a whole completion."""
    timeout = min(event.timeout_s, event.ctx.remaining())
    if event.ctx.stream and deps.relay is not None:
        return await stream_attempt(event, delivery, deps, timeout)
    if event.ctx.api == "embeddings":
        return await embed_attempt(event, deps, timeout)
    return await complete_attempt(event, deps, timeout)


async def complete_attempt(event: AttemptDispatched, deps: WorkerDeps, timeout: float) -> Event:
    """A non-streamed chat completion."""
    target = event.target
    adapter = deps.adapters[target.provider]
    m = deps.metrics
    started = time.perf_counter()
    m.in_flight.labels(target.provider).inc()
    try:
        try:
            # httpx's timeouts bound each network step; this bounds the whole attempt by the deadline.
            async with asyncio.timeout(timeout):  # in this task: wait_for would start another one per call
                response = await adapter.complete(event.request, target, timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"{target.provider} did not answer within {timeout:.1f}s") from None
        except SwitchyardError:
            raise
        except Exception as exc:  # an adapter bug must not stall the request: treat it as a bad response
            raise UpstreamBadResponse(f"{target.provider} adapter failed: {exc!r}") from exc
    except SwitchyardError as exc:
        latency_ms = (time.perf_counter() - started) * 1000
        info = exc.info()
        count_attempt(m, target, info.outcome)
        m.operation_duration.labels("chat", target.provider, target.model, info.code).observe(latency_ms / 1000)
        return _failed(event, info, latency_ms, detail=exc.detail)
    finally:
        m.in_flight.labels(target.provider).dec()
    return _succeeded(event, deps, response, (time.perf_counter() - started) * 1000, "chat")


def embedding_input(event: AttemptDispatched) -> EmbeddingRequest:
    """The client's embedding request, its text inputs and ``user`` taken from the (possibly redacted) prompt."""
    original = event.embedding
    if original is None:
        raise InvalidRequest("an embeddings attempt without its embedding request")
    if original.user is not None:
        original = msgspec.structs.replace(original, user=event.request.user)
    if isinstance(original.input, str) or (original.input and isinstance(original.input[0], str)):
        texts = [m.content if isinstance(m.content, str) else "" for m in event.request.messages]
        return msgspec.structs.replace(original, input=texts if not isinstance(original.input, str) else texts[0])
    return original  # token ids: nothing to redact


async def embed_attempt(event: AttemptDispatched, deps: WorkerDeps, timeout: float) -> Event:
    """One embeddings call; vectors travel in the terminal event."""
    target = event.target
    m = deps.metrics
    started = time.perf_counter()
    try:
        try:
            async with asyncio.timeout(timeout):
                result = await deps.adapters[target.provider].embed(embedding_input(event), target, timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"{target.provider} did not answer within {timeout:.1f}s") from None
    except SwitchyardError as exc:
        count_attempt(m, target, exc.info().outcome)
        return _failed(event, exc.info(), (time.perf_counter() - started) * 1000, detail=exc.detail)
    latency_ms = (time.perf_counter() - started) * 1000
    response = ChatResponse(model=result.model or target.upstream_model, choices=[], usage=result.usage)
    return _succeeded(event, deps, response, latency_ms, "embeddings", embeddings=result.data)


def _succeeded(event: AttemptDispatched, deps: WorkerDeps, response: ChatResponse, latency_ms: float,
               operation: str | None, *, ttft_ms: float | None = None, chunks: int = 0,
               embeddings: list[list[float]] | None = None) -> CompletionSucceeded:
    """The attempt's terminal success, billed at the catalog's prices, with the routing decision it carries out.

    Every shape counts the success and its cost; ``operation`` ("chat", "embeddings") also records the call's
    duration and token usage. A streamed attempt passes None: its time to first token is recorded as the chunks
    arrive.
    """
    rid, target, usage, m = event.request_id, event.target, response.usage, deps.metrics
    cost = cost_usd(deps.catalog.models[target.model], usage)
    count_attempt(m, target, "success")
    bill(m, event, usage, cost)
    baseline = event.decision.baseline if event.decision is not None else None
    if baseline is not None and baseline.model != target.model:
        m.savings.labels(*m.tenants(event.ctx.tenant, event.ctx.team)).inc(savings_usd(baseline, usage, cost))
    if operation is not None:
        m.operation_duration.labels(operation, target.provider, target.model, "").observe(latency_ms / 1000)
        m.token_usage.labels(operation, target.provider, target.model, "input").observe(usage.prompt_tokens)
        if operation == "chat":  # an embeddings call produces no output tokens
            m.token_usage.labels(operation, target.provider, target.model, "output").observe(usage.completion_tokens)
    m.cost.labels(target.provider, target.model).inc(cost)
    return CompletionSucceeded(event_id=terminal_id(rid), request_id=rid, ctx=event.ctx, attempt=event.attempt,
                               target=target, response=response, cost_usd=cost, latency_ms=latency_ms,
                               ttft_ms=ttft_ms, history=list(event.history), chunks=chunks, embeddings=embeddings,
                               decision=event.decision, degraded=event.degraded)


async def _until_cancelled(event: AttemptDispatched, deps: WorkerDeps, call: Awaitable[Event],
                           cancelled: asyncio.Event) -> Event:
    """``call``, cancelled upstream when the job is: then the attempt ends ``cancelled``, billed for its prompt."""
    started = time.perf_counter()
    task = asyncio.ensure_future(call)
    waiter = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done() and not cancelled.is_set():  # this handler itself is being stopped
            task.cancel()
    if task.done():
        # An answer that raced the cancel is published as usual; if the cancel is in the stream first, the
        # answer is recorded and billed after the end (``after_end_of``).
        return task.result()
    task.cancel()  # closes the upstream connection: the provider stops working on it
    await asyncio.gather(task, return_exceptions=True)
    target, m = event.target, deps.metrics
    # A call cut short answers nothing about its usage: the prompt was sent and is billed, as estimated.
    usage = Usage(prompt_tokens=estimate_prompt_tokens(event.request), completion_tokens=0)
    cost = cost_usd(deps.catalog.models[target.model], usage)
    count_attempt(m, target, "cancelled")
    bill(m, event, usage, cost)
    info = ErrorInfo(status=499, type="cancelled", code="cancelled", outcome="cancelled",
                     message="the job was cancelled; its upstream call was cancelled")
    failed = _failed(event, info, (time.perf_counter() - started) * 1000, usage, cost)
    return msgspec.structs.replace(failed, after_end=True)


def after_end_of(dispatch: AttemptDispatched, success: CompletionSucceeded, ended: Event) -> AttemptFailed:
    """The billed record of ``dispatch``'s call that answered (``success``) after its request had ended
    (``ended``: the terminal the stream holds)."""
    status = getattr(type(ended), "status", "failed")
    info = ErrorInfo(status=409, type="request_ended", code=f"request_{status}", outcome=status,
                     message=f"the request was {status} before this answer came; the answer was discarded and its "
                             f"cost billed")
    return AttemptFailed(event_id=f"{dispatch.request_id}.attempt.{dispatch.attempt}.after_end",
                         request_id=dispatch.request_id, ctx=dispatch.ctx, dispatch=dispatch, error=info,
                         latency_ms=success.latency_ms, usage=success.response.usage, cost_usd=success.cost_usd,
                         after_end=True)


def count_attempt(m: Metrics, target: Target, outcome: str) -> None:
    """One provider call's outcome, per provider and per deployment."""
    m.attempts.labels(target.provider, outcome).inc()
    m.deployment_attempts.labels(target.deployment, target.provider, target.model, outcome).inc()


def bill(m: Metrics, event: AttemptDispatched, usage: Usage, cost: float) -> None:
    """What an attempt billed, per tenant and team (bounded labels) and model."""
    tenant, team = m.tenants(event.ctx.tenant, event.ctx.team)
    model = event.target.model
    m.tenant_cost.labels(tenant, team, model).inc(cost)
    m.tenant_tokens.labels(tenant, team, model, "input").inc(usage.prompt_tokens)
    m.tenant_tokens.labels(tenant, team, model, "output").inc(usage.completion_tokens)


def _failed(event: AttemptDispatched, info: ErrorInfo, latency_ms: float, usage: Usage | None = None,
            cost: float = 0.0, detail: str | None = None) -> AttemptFailed:
    # The last door out of the worker: whatever an adapter put in the message (a provider's words, an
    # exception's repr) is scrubbed of credentials and internal addresses before the bus, traces and clients.
    # The operator-only detail was scrubbed where it was made; scrubbing is idempotent, so this only guards.
    info = msgspec.structs.replace(info, message=scrub(info.message, limit=1000))
    return AttemptFailed(event_id=f"{event.request_id}.attempt.{event.attempt}.failed", request_id=event.request_id,
                         ctx=event.ctx, dispatch=event, error=info, latency_ms=latency_ms, usage=usage,
                         cost_usd=cost, detail=scrub(detail, limit=DETAIL_LIMIT) if detail else None)


async def stream_attempt(event: AttemptDispatched, delivery: Delivery, deps: WorkerDeps, timeout: float) -> Event:
    """Relay one streamed attempt; returns its terminal success or its failure."""
    rid, target = event.request_id, event.target
    adapter = deps.adapters[target.provider]
    model = deps.catalog.models[target.model]
    relay = deps.relay
    m = deps.metrics
    assembler = StreamAssembler(event.request, target.upstream_model)
    cache = _cache_status(event)
    sent = 0
    ttft_ms: float | None = None
    detail: str | None = None  # the operator-only account of a failure, when the adapter gave one
    started = time.perf_counter()

    async def pump() -> None:
        nonlocal sent, ttft_ms
        async for chunk in adapter.stream(event.request, target, timeout):
            if ttft_ms is None:
                ttft_ms = (time.perf_counter() - started) * 1000
                m.ttft.labels(target.provider).observe(ttft_ms / 1000)
            assembler.add(chunk)
            sent += 1
            await relay.send(event.ctx.origin, rid, ChunkMessage(
                attempt=event.attempt, delivery=delivery.num_delivered, seq=sent, chunk=chunk, model=target.model,
                cache=cache, headers=response_headers(event.ctx, target.provider) if sent == 1 else None))

    m.in_flight.labels(target.provider).inc()
    try:
        async with relay.cancellation(rid) as cancelled:
            task = asyncio.ensure_future(pump())
            waiter = asyncio.ensure_future(cancelled.wait())
            done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task not in done:
                task.cancel()  # closes the upstream response: the provider stops generating
                await asyncio.gather(task, return_exceptions=True)
                error = (ErrorInfo(status=499, type="cancelled", code="client_disconnected", outcome="cancelled",
                                   message="the client disconnected; the upstream call was cancelled")
                         if cancelled.is_set() else
                         UpstreamTimeout(f"{target.provider} did not finish within {timeout:.1f}s").info())
            else:
                exc = task.exception()
                if exc is None:
                    error = None
                elif isinstance(exc, SwitchyardError):
                    error, detail = exc.info(), exc.detail
                else:
                    error = UpstreamBadResponse(f"{target.provider} adapter failed: {exc!r}").info()
    finally:
        m.in_flight.labels(target.provider).dec()
    latency_ms = (time.perf_counter() - started) * 1000
    if error is not None:
        count_attempt(m, target, error.outcome)
        if sent == 0 and error.outcome != "cancelled":
            return _failed(event, error, latency_ms, detail=detail)  # nothing reached the client: fallback is fine
        if error.outcome != "cancelled":
            error = msgspec.structs.replace(error, outcome="stream_broken",
                                            message=f"the stream broke after {sent} chunks: {error.message}")
        usage = assembler.usage_so_far()
        cost = cost_usd(model, usage)
        bill(m, event, usage, cost)
        return _failed(event, error, latency_ms, usage, cost, detail=detail)
    return _succeeded(event, deps, assembler.response(), latency_ms, None, ttft_ms=ttft_ms, chunks=sent)
