"""Gateway logic with no clients: parse bodies, build events, render OpenAI responses and errors."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import msgspec

from shared.auth import Principal
from shared.canonical import ChatRequest
from shared.errors import ErrorInfo, InvalidRequest, PayloadTooLarge, Unprocessable
from shared.events import (
    CompletionRequested,
    CompletionSucceeded,
    RequestContext,
    TerminalEvent,
)

_request_decoder = msgspec.json.Decoder(ChatRequest)
_PATH = re.compile(r"at `\$(.*)`")
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


def parse_chat_request(body: bytes, max_bytes: int) -> ChatRequest:
    """Decode and validate an OpenAI chat request; errors name the offending parameter."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body.strip():
        raise InvalidRequest("request body is empty; expected a JSON chat completion request")
    try:
        return _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _PATH.search(text)
        param = m.group(1).lstrip(".") if m else None
        raise InvalidRequest(text.split(" - at ")[0], param=param or None) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def timeout_for(header: str | None, default_s: float, max_s: float) -> float:
    """The request's total deadline in seconds: the default, or lower/higher up to the max if the client asks."""
    if header is None:
        return default_s
    try:
        value = float(header)
    except ValueError:
        raise InvalidRequest("x-switchyard-timeout must be a number of seconds", param="x-switchyard-timeout") from None
    if not 0 < value <= max_s:
        raise Unprocessable(f"x-switchyard-timeout must be in (0, {max_s}]", param="x-switchyard-timeout")
    return value


def completion_requested(request: ChatRequest, principal: Principal, *, request_id: str, origin: str,
                         timeout_s: float, job: bool, now: float | None = None,
                         api: str = "chat.completions") -> CompletionRequested:
    """The event that puts a request on the bus. Attribution comes only from the key."""
    now = time.time() if now is None else now
    ctx = RequestContext(tenant=principal.tenant, team=principal.team, key_id=principal.key_id, origin=origin,
                         deadline=now + timeout_s, received_at=now, job=job, stream=request.stream, api=api)
    return CompletionRequested(event_id=f"{request_id}.requested", request_id=request_id, ts=now, ctx=ctx,
                               request=request)


def terminal_error(event: TerminalEvent) -> ErrorInfo:
    """The error a non-success terminal event carries."""
    return event.error  # type: ignore[union-attr]


def overhead_s(event: TerminalEvent, total_s: float) -> float:
    """Time the request spent in Switchyard rather than waiting on the provider."""
    provider_s = event.latency_ms / 1000 if isinstance(event, CompletionSucceeded) else 0.0
    return max(0.0, total_s - provider_s)
