"""Routing logic: which deployment runs an attempt, and what happens when one fails.

Candidates come from the catalog in declared order (a model's deployments,
an alias's models in turn), narrowed by policy's provider constraint. The
first candidate gets attempt 1; the rest travel with the attempt as its
``plan``, so a failed attempt is answered from the event alone, by any router
replica. Non-retryable errors (the request's own fault) end the request at
once; the others fall back to the next candidate until the plan, the attempt
budget or the deadline runs out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.router.settings import RouterSettings
from shared.catalog import Catalog
from shared.errors import ErrorInfo, InvalidRequest, ServiceUnavailable
from shared.events import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSummary,
    CompletionCancelled,
    CompletionFailed,
    Event,
    RequestAdmitted,
    Target,
    terminal_id,
)
from shared.lifecycle import expired


@dataclass(frozen=True)
class RouterDeps:
    """What routing reads."""

    settings: RouterSettings
    catalog: Catalog


def candidates(event: RequestAdmitted, catalog: Catalog) -> list[Target]:
    targets = catalog.targets(event.request.model)
    if event.ctx.api == "embeddings":
        targets = [t for t in targets if "embeddings" in catalog.models[t.model].capabilities]
    if event.allowed_providers is not None:
        allowed = set(event.allowed_providers)
        targets = [t for t in targets if t.provider in allowed]
    return targets


def attempt_timeout(target: Target, remaining_s: float, catalog: Catalog) -> float:
    """An attempt gets the provider's timeout, but never more than the request has left."""
    return max(0.001, min(catalog.providers[target.provider].timeout_s, remaining_s))


def dispatch(request_id: str, source: RequestAdmitted | AttemptDispatched, plan: list[Target], attempt: int,
             history: list[AttemptSummary], deps: RouterDeps, now: float) -> AttemptDispatched:
    target, rest = plan[0], plan[1:]
    return AttemptDispatched(
        event_id=f"{request_id}.attempt.{attempt}", request_id=request_id, ctx=source.ctx, request=source.request,
        embedding=source.embedding, attempt=attempt, target=target, plan=rest, history=history,
        timeout_s=attempt_timeout(target, source.ctx.deadline - now, deps.catalog))


def route(event: RequestAdmitted, deps: RouterDeps, now: float | None = None) -> list[Event]:
    """First attempt of an admitted request."""
    now = time.time() if now is None else now
    plan = candidates(event, deps.catalog)[: deps.settings.max_attempts]
    if not plan and event.ctx.api == "embeddings":
        err = InvalidRequest(f"the model '{event.request.model}' does not offer embeddings", param="model")
        return [CompletionFailed(event_id=terminal_id(event.request_id), request_id=event.request_id,
                                 ctx=event.ctx, error=err.info())]
    if not plan:
        err = ServiceUnavailable(f"no deployment of '{event.request.model}' may serve this request")
        info = ErrorInfo(status=err.status, type=err.type, code="no_candidates", message=err.message,
                         retry_after=5)
        return [CompletionFailed(event_id=terminal_id(event.request_id), request_id=event.request_id,
                                 ctx=event.ctx, error=info)]
    return [dispatch(event.request_id, event, plan, 1, [], deps, now)]


NO_FALLBACK = frozenset({"bad_request", "stream_broken"})


def summarize(event: AttemptFailed) -> AttemptSummary:
    d = event.dispatch
    return AttemptSummary(attempt=d.attempt, deployment=d.target.deployment, provider=d.target.provider,
                          model=d.target.model, outcome=event.error.outcome, message=event.error.message)


def final_error(last: ErrorInfo, history: list[AttemptSummary]) -> ErrorInfo:
    """The client-facing error when every candidate failed, naming each attempt's reason."""
    reasons = "; ".join(f"#{h.attempt} {h.deployment}: {h.outcome} ({h.message})" for h in history)
    all_limited = all(h.outcome == "rate_limited" for h in history)
    status, code = (429, "rate_limit_exceeded") if all_limited else (502, "all_candidates_failed")
    return ErrorInfo(status=status, type="upstream_error" if status == 502 else "rate_limit_error", code=code,
                     message=f"every candidate failed: {reasons}", retry_after=last.retry_after,
                     outcome=last.outcome)


def on_attempt_failed(event: AttemptFailed, deps: RouterDeps, now: float | None = None) -> list[Event]:
    """Fall back to the next candidate, or end the request."""
    now = time.time() if now is None else now
    d = event.dispatch
    history = [*d.history, summarize(event)]
    end = dict(event_id=terminal_id(event.request_id), request_id=event.request_id, ctx=d.ctx, history=history)
    if event.error.outcome == "cancelled":
        return [CompletionCancelled(**end, error=event.error)]
    if event.error.outcome in NO_FALLBACK:
        # The request itself is at fault (another provider would refuse it too), or the client already
        # holds part of a streamed answer from this attempt.
        return [CompletionFailed(**end, error=event.error)]
    remaining = d.ctx.deadline - now
    if not d.plan or d.attempt >= deps.settings.max_attempts:
        return [CompletionFailed(**end, error=final_error(event.error, history))]
    if remaining < deps.settings.min_attempt_timeout_s:
        return [expired(event, now)]
    return [dispatch(event.request_id, d, list(d.plan), d.attempt + 1, history, deps, now)]
