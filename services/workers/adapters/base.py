"""The provider adapter interface, and the HTTP base most adapters build on.

An adapter knows one wire format: it builds the upstream request from the
canonical one, parses the answer (whole, or as a stream of chunks) into
canonical form with token usage, and maps the provider's errors onto the error
hierarchy. Transport (pooling, timeouts, connection errors, SSE framing, cut
streams) is shared in ``HttpAdapter``; a subclass supplies only the wire format:

    build_request / parse_response                 chat, non-streaming
    build_stream_request / stream_decoder          chat, streaming (SSE unless ``stream_events`` is overridden)
    build_embed_request / parse_embed_response     embeddings (refused unless implemented)
    error_message / map_error                      the provider's error bodies

A feature the provider lacks is translated or refused with ``InvalidRequest``
naming the provider and the parameter (``refuse``) -- never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, Mapping, Protocol

import httpx
import msgspec

from services.workers.adapters.transport import (
    Response,
    Transport,
    TransportError,
    TransportTimeout,
    as_transport,
)
from shared.canonical import (
    ChatRequest,
    ChatResponse,
    ChunkChoice,
    EmbeddingRequest,
    EmbeddingResponse,
    StreamChunk,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)
from shared.catalog import ProviderSpec
from shared.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shared.events import Target
from shared.scrub import scrub  # every provider message is scrubbed before it leaves the adapter

# How providers phrase "your prompt does not fit" (OpenAI, Anthropic, Gemini, Mistral, Bedrock, vLLM).
_CONTEXT = re.compile(
    r"context[ _-]?(length|window|limit)|maximum context|too many (input )?tokens|prompt is too long"
    r"|input is too long|exceeds the maximum number of tokens|input token count|too large for model",
    re.IGNORECASE,
)
MAX_RETRY_AFTER_S = 120.0
# The operator-only detail of a failed call: at most this long, from at most this much of the error body.
DETAIL_LIMIT = 4000
DETAIL_SCAN_BYTES = 64 * 1024
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "apim-request-id")
DEFAULT_EMBED_DIMENSIONS = 256
# The synthetic tool that carries JSON mode on providers that only offer forced tool use.
JSON_TOOL = "json_response"


class ProviderAdapter(Protocol):
    """One provider wire format behind one interface."""

    async def complete(self, request: ChatRequest, target: Target, timeout_s: float) -> ChatResponse:
        """Run a non-streaming chat completion; raise an ``UpstreamError`` when the provider fails."""
        ...

    def stream(self, request: ChatRequest, target: Target, timeout_s: float) -> AsyncIterator[StreamChunk]:
        """Stream a chat completion as canonical chunks; the last chunk carries ``usage``.

        Errors before the first chunk and mid-stream are raised from the iterator; a stream
        that ends without the provider's end marker raises ``UpstreamBadResponse``.
        Closing the iterator early (client gone) closes the upstream connection.
        """
        ...

    async def embed(self, request: EmbeddingRequest, target: Target, timeout_s: float) -> EmbeddingResponse:
        """Embed the inputs; providers without embeddings raise ``InvalidRequest`` naming themselves."""
        ...

    async def aclose(self) -> None:
        ...


@dataclass
class UpstreamRequest:
    """An HTTP request to a provider."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    params: dict[str, str] | None = None


class StreamDecoder(Protocol):
    """Turns one provider's stream events into canonical chunks; one instance per stream."""

    done: bool

    def feed(self, event: Any) -> list[StreamChunk]:
        """Chunks for one provider event; raises an ``UpstreamError`` for an in-stream error event."""
        ...

    def finish(self) -> list[StreamChunk]:
        """Chunks owed at the end of the transport; raises ``UpstreamBadResponse`` if the end marker never came."""
        ...


# ---- errors ---------------------------------------------------------------------------------

def retry_after(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date, capped."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(value) * scale))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            continue
        return min(MAX_RETRY_AFTER_S, max(0.0, when - time.time()))
    return None


def is_context_length(message: str) -> bool:
    """Does a provider's 400 message say the prompt is too long for the model?"""
    return bool(_CONTEXT.search(message))


def classify(provider: str, status: int, message: str, headers: Mapping[str, str]) -> UpstreamError:
    """Map a provider's HTTP status onto the hierarchy; the provider's message is kept, scrubbed."""
    text = f"{provider} returned {status}: {scrub(message)}"
    if status in (400, 404, 413, 422):
        if is_context_length(message):
            return ContextLengthExceeded(text)  # type: ignore[return-value]
        return UpstreamRejected(text)
    if status in (401, 403):
        return UpstreamAuthFailed(text)
    if status == 408:
        return UpstreamTimeout(text)
    if status == 429:
        return UpstreamRateLimited(text, retry_after=retry_after(headers))
    if status >= 500:  # includes Anthropic's 529 overloaded
        return UpstreamUnavailable(text, retry_after=retry_after(headers))
    return UpstreamBadResponse(text)


def upstream_detail(provider: str, status: int, body: bytes, headers: Mapping[str, str]) -> str:
    """The operator-only account of a failed call: status, the provider's request id and its error body, scrubbed.

    The body is scrubbed whole (up to ``DETAIL_SCAN_BYTES``) and cut after, so a cut never leaves half a
    secret unmatched; anything near the scan limit lies far past the cut.
    """
    rid = next((headers[h] for h in _REQUEST_ID_HEADERS if headers.get(h)), None)
    head = f"{provider} returned HTTP {status}" + (f" (upstream request id {rid})" if rid else "")
    text = body[:DETAIL_SCAN_BYTES].decode(errors="replace")
    return scrub(f"{head}; body: {text}", limit=DETAIL_LIMIT)


def with_detail(error: UpstreamError, provider: str, status: int, body: bytes,
                headers: Mapping[str, str]) -> UpstreamError:
    """``error`` carrying ``upstream_detail`` for the operator; its client-facing message is unchanged."""
    error.detail = upstream_detail(provider, status, body, headers)
    return error


def stream_error(provider: str, kind: str, message: str) -> UpstreamError:
    """Map an error reported inside a stream (no HTTP status any more) by the provider's error type."""
    text = f"{provider} failed mid-stream ({kind}): {scrub(message)}"
    k = kind.lower()
    if "overload" in k or "unavailable" in k or "server" in k or "internal" in k or k == "api_error":
        return UpstreamUnavailable(text)
    if "rate" in k or "throttl" in k or "quota" in k or "exhausted" in k:
        return UpstreamRateLimited(text)
    if "timeout" in k:
        return UpstreamTimeout(text)
    if "invalid" in k or "validation" in k:
        return ContextLengthExceeded(text) if is_context_length(message) else UpstreamRejected(text)  # type: ignore
    return UpstreamBadResponse(text)


def refuse(provider: str, param: str, detail: str) -> InvalidRequest:
    """The 400 for a feature ``provider`` lacks: it names the provider and the parameter."""
    return InvalidRequest(f"{provider} does not support {param}: {detail}", param=param)


def stream_cut(provider: str, detail: str) -> UpstreamBadResponse:
    """A stream that ended (or broke) before the provider's end marker: retryable, and never a success."""
    return UpstreamBadResponse(f"stream cut: {provider} {detail}")


# ---- request checks shared by the non-OpenAI dialects -----------------------------------------

# Values that ask for nothing beyond the provider's default behaviour, so they need no translation.
_NO_OP: dict[str, Any] = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False,
                          "top_logprobs": 0, "parallel_tool_calls": True}


def add_turn(turns: list[dict[str, Any]], role: str, items: list[dict[str, Any]], key: str = "content") -> None:
    """Append ``items`` as a ``role`` turn, merged into the previous turn of the same role.

    Anthropic, Bedrock and Gemini require roles to alternate, while the canonical request may hold
    consecutive messages of one role (e.g. a tool result followed by a user message).
    """
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def is_set(name: str, value: Any) -> bool:
    """Did the client really ask for ``name`` (a no-op or empty value does not count)?"""
    if value is None or value in ([], {}, ""):
        return False
    return not (name in _NO_OP and value == _NO_OP[name])


def refuse_unsupported(provider: str, request: ChatRequest, params: Mapping[str, str]) -> None:
    """Refuse the first parameter in ``params`` (name → why) that the request sets to a non-no-op value."""
    for name, why in params.items():
        if is_set(name, getattr(request, name)):
            raise refuse(provider, name, why)


def refuse_function_role(provider: str, request: ChatRequest) -> None:
    """The legacy ``function`` role has no counterpart outside OpenAI."""
    for i, m in enumerate(request.messages):
        if m.role == "function":
            raise refuse(provider, f"messages[{i}].role", "the legacy 'function' role; use tool messages")


def refuse_logprobs(provider: str, request: ChatRequest) -> None:
    """For a dialect whose log probabilities are not translated into the canonical (OpenAI) shape."""
    if is_set("logprobs", request.logprobs) or is_set("top_logprobs", request.top_logprobs):
        raise refuse(provider, "logprobs", "its log probabilities are not translated to OpenAI's shape")


def decode_arguments(provider: str, arguments: str | None, param: str) -> dict[str, Any]:
    """A tool call's JSON arguments as an object (the shape every non-OpenAI dialect wants)."""
    if not arguments:
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        raise InvalidRequest(f"{provider}: tool call arguments are not valid JSON", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{provider}: tool call arguments must be a JSON object", param=param)
    return value


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<mime>;base64,<data>`` → (mime, base64 data); None for any other URL."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")] or "application/octet-stream", data


def json_tool_schema(provider: str, request: ChatRequest) -> dict[str, Any] | None:
    """For providers without a JSON mode: the input schema of a forced tool carrying ``response_format``.

    None when the request wants plain text. Refused when combined with the client's own tools
    (forcing our tool would stop the model from calling theirs) or when the schema is not an object.
    """
    rf = request.response_format
    if not rf or rf.get("type") in (None, "text"):
        return None
    kind = rf.get("type")
    if kind not in ("json_object", "json_schema"):
        raise refuse(provider, "response_format", f"unknown type {kind!r}")
    if request.tools:
        raise refuse(provider, "response_format", "JSON output cannot be combined with tools on this provider")
    if kind == "json_object":
        return {"type": "object", "additionalProperties": True}
    schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
    if schema.get("type") != "object":
        raise refuse(provider, "response_format", "the JSON schema's top level must be an object")
    return schema


def json_mode(request: ChatRequest) -> bool:
    """Does the request ask for JSON output (mode or schema)?"""
    return (request.response_format or {}).get("type") in ("json_object", "json_schema")


def embedding_inputs(provider: str, request: EmbeddingRequest) -> list[str]:
    """The inputs as strings, for providers that do not take token arrays."""
    if isinstance(request.input, str):
        return [request.input]
    if all(isinstance(x, str) for x in request.input):
        return list(request.input)  # type: ignore[arg-type]
    raise refuse(provider, "input", "token-id arrays; send text")


def estimated_usage(request: ChatRequest, completion_text: str) -> Usage:
    """Usage for a provider that reported none (some OpenAI-compatible servers): an estimate beats zero."""
    return Usage(prompt_tokens=estimate_prompt_tokens(request),
                 completion_tokens=estimate_tokens(completion_text) if completion_text else 0)


# ---- Server-Sent Events -----------------------------------------------------------------------

class SSEEvent(msgspec.Struct, frozen=True):
    """One dispatched server-sent event."""

    data: str
    event: str | None = None


class SSEParser:
    """The WHATWG event-stream line grammar: ``event:``/``data:`` fields, blank line dispatches, ``:`` comments."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed_line(self, line: str) -> SSEEvent | None:
        """Feed one line (without its terminator); returns an event when the line completes one."""
        if not line:
            if not self._data and self._event is None:
                return None
            event = SSEEvent(data="\n".join(self._data), event=self._event)
            self._event, self._data = None, []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None  # id and retry do not matter for a one-shot upstream call

    def feed_text(self, text: str) -> list[SSEEvent]:
        """Parse a whole SSE document (fixtures, tests); like a live stream, an unterminated last event is dropped."""
        return [e for line in text.splitlines() if (e := self.feed_line(line)) is not None]


async def sse_events(resp: Response) -> AsyncIterator[SSEEvent]:
    """The events of an SSE response body; an event left incomplete at EOF is discarded, as the spec says."""
    parser = SSEParser()
    async for line in resp.aiter_lines():
        event = parser.feed_line(line)
        if event is not None:
            yield event


class RoleLeader:
    """Holds back the role-only opening chunk(s) and puts the role on the first chunk with substance.

    Providers open with an empty ``role: assistant`` delta (Anthropic's message_start even
    before generation starts). Emitted alone it would count as the first token (a flattering
    time-to-first-token) and as "output reached the client", which ends the chance to fall
    back to another provider when the stream fails right after.
    """

    def __init__(self) -> None:
        self._roles: dict[int, str] = {}
        self._led = False

    def take(self, chunks: Iterable[StreamChunk]) -> list[StreamChunk]:
        out = []
        for chunk in chunks:
            if not self._led and chunk.usage is None and all(_empty(c) for c in chunk.choices):
                self._roles.update({c.index: c.delta.role for c in chunk.choices if c.delta.role})
                continue
            self._led = True
            if self._roles and chunk.choices:
                chunk = msgspec.structs.replace(chunk, choices=[self._lead(c) for c in chunk.choices])
            out.append(chunk)
        return out

    def _lead(self, choice: ChunkChoice) -> ChunkChoice:
        role = self._roles.pop(choice.index, None)
        if role is None or choice.delta.role:
            return choice
        return msgspec.structs.replace(choice, delta=msgspec.structs.replace(choice.delta, role=role))


def _empty(choice: ChunkChoice) -> bool:
    d = choice.delta
    return choice.finish_reason is None and not d.content and not d.tool_calls and not d.refusal


# ---- transport --------------------------------------------------------------------------------

_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError, ValueError, IndexError,
                  AttributeError)


class HttpAdapter:
    """Shared transport for adapters that speak HTTP: subclasses build, parse and read error bodies."""

    def __init__(self, spec: ProviderSpec, client: Transport | httpx.AsyncClient) -> None:
        self.spec = spec
        self.client = as_transport(client)
        self.api_key = spec.credential()
        # Refusals name the provider as the operator configured it, and its type when that differs.
        self.label = spec.name if spec.name == spec.type else f"{spec.name} ({spec.type})"

    # -- the wire format: subclasses implement these --
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        raise NotImplementedError

    def parse_response(self, data: bytes, request: ChatRequest, target: Target) -> ChatResponse:
        raise NotImplementedError

    def build_stream_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        raise refuse(self.label, "stream", "this provider cannot stream")

    def stream_decoder(self, request: ChatRequest, target: Target) -> StreamDecoder:
        raise NotImplementedError

    def build_embed_request(self, request: EmbeddingRequest, target: Target) -> UpstreamRequest:
        raise InvalidRequest(f"{self.label} does not offer embeddings; choose an embeddings model of another "
                             f"provider", param="model")

    def parse_embed_response(self, data: bytes, request: EmbeddingRequest, target: Target) -> EmbeddingResponse:
        raise NotImplementedError

    def error_message(self, data: bytes) -> str:
        """The human message inside a provider error body."""
        try:
            body = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return data.decode(errors="replace")
        return _find_message(body) or data.decode(errors="replace")

    def map_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return classify(self.spec.name, status, self.error_message(data), headers)

    def stream_events(self, resp: Response) -> AsyncIterator[Any]:
        """The provider events of a streaming response: SSE unless the wire format says otherwise."""
        return sse_events(resp)

    # -- transport --
    def _connect_s(self, timeout_s: float) -> float:
        return min(self.spec.connect_timeout_s, timeout_s)

    def _timed_out(self, timeout_s: float, exc: BaseException) -> UpstreamTimeout:
        return UpstreamTimeout(f"{self.spec.name} did not answer within {timeout_s:.1f}s ({type(exc).__name__})")

    def _unreachable(self, exc: BaseException) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"{self.spec.name} unreachable: {type(exc).__name__}: {scrub(str(exc))}")

    async def send(self, up: UpstreamRequest, timeout_s: float) -> bytes:
        """The body of a successful answer; errors mapped. The whole call is bounded (a slow drip times out too)."""
        try:
            async with asyncio.timeout(timeout_s):
                status, headers, body = await self.client.request(
                    up.method, up.url, headers=up.headers, content=up.body, params=up.params,
                    connect_timeout_s=self._connect_s(timeout_s))
        except (TransportTimeout, TimeoutError) as exc:
            raise self._timed_out(timeout_s, exc) from None
        except TransportError as exc:
            raise self._unreachable(exc) from None
        if status >= 400:
            raise with_detail(self.map_error(status, body, headers), self.spec.name, status, body, headers)
        return body

    def _unreadable(self, exc: BaseException) -> UpstreamBadResponse:
        return UpstreamBadResponse(f"{self.spec.name} sent an unreadable response: "
                                   f"{type(exc).__name__}: {scrub(str(exc))}")

    async def complete(self, request: ChatRequest, target: Target, timeout_s: float) -> ChatResponse:
        body = await self.send(self.build_request(request, target), timeout_s)
        try:
            return self.parse_response(body, request, target)
        except _DECODE_ERRORS as exc:
            raise self._unreadable(exc) from None

    async def embed(self, request: EmbeddingRequest, target: Target, timeout_s: float) -> EmbeddingResponse:
        body = await self.send(self.build_embed_request(request, target), timeout_s)
        try:
            return self.parse_embed_response(body, request, target)
        except _DECODE_ERRORS as exc:
            raise self._unreadable(exc) from None

    async def stream(self, request: ChatRequest, target: Target, timeout_s: float) -> AsyncIterator[StreamChunk]:
        up = self.build_stream_request(request, target)
        decoder = self.stream_decoder(request, target)
        leader = RoleLeader()
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout_at(deadline):
                    resp = await stack.enter_async_context(
                        self.client.stream(up.method, up.url, headers=up.headers, content=up.body,
                                           params=up.params, connect_timeout_s=self._connect_s(timeout_s)))
                    if resp.status_code >= 400:
                        body = await resp.aread()
                        raise with_detail(self.map_error(resp.status_code, body, resp.headers), self.spec.name,
                                          resp.status_code, body, resp.headers)
            except (TransportTimeout, TimeoutError) as exc:
                raise self._timed_out(timeout_s, exc) from None
            except TransportError as exc:
                raise self._unreachable(exc) from None
            events = await stack.enter_async_context(contextlib.aclosing(self.stream_events(resp)))
            while not decoder.done:
                # The deadline guards each read, never a yield: the consumer's own time is not ours to cancel.
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(events, None)
                except (TransportTimeout, TimeoutError) as exc:
                    raise self._timed_out(timeout_s, exc) from None
                except TransportError as exc:
                    raise stream_cut(self.spec.name, f"connection failed mid-stream ({type(exc).__name__}: "
                                                     f"{scrub(str(exc), 200)})") from None
                if event is None:
                    break
                for chunk in leader.take(self._decode(decoder.feed, event)):
                    yield chunk
        for chunk in leader.take(self._decode(decoder.finish)):
            yield chunk

    def _decode(self, step: Callable[..., list[StreamChunk]], *args: Any) -> list[StreamChunk]:
        """Run a decoder step; a payload it cannot read is the provider's fault, not ours."""
        try:
            return step(*args)
        except _DECODE_ERRORS as exc:
            raise self._unreadable(exc) from None

    async def aclose(self) -> None:
        """The client is shared per provider and closed by the worker."""


def _find_message(body: Any) -> str | None:
    """Providers nest their message differently: {"error": {"message"}}, {"message"}, {"detail"} ..."""
    if isinstance(body, dict):
        for key in ("message", "detail", "error_description"):
            if isinstance(body.get(key), str):
                return body[key]
        for key in ("message", "detail"):
            if isinstance(body.get(key), (dict, list)):
                found = _find_message(body[key])
                if found:
                    return found
        if isinstance(body.get("msg"), str):
            loc = body.get("loc")
            where = ".".join(str(p) for p in loc) + ": " if isinstance(loc, list) else ""
            return where + body["msg"]
        err = body.get("error")
        if isinstance(err, str):
            return err
        if err is not None:
            return _find_message(err)
    if isinstance(body, list) and body:
        return _find_message(body[0])
    return None
