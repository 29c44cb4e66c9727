"""OpenAI wire shapes Switchyard emits, rendered in one place (sync responses and job results alike)."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.canonical import Delta, Message, StreamChunk
from shared.events import CandidateView, CompletionSucceeded, RequestContext
from shared.pricing import cost_usd, savings_usd


def response_headers(ctx: RequestContext, provider: str) -> dict[str, str]:
    """The ``x-switchyard-*`` and ``x-ratelimit-*`` headers of an answer, streamed or not."""
    headers = {"x-switchyard-provider": provider, **(ctx.rate_headers or {})}
    if ctx.redactions:
        headers["x-switchyard-redactions"] = ",".join(f"{k}={n}" for k, n in sorted(ctx.redactions.items()))
    return headers


def render_completion(event: CompletionSucceeded) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` object for a successful request, with a ``switchyard`` extension."""
    response = event.response
    body = {
        "id": completion_id(event.request_id),
        "object": "chat.completion",
        "created": int(event.ts),
        "model": event.target.model,
        "choices": [
            {"index": c.index, "message": render_message(c.message), "logprobs": c.logprobs,
             "finish_reason": c.finish_reason}
            for c in response.choices
        ],
        "usage": response.usage.openai(),
    }
    if response.system_fingerprint is not None:
        body["system_fingerprint"] = response.system_fingerprint
    body["switchyard"] = switchyard_object(event)
    return body


def render_message(message: Message) -> dict[str, Any]:
    """One assistant message as OpenAI renders it (content always present, null when absent)."""
    out: dict = {"role": message.role, "content": message_text(message)}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": tc.id, "type": tc.type or "function",
             "function": {"name": tc.function.name if tc.function else None,
                          "arguments": tc.function.arguments if tc.function else None}}
            for tc in message.tool_calls
        ]
    if message.refusal is not None:
        out["refusal"] = message.refusal
    return out


def message_text(message: Message) -> str | None:
    """The text of a message, multi-part content joined."""
    if message.content is None or isinstance(message.content, str):
        return message.content
    return "".join(p.text for p in message.content if p.text)


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def render_chunk(request_id: str, created: int, model: str, chunk: StreamChunk) -> dict[str, Any]:
    """OpenAI's ``chat.completion.chunk`` for one canonical increment."""
    return {
        "id": completion_id(request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": c.index, "delta": render_delta(c.delta), "logprobs": c.logprobs,
                     "finish_reason": c.finish_reason} for c in chunk.choices],
    }


def render_delta(delta: Delta) -> dict[str, Any]:
    """A stream increment as OpenAI sends it: a tool call's first delta (the one with its id) names its type."""
    out = msgspec.to_builtins(delta)
    for call in out.get("tool_calls") or ():
        if "id" in call:
            call.setdefault("type", "function")
    return out


def render_usage_chunk(event: CompletionSucceeded, created: int) -> dict[str, Any]:
    """The final chunk of ``stream_options.include_usage``: no choices, the usage (and Switchyard's object)."""
    return {
        "id": completion_id(event.request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": event.target.model,
        "choices": [],
        "usage": event.response.usage.openai(),
        "switchyard": switchyard_object(event),
    }


def switchyard_object(event: CompletionSucceeded) -> dict[str, Any]:
    """Switchyard's extension object: where the request ran, why, what it cost and what it saved.

    ``selected`` is where the answer came from; ``reason`` and ``candidates``
    (every candidate's estimates, component scores, rank or exclusion) explain
    the routing decision; ``path`` lists every attempt in order;
    ``savings_usd`` is what the actual usage would have cost on the most
    expensive eligible candidate (``baseline``) minus what it did cost;
    ``degraded`` is true when the designated last-resort model answered;
    ``cache`` says what the response cache did (hit / miss / bypass, how a hit
    matched, its age, the request it replays, the savings).
    """
    target, d = event.target, event.decision
    out: dict[str, Any] = {
        "request_id": event.request_id,
        "provider": target.provider,
        "deployment": target.deployment,
        "model": target.model,
        "attempts": event.attempt,
        "cost_usd": event.cost_usd,
        "degraded": event.degraded,
        "selected": {"model": target.model, "provider": target.provider, "deployment": target.deployment},
        "actual_cost_usd": event.cost_usd,
        "path": [
            *({"attempt": h.attempt, "model": h.model, "deployment": h.deployment, "outcome": h.outcome,
               "kind": h.kind or None, "latency_ms": h.latency_ms, "breaker_state": h.breaker_state or None}
              for h in event.history),
            {"attempt": event.attempt, "model": target.model, "deployment": target.deployment,
             "outcome": "success", "latency_ms": round(event.latency_ms, 3)},
        ],
    }
    if event.cache is not None:
        out["cache"] = event.cache.public()
    if d is None:
        return out
    baseline = None
    savings = 0.0
    if d.baseline is not None:
        b, u = d.baseline, event.response.usage
        # A cache hit's saving is the cache's (``cache.savings_usd``), not the routing's.
        hit = event.cache is not None and event.cache.status == "hit"
        savings = savings_usd(b, u, event.cost_usd) if b.model != target.model and not hit else 0.0
        baseline = {"model": b.model, "estimated_cost_usd": b.est_cost_usd, "cost_usd_for_this_usage": cost_usd(b, u)}
    out.update({
        "reason": d.reason,
        "mode": d.mode,
        "requested": d.requested,
        "strategy": d.strategy,
        "task": d.task,
        "task_source": d.task_source,
        "preference": d.preference,
        "weights": d.weights or None,
        "constraints": d.constraints,
        "route": d.route,
        "variant": d.variant,
        "seed": d.seed or None,
        "draws": d.draws or None,
        "estimated_cost_usd": d.estimated_cost_usd,
        "baseline": baseline,
        "savings_usd": savings,
        "decided_by": d.decided_by,
        "candidates": [render_candidate(c) for c in d.candidates],
    })
    return out


def render_candidate(c: CandidateView) -> dict[str, Any]:
    """One candidate of a routing decision, every field present."""
    return {
        "deployment": c.deployment, "provider": c.provider, "model": c.model,
        "eligible": c.excluded is None, "excluded": c.excluded, "detail": c.detail or None, "rank": c.rank,
        "score": c.score, "scores": c.scores or None, "estimated_cost_usd": c.est_cost_usd,
        "latency_ms": c.latency_ms, "latency_source": c.latency_source, "quality": c.quality,
        "error_rate": c.error_rate, "breaker": c.breaker, "in_flight": c.in_flight, "sampled": c.sampled,
    }


def render_embeddings(event: CompletionSucceeded) -> dict[str, Any]:
    """OpenAI's embedding list."""
    usage = event.response.usage
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(event.embeddings or [])],
        "model": event.target.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        "switchyard": switchyard_object(event),
    }


def model_list(names: list[str], owner_of: dict[str, str]) -> dict[str, Any]:
    """OpenAI's model list."""
    return {"object": "list", "data": [model_object(n, owner_of.get(n, "switchyard")) for n in names]}


def model_object(name: str, owner: str) -> dict[str, Any]:
    """OpenAI's ``model`` object."""
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}
