"""One attempt against one provider: call the adapter, then report success (terminal) or failure (to the router).

A redelivered attempt (its earlier delivery died mid-call) is first recorded
as ``AttemptAbandoned``: the earlier call's outcome is unknown, so this second
upstream call is made knowingly and shows in the trace.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from shared.bus import Delivery
from shared.catalog import Catalog
from shared.errors import SwitchyardError, UpstreamBadResponse, UpstreamTimeout
from shared.events import (
    AttemptAbandoned,
    AttemptDispatched,
    AttemptFailed,
    CompletionSucceeded,
    Event,
    terminal_id,
)
from shared.pricing import cost_usd
from shared.telemetry import Metrics

from services.workers.adapters import ProviderAdapter


@dataclass(frozen=True)
class WorkerDeps:
    """What an attempt needs."""

    adapters: dict[str, ProviderAdapter]
    catalog: Catalog
    metrics: Metrics
    is_cancelled: Callable[[str], Awaitable[bool]]


async def attempt(event: AttemptDispatched, delivery: Delivery, deps: WorkerDeps) -> list[Event]:
    out: list[Event] = []
    rid, target = event.request_id, event.target
    if delivery.num_delivered > 1:
        previous = delivery.num_delivered - 1
        out.append(AttemptAbandoned(event_id=f"{rid}.attempt.{event.attempt}.abandoned.{previous}", request_id=rid,
                                    ctx=event.ctx, attempt=event.attempt, target=target, delivery=previous))
    if event.ctx.job and await deps.is_cancelled(rid):
        return out  # the cancel already ended the request
    timeout = min(event.timeout_s, event.ctx.remaining())
    adapter = deps.adapters[target.provider]
    m = deps.metrics
    started = time.perf_counter()
    m.in_flight.labels(target.provider).inc()
    try:
        try:
            # httpx's timeouts bound each network step; this bounds the whole attempt by the deadline.
            response = await asyncio.wait_for(adapter.complete(event.request, target, timeout), timeout)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"{target.provider} did not answer within {timeout:.1f}s") from None
        except SwitchyardError:
            raise
        except Exception as exc:  # an adapter bug must not stall the request: treat it as a bad response
            raise UpstreamBadResponse(f"{target.provider} adapter failed: {exc!r}") from exc
    except SwitchyardError as exc:
        latency_ms = (time.perf_counter() - started) * 1000
        info = exc.info()
        m.attempts.labels(target.provider, info.outcome).inc()
        m.operation_duration.labels("chat", target.provider, target.model, info.code).observe(latency_ms / 1000)
        out.append(AttemptFailed(event_id=f"{rid}.attempt.{event.attempt}.failed", request_id=rid, ctx=event.ctx,
                                 dispatch=event, error=info, latency_ms=latency_ms))
        return out
    finally:
        m.in_flight.labels(target.provider).dec()
    latency_ms = (time.perf_counter() - started) * 1000
    model = deps.catalog.models[target.model]
    cost = cost_usd(model, response.usage)
    m.attempts.labels(target.provider, "success").inc()
    m.operation_duration.labels("chat", target.provider, target.model, "").observe(latency_ms / 1000)
    m.token_usage.labels("chat", target.provider, target.model, "input").observe(response.usage.prompt_tokens)
    m.token_usage.labels("chat", target.provider, target.model, "output").observe(response.usage.completion_tokens)
    m.cost.labels(target.provider, target.model).inc(cost)
    out.append(CompletionSucceeded(event_id=terminal_id(rid), request_id=rid, ctx=event.ctx, attempt=event.attempt,
                                   target=target, response=response, cost_usd=cost, latency_ms=latency_ms,
                                   history=list(event.history)))
    return out
