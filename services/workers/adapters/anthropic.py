"""Anthropic Messages API: ``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``.

Translations: system and developer messages become the top-level ``system``
blocks; ``max_tokens`` is required, so it defaults to ``options.default_max_tokens``
(4096) when the client set no cap; tool calls become ``tool_use`` blocks and
tool messages ``tool_result`` blocks in a user turn (consecutive turns of one
role are merged, as the API expects strictly alternating turns); ``tool_choice``
``required`` → ``any``, a named function → ``tool``; ``parallel_tool_calls:
false`` → ``disable_parallel_tool_use``; ``stop`` → ``stop_sequences``; ``user``
→ ``metadata.user_id``; JSON mode and JSON schema become a forced tool whose
input is returned as the message text. ``strict`` on tool definitions is not
sent (the Messages API validates tool input against the schema regardless).

Refused: ``n`` > 1, ``seed``, presence/frequency penalties, ``logit_bias``,
``logprobs``, ``temperature`` above 1, audio parts, files other than inline
PDFs, ``name`` on non-tool messages, the legacy ``function`` role.

Usage: Anthropic's ``input_tokens`` excludes cache reads and writes, the
canonical ``prompt_tokens`` includes them (OpenAI's convention), so
``prompt = input + cache_read + cache_creation``.
"""

from __future__ import annotations

from typing import Any, Mapping

import msgspec

from services.workers.adapters.base import (
    add_turn,
    JSON_TOOL,
    HttpAdapter,
    SSEEvent,
    UpstreamRequest,
    classify,
    decode_arguments,
    json_mode,
    json_tool_schema,
    parse_data_url,
    refuse,
    refuse_function_role,
    refuse_unsupported,
    stream_cut,
    stream_error,
)
from shared.canonical import (
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    ContentPart,
    Delta,
    FunctionCall,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
)
from shared.errors import UpstreamError, UpstreamUnavailable
from shared.events import Target

DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
_UNSUPPORTED = {
    "n": "more than one completion per request",
    "seed": "seeded sampling",
    "presence_penalty": "presence penalties",
    "frequency_penalty": "frequency penalties",
    "logit_bias": "token biasing",
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
}
_encoder = msgspec.json.Encoder()


# ---- request --------------------------------------------------------------------------------

def _image_block(provider: str, part: ContentPart, param: str) -> dict[str, Any]:
    url = (part.image_url or {}).get("url") or ""
    inline = parse_data_url(url)
    if inline is not None:
        mime, data = inline
        if mime not in IMAGE_TYPES:
            raise refuse(provider, param, f"images of type {mime} (supported: {', '.join(sorted(IMAGE_TYPES))})")
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise refuse(provider, param, "image URLs other than http(s) and base64 data URLs")


def _content_blocks(provider: str, content: str | list[ContentPart] | None, i: int) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        if part.type == "text":
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif part.type == "image_url":
            blocks.append(_image_block(provider, part, param))
        elif part.type == "file" and (inline := parse_data_url((part.file or {}).get("file_data") or "")):
            if inline[0] != "application/pdf":
                raise refuse(provider, param, f"files of type {inline[0]} (only PDF documents)")
            blocks.append({"type": "document", "source": {"type": "base64", "media_type": inline[0],
                                                          "data": inline[1]}})
        else:
            raise refuse(provider, param, f"content parts of type {part.type!r}"
                         + (" other than inline PDF data" if part.type == "file" else ""))
    return blocks


def _text_only(provider: str, content: str | list[ContentPart] | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if any(p.type != "text" for p in content):
        raise refuse(provider, param, "non-text content here")
    return "".join(p.text or "" for p in content)


def _tool_choice(provider: str, request: ChatRequest) -> dict[str, Any] | None:
    tc = request.tool_choice
    choice: dict[str, Any] | None
    if tc is None:
        choice = None
    elif tc == "auto":
        choice = {"type": "auto"}
    elif tc == "none":
        choice = {"type": "none"}
    elif tc == "required":
        choice = {"type": "any"}
    elif isinstance(tc, dict) and (tc.get("function") or {}).get("name"):
        choice = {"type": "tool", "name": tc["function"]["name"]}
    else:
        raise refuse(provider, "tool_choice", f"the value {tc!r}")
    if request.parallel_tool_calls is False and request.tools:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return choice


def messages_body(provider: str, request: ChatRequest, model: str, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                  stream: bool = False) -> dict[str, Any]:
    """The canonical request as an Anthropic Messages body."""
    refuse_function_role(provider, request)
    refuse_unsupported(provider, request, _UNSUPPORTED)
    if request.temperature is not None and request.temperature > 1:
        raise refuse(provider, "temperature", "values above 1 (its range is 0 to 1)")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        add_turn(turns, role, blocks, "content")

    for i, m in enumerate(request.messages):
        if m.name and m.role != "tool":
            raise refuse(provider, f"messages[{i}].name", "participant names")
        if m.role in ("system", "developer"):
            text = _text_only(provider, m.content, f"messages[{i}].content")
            if text:
                system.append({"type": "text", "text": text})
        elif m.role == "user":
            add("user", _content_blocks(provider, m.content, i))
        elif m.role == "assistant":
            blocks = _content_blocks(provider, m.content if m.content is not None else m.refusal, i)
            for k, call in enumerate(m.tool_calls or ()):
                fn = call.function or FunctionCall()
                blocks.append({"type": "tool_use", "id": call.id or f"toolu_{i}_{k}", "name": fn.name or "",
                               "input": decode_arguments(provider, fn.arguments,
                                                         f"messages[{i}].tool_calls[{k}].function.arguments")})
            add("assistant", blocks)
        elif m.role == "tool":
            text = _text_only(provider, m.content, f"messages[{i}].content")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id or ""}
            if text:  # an empty result is sent without content rather than as an empty text
                result["content"] = text
            add("user", [result])
    body: dict[str, Any] = {"model": model, "max_tokens": request.output_cap() or default_max_tokens,
                            "messages": turns}
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    schema = json_tool_schema(provider, request)
    if schema is not None:
        body["tools"] = [{"name": JSON_TOOL, "description": "Reply with the requested JSON output.",
                          "input_schema": schema}]
        body["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
    elif request.tools:
        tools = []
        for k, tool in enumerate(request.tools):
            fn = tool.get("function") or {}
            if tool.get("type", "function") != "function" or not fn.get("name"):
                raise refuse(provider, f"tools[{k}]", f"tools of type {tool.get('type')!r}; only functions")
            spec = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
            if fn.get("description"):
                spec["description"] = fn["description"]
            tools.append(spec)
        body["tools"] = tools
        choice = _tool_choice(provider, request)
        if choice is not None:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


# ---- response -------------------------------------------------------------------------------

class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _OutputDetails(msgspec.Struct):
    thinking_tokens: int = 0


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: _OutputDetails | None = None


class _Message(msgspec.Struct):
    content: list[_Block]
    usage: _Usage
    id: str | None = None
    model: str | None = None
    stop_reason: str | None = None


class _Error(msgspec.Struct):
    type: str = "error"
    message: str = ""


class _Event(msgspec.Struct):
    type: str
    message: _Message | None = None
    index: int | None = None
    content_block: _Block | None = None
    delta: dict[str, Any] | None = None
    usage: _Usage | None = None
    error: _Error | None = None


_message = msgspec.json.Decoder(_Message)
_event = msgspec.json.Decoder(_Event)


def canonical_usage(u: _Usage) -> Usage:
    read, write = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
    return Usage(prompt_tokens=(u.input_tokens or 0) + read + write, completion_tokens=u.output_tokens or 0,
                 cached_tokens=read, cache_creation_tokens=write,
                 reasoning_tokens=u.output_tokens_details.thinking_tokens if u.output_tokens_details else 0)


def parse_message(data: bytes, target: Target, json_output: bool = False) -> ChatResponse:
    """An Anthropic message object in canonical form; with ``json_output`` our forced JSON tool becomes the text."""
    m = _message.decode(data)
    text: list[str] = []
    calls: list[ToolCall] = []
    finish = STOP_REASONS.get(m.stop_reason or "end_turn", "stop")
    for block in m.content:
        if block.type == "text":
            text.append(block.text or "")
        elif block.type == "tool_use" and json_output and block.name == JSON_TOOL:
            text.append(_encoder.encode(block.input).decode())
            finish = "stop" if finish == "tool_calls" else finish
        elif block.type == "tool_use":
            calls.append(ToolCall(id=block.id, type="function",
                                  function=FunctionCall(name=block.name,
                                                        arguments=_encoder.encode(block.input or {}).decode())))
        # thinking / redacted_thinking blocks are the model's private reasoning: counted in usage, not returned
    message = Message(role="assistant", content="".join(text) if text or not calls else None,
                      tool_calls=calls or None)
    return ChatResponse(model=m.model or target.upstream_model, provider_id=m.id,
                        choices=[Choice(index=0, message=message, finish_reason=finish)],  # type: ignore[arg-type]
                        usage=canonical_usage(m.usage))


class MessagesStreamDecoder:
    """Anthropic's stream events (message_start … message_stop) as canonical chunks."""

    def __init__(self, provider: str, json_output: bool = False) -> None:
        self.provider = provider
        self.json_output = json_output
        self.done = False
        self._model: str | None = None
        self._usage = _Usage()
        self._tools: dict[int, int] = {}  # content-block index → canonical tool-call index
        self._json_blocks: set[int] = set()

    def _chunk(self, delta: Delta, finish: str | None = None) -> StreamChunk:
        return StreamChunk(choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],  # type: ignore
                           model=self._model)

    def _merge_usage(self, u: _Usage) -> None:
        # message_delta counts are cumulative; absent optional ones leave message_start's values standing.
        for f in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                  "output_tokens_details"):
            if getattr(u, f) is not None:
                setattr(self._usage, f, getattr(u, f))

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        ev = _event.decode(event.data)
        kind = ev.type
        if kind == "error":
            err = ev.error or _Error()
            raise stream_error(self.provider, err.type, err.message)
        if kind == "message_start" and ev.message is not None:
            self._model = ev.message.model
            self._merge_usage(ev.message.usage)
            return [self._chunk(Delta(role="assistant", content=""))]
        if kind == "content_block_start" and ev.content_block is not None and ev.index is not None:
            block = ev.content_block
            if block.type == "text" and block.text:
                return [self._chunk(Delta(content=block.text))]
            if block.type == "tool_use" and self.json_output and block.name == JSON_TOOL:
                self._json_blocks.add(ev.index)
            elif block.type == "tool_use":
                n = self._tools[ev.index] = len(self._tools)
                return [self._chunk(Delta(tool_calls=[ToolCall(index=n, id=block.id, type="function",
                                                               function=FunctionCall(name=block.name,
                                                                                     arguments=""))]))]
            return []
        if kind == "content_block_delta" and ev.delta is not None and ev.index is not None:
            d = ev.delta
            if d.get("type") == "text_delta":
                return [self._chunk(Delta(content=d.get("text", "")))]
            if d.get("type") == "input_json_delta":
                piece = d.get("partial_json", "")
                if ev.index in self._json_blocks:
                    return [self._chunk(Delta(content=piece))] if piece else []
                if ev.index in self._tools and piece:
                    return [self._chunk(Delta(tool_calls=[ToolCall(index=self._tools[ev.index],
                                                                   function=FunctionCall(arguments=piece))]))]
            return []  # thinking, signature and citation deltas carry no canonical content
        if kind == "message_delta":
            if ev.usage is not None:
                self._merge_usage(ev.usage)
            reason = (ev.delta or {}).get("stop_reason")
            if reason is None:
                return []
            finish = STOP_REASONS.get(reason, "stop")
            if finish == "tool_calls" and self._json_blocks and not self._tools:
                finish = "stop"
            return [self._chunk(Delta(), finish)]
        if kind == "message_stop":
            self.done = True
            return [StreamChunk(usage=canonical_usage(self._usage), model=self._model)]
        return []  # ping, content_block_stop and event types added later

    def finish(self) -> list[StreamChunk]:
        if not self.done:
            raise stream_cut(self.provider, "ended without message_stop")
        return []


class AnthropicAdapter(HttpAdapter):
    """Anthropic's Messages API."""

    default_base = "https://api.anthropic.com"

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json",
             "anthropic-version": str(self.spec.options.get("anthropic_version", DEFAULT_VERSION)),
             **self.spec.headers}
        beta = self.spec.options.get("beta")
        if beta:
            h["anthropic-beta"] = ",".join(beta) if isinstance(beta, list) else str(beta)
        if self.api_key:
            h["x-api-key"] = self.api_key
        return h

    def _url(self) -> str:
        return f"{(self.spec.base_url or self.default_base).rstrip('/')}/v1/messages"

    def _body(self, request: ChatRequest, target: Target, stream: bool) -> bytes:
        cap = int(self.spec.options.get("default_max_tokens", DEFAULT_MAX_TOKENS))
        return _encoder.encode(messages_body(self.label, request, target.upstream_model, cap, stream))

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        return UpstreamRequest("POST", self._url(), self.headers(), self._body(request, target, False))

    def build_stream_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        return UpstreamRequest("POST", self._url(), {**self.headers(), "accept": "text/event-stream"},
                               self._body(request, target, True))

    def parse_response(self, data: bytes, request: ChatRequest, target: Target) -> ChatResponse:
        return parse_message(data, target, json_mode(request))

    def stream_decoder(self, request: ChatRequest, target: Target) -> MessagesStreamDecoder:
        return MessagesStreamDecoder(self.spec.name, json_mode(request))

    def map_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> UpstreamError:
        message = self.error_message(data)
        if b"overloaded_error" in data and status < 500:  # overloaded is capacity, whatever the status says
            return UpstreamUnavailable(f"{self.spec.name} returned {status}: {message}")
        return classify(self.spec.name, status, message, headers)
