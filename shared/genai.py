"""OpenTelemetry GenAI semantic-convention span names and attributes, taken from lifecycle events.

A provider call is one client span named ``{gen_ai.operation.name}
{gen_ai.request.model}`` (``chat mock-1``) with ``gen_ai.*`` attributes, plus
``switchyard.*`` ones that show where the attempt stands in its request
(its number, and whether it is a fallback or a retry). Only identifiers,
parameters, counts and error codes are attributes: never prompt or
completion text, whatever the team stores.
"""

from __future__ import annotations

from typing import Any, Iterable

from shared.events import AttemptDispatched, AttemptFailed, CompletionRequested, CompletionSucceeded, Event

# The API a request came in through → the GenAI operation it is.
OPERATIONS = {"chat.completions": "chat", "messages": "chat", "responses": "chat", "completions": "text_completion",
              "embeddings": "embeddings"}


def operation(api: str) -> str:
    return OPERATIONS.get(api, api)


def request_span_name(event: CompletionRequested) -> str:
    return f"{operation(event.ctx.api)} {event.request.model}"


def request_attributes(event: CompletionRequested, route: str) -> dict[str, Any]:
    """The gateway's server span of one request (the client's own parameters, never its messages)."""
    r = event.request
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation(event.ctx.api),
        "gen_ai.request.model": r.model,
        "http.route": route,
        "switchyard.request_id": event.request_id,
        "switchyard.tenant": event.ctx.tenant,
        "switchyard.team": event.ctx.team,
        "switchyard.job": event.ctx.job,
        "switchyard.stream": event.ctx.stream,
    }
    return _with_parameters(attrs, r)


def attempt_span_name(event: AttemptDispatched) -> str:
    return f"{operation(event.ctx.api)} {event.target.model}"


def attempt_attributes(event: AttemptDispatched) -> dict[str, Any]:
    """A provider call as it starts."""
    t = event.target
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation(event.ctx.api),
        "gen_ai.provider.name": t.provider,
        "gen_ai.request.model": t.model,
        "switchyard.request_id": event.request_id,
        "switchyard.deployment": t.deployment,
        "switchyard.upstream_model": t.upstream_model,
        "switchyard.attempt": event.attempt,
        "switchyard.attempt.kind": event.kind,
        "switchyard.breaker_state": event.breaker_state or "closed",
        "switchyard.degraded": event.degraded,
    }
    if event.reason:
        attrs["switchyard.attempt.reason"] = event.reason
    if event.history:
        prev = event.history[-1]
        attrs["switchyard.previous.deployment"] = prev.deployment
        attrs["switchyard.previous.outcome"] = prev.outcome
    return _with_parameters(attrs, event.request)


def outcome_attributes(out: Iterable[Event]) -> tuple[dict[str, Any], str | None]:
    """What a provider call came to: its attributes, and the error type when it failed (None: it succeeded)."""
    for e in out:
        if isinstance(e, CompletionSucceeded):
            u = e.response.usage
            attrs: dict[str, Any] = {
                "gen_ai.response.model": e.response.model or e.target.upstream_model,
                "gen_ai.usage.input_tokens": u.prompt_tokens,
                "gen_ai.usage.output_tokens": u.completion_tokens,
                "switchyard.outcome": "success",
                "switchyard.cost_usd": e.cost_usd,
            }
            if e.response.provider_id:
                attrs["gen_ai.response.id"] = e.response.provider_id
            reasons = [c.finish_reason for c in e.response.choices if c.finish_reason]
            if reasons:
                attrs["gen_ai.response.finish_reasons"] = reasons
            if e.ttft_ms is not None:
                attrs["switchyard.ttft_ms"] = e.ttft_ms
            return attrs, None
        if isinstance(e, AttemptFailed):
            attrs = {"error.type": e.error.code or e.error.type, "switchyard.outcome": e.error.outcome,
                     "http.response.status_code": e.error.status}
            if e.usage is not None:
                attrs["gen_ai.usage.input_tokens"] = e.usage.prompt_tokens
                attrs["gen_ai.usage.output_tokens"] = e.usage.completion_tokens
            return attrs, attrs["error.type"]
    return {}, None


def _with_parameters(attrs: dict[str, Any], r) -> dict[str, Any]:
    for name, value in (("gen_ai.request.max_tokens", r.output_cap()), ("gen_ai.request.temperature", r.temperature),
                        ("gen_ai.request.top_p", r.top_p), ("gen_ai.request.seed", r.seed)):
        if value is not None:
            attrs[name] = value
    return attrs
