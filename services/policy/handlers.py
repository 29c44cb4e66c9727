"""Admission logic: may this request run? Plain functions of (event, deps) → events.

For now admission checks that the key is (still) valid, the model is known
and has a usable deployment, and the request is well-formed and within size
limits; the output cap is clamped to the model's. Budgets, rate limits, PII
and sensitivity rules join here with the governance work.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from services.policy.settings import PolicySettings
from shared.auth import KeyRing
from shared.canonical import ChatRequest, estimate_prompt_tokens, prompt_text
from shared.catalog import Catalog
from shared.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    SwitchyardError,
    Unauthenticated,
    Unprocessable,
)
from shared.events import CompletionRequested, Event, RequestAdmitted, RequestDenied, terminal_id


@dataclass(frozen=True)
class PolicyDeps:
    """What admission reads."""

    settings: PolicySettings
    catalog: Catalog
    keyring: KeyRing


def check(request: ChatRequest, s: PolicySettings, catalog: Catalog) -> ChatRequest:
    """Validate a request against limits and the catalog; return it with its output cap clamped."""
    if len(request.messages) > s.max_messages:
        raise Unprocessable(f"too many messages: {len(request.messages)} > {s.max_messages}", param="messages")
    if request.tools and len(request.tools) > s.max_tools:
        raise Unprocessable(f"too many tools: {len(request.tools)} > {s.max_tools}", param="tools")
    if request.n is not None and request.n > s.max_n:
        raise Unprocessable(f"n may be at most {s.max_n}", param="n")
    for i, m in enumerate(request.messages):
        if m.role == "tool" and not m.tool_call_id:
            raise InvalidRequest("a tool message needs tool_call_id", param=f"messages[{i}].tool_call_id")
    if len(prompt_text(request)) > s.max_prompt_chars:
        raise PayloadTooLarge(f"the prompt is longer than {s.max_prompt_chars} characters", param="messages")
    model = catalog.model_for(request.model)
    if model is None or not catalog.targets(request.model):
        raise NotFound(f"The model '{request.model}' does not exist or is not available on this gateway.",
                       param="model", code="model_not_found")
    prompt_tokens = estimate_prompt_tokens(request)
    if prompt_tokens >= model.context_window:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.context_window} tokens; the messages are about "
            f"{prompt_tokens} tokens.", param="messages")
    cap = request.output_cap()
    if cap is not None and cap > model.max_output_tokens:
        field = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        request = msgspec.structs.replace(request, **{field: model.max_output_tokens})
    return request


def admit(event: CompletionRequested, deps: PolicyDeps) -> list[Event]:
    """Admit or deny one request."""
    try:
        if deps.keyring.by_id(event.ctx.key_id) is None:
            raise Unauthenticated("the API key is no longer valid")
        request = check(event.request, deps.settings, deps.catalog)
    except SwitchyardError as exc:
        if exc.retryable:
            raise
        return [RequestDenied(event_id=terminal_id(event.request_id), request_id=event.request_id, ctx=event.ctx,
                              error=exc.info())]
    return [RequestAdmitted(event_id=f"{event.request_id}.admitted", request_id=event.request_id, ctx=event.ctx,
                            request=request, embedding=event.embedding,
                            estimated_prompt_tokens=estimate_prompt_tokens(request))]
