"""Gateway logic with no clients: parse bodies, build events, render OpenAI responses and errors."""

from __future__ import annotations

import os
import re
import time
from typing import Any, Mapping

import msgspec

from shared.auth import Principal
from shared.cache import HEADER as CACHE_HEADER
from shared.cache import HEADER_VALUES as CACHE_HEADER_VALUES
from shared.canonical import ChatRequest, EmbeddingRequest, Message
from shared.errors import ErrorInfo, InvalidRequest, PayloadTooLarge, Unprocessable
from shared.events import (
    CompletionRequested,
    CompletionSucceeded,
    PromptRef,
    RequestContext,
    TerminalEvent,
)

_request_decoder = msgspec.json.Decoder(ChatRequest)
_embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)
_PATH = re.compile(r"at `\$(.*)`")


class RequestIds:
    """Request and job ids: 128 bits each from the OS's CSPRNG, read in batches.

    An id must not be guessable from the ids a client has seen (a predictable generator would let a
    neighbour aim at another's job), and one ``os.urandom`` call per id (as ``uuid4`` makes) was a visible
    share of the gateway's CPU; so the OS fills a buffer of ``BATCH`` ids at a time and each id is a slice
    of it. A forked child starts with an empty buffer, never its parent's.
    """

    BATCH = 256

    def __init__(self) -> None:
        self._hex = ""
        self._next = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._hex, self._next = "", 0

    def new(self, prefix: str = "req_") -> str:
        i = self._next
        if i >= len(self._hex):
            self._hex, i = os.urandom(16 * self.BATCH).hex(), 0
        self._next = i + 32
        return prefix + self._hex[i:i + 32]


def decode_body(body: bytes, decoder: msgspec.json.Decoder, max_bytes: int, what: str):
    """Decode and validate a JSON request body; errors name the offending parameter."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body.strip():
        raise InvalidRequest(f"request body is empty; expected a JSON {what}")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _PATH.search(text)
        param = m.group(1).lstrip(".") if m else None
        raise InvalidRequest(text.split(" - at ")[0], param=param or None) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def parse_chat_request(body: bytes, max_bytes: int) -> ChatRequest:
    """An OpenAI chat completion request."""
    return decode_body(body, _request_decoder, max_bytes, "chat completion request")


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


DATA_CLASS_HEADER = "x-switchyard-data-class"


def completion_requested(request: ChatRequest, principal: Principal, headers: Mapping[str, str], *,
                         request_id: str, origin: str, timeout_s: float, job: bool, now: float | None = None,
                         api: str = "chat.completions",
                         embedding: EmbeddingRequest | None = None,
                         prompt: PromptRef | None = None) -> CompletionRequested:
    """The event that puts a request on the bus. Attribution comes only from the key.

    From the client's ``headers`` it takes the routing hints (``x-switchyard-*``, see ``with_routing_headers``),
    the declared data class (``x-switchyard-data-class``), which policy lets only raise the team's class, and
    the response-cache choice (``x-switchyard-cache``); ``prompt`` names the template the request was rendered
    from.
    """
    now = time.time() if now is None else now
    request = with_routing_headers(request, headers)
    ctx = RequestContext(tenant=principal.tenant, team=principal.team, key_id=principal.key_id, origin=origin,
                         deadline=now + timeout_s, received_at=now, job=job, stream=request.stream, api=api,
                         data_class=headers.get(DATA_CLASS_HEADER), cache=cache_choice(headers.get(CACHE_HEADER)),
                         prompt=prompt, issuer=principal.issuer,
                         role=principal.role if principal.issuer else None)  # a token's role: policy cannot re-read it
    return CompletionRequested(event_id=f"{request_id}.requested", request_id=request_id, ts=now, ctx=ctx,
                               request=request, embedding=embedding)


def cache_choice(header: str | None) -> str | None:
    """The client's ``x-switchyard-cache``: ``use``, ``refresh`` or ``off`` (400 for anything else)."""
    if header is None:
        return None
    value = header.strip().lower()
    if value not in CACHE_HEADER_VALUES:
        raise InvalidRequest(f"{CACHE_HEADER} must be one of {', '.join(CACHE_HEADER_VALUES)}", param=CACHE_HEADER)
    return value


ROUTING_HEADER_PREFIX = "x-switchyard-"
NOT_ROUTING = frozenset({"x-switchyard-timeout", DATA_CLASS_HEADER, CACHE_HEADER})  # the gateway's and policy's own
MAX_ROUTING_HEADERS = 32


def with_routing_headers(request: ChatRequest, headers: Mapping[str, str]) -> ChatRequest:
    """Copy the client's ``x-switchyard-*`` headers into ``switchyard.headers`` for the router.

    The router reads routing hints from them (``x-switchyard-task``, ``-preference``, ``-max-cost-usd`` ...;
    the body's own hints win) and routes may match on them. Only this prefix travels: no credentials.
    """
    found = {k.lower(): v[:256] for k, v in headers.items()
             if k.lower().startswith(ROUTING_HEADER_PREFIX) and k.lower() not in NOT_ROUTING}
    if not found:
        return request
    if len(found) > MAX_ROUTING_HEADERS:
        raise InvalidRequest(f"at most {MAX_ROUTING_HEADERS} x-switchyard-* headers")
    ext = dict(request.switchyard or {})
    ext["headers"] = {**found, **(ext.get("headers") or {})}
    return msgspec.structs.replace(request, switchyard=ext)


MAX_EMBEDDING_INPUTS = 2048


def parse_embedding_request(body: bytes, max_bytes: int) -> EmbeddingRequest:
    """Decode an OpenAI embeddings request: one text, a list of texts, token ids or lists of token ids."""
    req = decode_body(body, _embedding_decoder, max_bytes, "embeddings request")
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
    """The embedding inputs (one user message per text) and ``user`` as a canonical prompt, for admission and
    redaction."""
    texts = [req.input] if isinstance(req.input, str) else \
        [x for x in req.input if isinstance(x, str)] or [""]
    return ChatRequest(model=req.model, messages=[Message(role="user", content=t) for t in texts],
                       user=req.user, switchyard=req.switchyard)


def terminal_error(event: TerminalEvent) -> ErrorInfo:
    """The error a non-success terminal event carries."""
    return event.error  # type: ignore[union-attr]


def overhead_s(event: TerminalEvent, total_s: float) -> float:
    """Time the request spent in Switchyard rather than waiting on the provider."""
    provider_s = event.latency_ms / 1000 if isinstance(event, CompletionSucceeded) else 0.0
    return max(0.0, total_s - provider_s)
