"""Gateway logic with no clients: parse bodies, build events, render OpenAI responses and errors."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import msgspec

from shared.auth import Principal
from shared.canonical import ChatRequest, EmbeddingRequest, Message
from shared.errors import ErrorInfo, InvalidRequest, PayloadTooLarge, Unprocessable
from shared.events import (
    CompletionRequested,
    CompletionSucceeded,
    RequestContext,
    TerminalEvent,
)

_request_decoder = msgspec.json.Decoder(ChatRequest)
_embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)
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
                         api: str = "chat.completions",
                         embedding: EmbeddingRequest | None = None) -> CompletionRequested:
    """The event that puts a request on the bus. Attribution comes only from the key."""
    now = time.time() if now is None else now
    ctx = RequestContext(tenant=principal.tenant, team=principal.team, key_id=principal.key_id, origin=origin,
                         deadline=now + timeout_s, received_at=now, job=job, stream=request.stream, api=api)
    return CompletionRequested(event_id=f"{request_id}.requested", request_id=request_id, ts=now, ctx=ctx,
                               request=request, embedding=embedding)


MAX_EMBEDDING_INPUTS = 2048


def parse_embedding_request(body: bytes, max_bytes: int) -> EmbeddingRequest:
    """Decode an OpenAI embeddings request: one text, a list of texts, token ids or lists of token ids."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        req = _embedding_decoder.decode(body)
    except msgspec.ValidationError as exc:
        m = _PATH.search(str(exc))
        raise InvalidRequest(str(exc).split(" - at ")[0], param=(m.group(1).lstrip(".") if m else None) or None) \
            from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    inp = req.input
    if isinstance(inp, list):
        if not inp:
            raise InvalidRequest("input must not be empty", param="input")
        if len(inp) > MAX_EMBEDDING_INPUTS:
            raise Unprocessable(f"at most {MAX_EMBEDDING_INPUTS} inputs per request", param="input")
        kinds = {type(x) for x in inp}
        if len(kinds) > 1:
            raise InvalidRequest("input must be all strings, all token ids, or all lists of token ids",
                                 param="input")
    elif not inp:
        raise InvalidRequest("input must not be empty", param="input")
    return req


def embedding_prompt(req: EmbeddingRequest) -> ChatRequest:
    """The embedding inputs as a canonical prompt (one user message per text), for admission and redaction."""
    texts = [req.input] if isinstance(req.input, str) else \
        [x for x in req.input if isinstance(x, str)] or [""]
    return ChatRequest(model=req.model, messages=[Message(role="user", content=t) for t in texts],
                       switchyard=req.switchyard)


def terminal_error(event: TerminalEvent) -> ErrorInfo:
    """The error a non-success terminal event carries."""
    return event.error  # type: ignore[union-attr]


def overhead_s(event: TerminalEvent, total_s: float) -> float:
    """Time the request spent in Switchyard rather than waiting on the provider."""
    provider_s = event.latency_ms / 1000 if isinstance(event, CompletionSucceeded) else 0.0
    return max(0.0, total_s - provider_s)
