"""Anthropic Messages wire shapes for the ``POST /v1/messages`` ingress: parse in, render out, stream out.

Pure translation, no I/O: an Anthropic Messages request becomes the canonical
``ChatRequest`` (so it routes to any provider), a canonical ``ChatResponse``
becomes an Anthropic ``message`` object, canonical ``StreamChunk``s become
Anthropic's stream events, and an ``ErrorInfo`` becomes Anthropic's error
envelope -- so the official ``anthropic`` SDK works unchanged.

Request translation: ``system`` → system message; ``tool_use`` blocks →
assistant tool calls; ``tool_result`` blocks → tool messages (placed before
the rest of that user turn, as Anthropic requires them first); images and PDF
documents → image/file content parts; ``stop_sequences`` → ``stop``;
``metadata.user_id`` → ``user``; ``tool_choice`` ``any`` → ``required``,
``tool`` → a named function, ``disable_parallel_tool_use`` →
``parallel_tool_calls: false``; ``output_config.format`` (structured output)
→ ``response_format`` JSON schema; a ``tool_result`` with ``is_error`` gets its
text prefixed with ``Error:`` (the canonical tool message has no error flag).
``temperature`` and ``top_p``, which current SDKs no longer expose but older
clients still send, are taken as they come.

Not translated and deliberately ignored: ``cache_control`` (per block or
top-level: a cost hint with no canonical counterpart; answers are the same
without it), ``service_tier``, ``diagnostics``, ``user_profile_id`` and
``workspace_id`` (Anthropic account bookkeeping), and earlier turns'
``thinking`` blocks (Anthropic itself drops them from the context). Refused
with a 400 naming the parameter: ``top_k``, enabled extended ``thinking``,
``output_config.effort``, ``inference_geo``, ``speed`` other than standard,
server tools (web search, code execution …), ``mcp_servers``, ``container``,
document URLs, images inside tool results.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from services.gateway.handlers import decode_body
from shared.canonical import (
    ChatRequest,
    ChatResponse,
    ContentPart,
    FunctionCall,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
)
from shared.errors import ErrorInfo, InvalidRequest

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 409: "conflict_error", 413: "request_too_large",
               422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 502: "api_error",
               503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


# ---- the request as Anthropic defines it --------------------------------------------------------

class _Source(Struct, kw_only=True):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class _Text(Struct, tag="text", tag_field="type", kw_only=True):
    text: str


class _Image(Struct, tag="image", tag_field="type", kw_only=True):
    source: _Source


class _Document(Struct, tag="document", tag_field="type", kw_only=True):
    source: _Source
    title: str | None = None


class _ToolUse(Struct, tag="tool_use", tag_field="type", kw_only=True):
    id: str
    name: str
    input: dict[str, Any] = {}


class _ToolResult(Struct, tag="tool_result", tag_field="type", kw_only=True):
    tool_use_id: str
    content: str | list[_Text | _Image] | None = None
    is_error: bool = False


class _Thinking(Struct, tag="thinking", tag_field="type", kw_only=True):
    thinking: str = ""


class _RedactedThinking(Struct, tag="redacted_thinking", tag_field="type", kw_only=True):
    data: str = ""


_Block = _Text | _Image | _Document | _ToolUse | _ToolResult | _Thinking | _RedactedThinking


class _Message(Struct, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Tool(Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class _ToolChoice(Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _Metadata(Struct, kw_only=True):
    user_id: str | None = None


class _Format(Struct, kw_only=True):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class _OutputConfig(Struct, kw_only=True):
    effort: str | None = None
    format: _Format | None = None


class MessagesRequest(Struct, kw_only=True):
    """An Anthropic Messages API request (unknown fields are ignored)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[_Message], Meta(min_length=1)]
    system: str | list[_Text] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: int | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    metadata: _Metadata | None = None
    thinking: dict[str, Any] | None = None
    output_config: _OutputConfig | None = None
    inference_geo: str | None = None
    speed: str | None = None
    mcp_servers: list[Any] | None = None
    container: Any = None
    # Switchyard's extension object (routing hints), as on the OpenAI ingress.
    switchyard: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest, kw_only=True):
    """``POST /v1/messages/count_tokens``: a Messages request whose ``max_tokens`` may be left out."""

    max_tokens: Annotated[int, Meta(ge=1)] | None = None  # type: ignore[assignment]


_decoder = msgspec.json.Decoder(MessagesRequest)
_encoder = msgspec.json.Encoder()


def _decode(body: bytes, max_bytes: int) -> MessagesRequest:
    return decode_body(body, _decoder, max_bytes, "Messages request")


def _refuse(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by this gateway's /v1/messages", param=param)


def _image_part(source: _Source, param: str) -> ContentPart:
    if source.type == "base64" and source.data:
        return ContentPart(type="image_url", image_url={"url": f"data:{source.media_type};base64,{source.data}"})
    if source.type == "url" and source.url:
        return ContentPart(type="image_url", image_url={"url": source.url})
    raise _refuse(f"{param}.source", f"an image source of type {source.type!r}")


def _user_turn(m: _Message, i: int) -> list[Message]:
    if isinstance(m.content, str):
        return [Message(role="user", content=m.content)]
    tools: list[Message] = []
    parts: list[ContentPart] = []
    for j, block in enumerate(m.content):
        param = f"messages[{i}].content[{j}]"
        if isinstance(block, _Text):
            parts.append(ContentPart(type="text", text=block.text))
        elif isinstance(block, _Image):
            parts.append(_image_part(block.source, param))
        elif isinstance(block, _Document):
            src = block.source
            if src.type == "base64" and src.media_type == "application/pdf" and src.data:
                parts.append(ContentPart(type="file", file={"filename": (block.title or "document") + ".pdf",
                                                            "file_data": f"data:application/pdf;base64,{src.data}"}))
            elif src.type == "text" and src.data is not None:
                parts.append(ContentPart(type="text", text=src.data))
            else:
                raise _refuse(f"{param}.source", f"a document source of type {src.type!r}")
        elif isinstance(block, _ToolResult):
            tools.append(Message(role="tool", tool_call_id=block.tool_use_id, content=_tool_text(block, param)))
        elif isinstance(block, _ToolUse):
            raise InvalidRequest("tool_use blocks belong in assistant turns", param=param)
        # thinking blocks never belong in user turns; ignoring them changes nothing the model sees
    return tools + ([Message(role="user", content=parts)] if parts else [])


def _tool_text(block: _ToolResult, param: str) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        if any(not isinstance(b, _Text) for b in block.content):
            raise _refuse(f"{param}.content", "an image inside a tool_result")
        text = "\n".join(b.text for b in block.content)  # type: ignore[union-attr]
    return f"Error: {text}" if block.is_error else text


def _assistant_turn(m: _Message, i: int) -> Message:
    if isinstance(m.content, str):
        return Message(role="assistant", content=m.content)
    text: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(m.content):
        if isinstance(block, _Text):
            text.append(block.text)
        elif isinstance(block, _ToolUse):
            calls.append(ToolCall(id=block.id, type="function",
                                  function=FunctionCall(name=block.name,
                                                        arguments=_encoder.encode(block.input).decode())))
        elif isinstance(block, (_Thinking, _RedactedThinking)):
            continue  # Anthropic drops earlier turns' thinking from the context too
        else:
            raise InvalidRequest(f"{type(block).__name__.strip('_').lower()} blocks belong in user turns",
                                 param=f"messages[{i}].content[{j}]")
    return Message(role="assistant", content="".join(text) if text or not calls else None,
                   tool_calls=calls or None)


def parse_messages_request(body: bytes, max_bytes: int) -> ChatRequest:
    """Decode and validate an Anthropic Messages request into the canonical request; errors name the parameter."""
    req = _decode(body, max_bytes)
    if req.top_k is not None:
        raise _refuse("top_k", "top_k sampling")
    if req.thinking and req.thinking.get("type", "disabled") != "disabled":
        raise _refuse("thinking", "extended thinking")
    if req.mcp_servers:
        raise _refuse("mcp_servers", "MCP servers")
    if req.container is not None:
        raise _refuse("container", "a code-execution container")
    if req.output_config is not None and req.output_config.effort is not None:
        raise _refuse("output_config.effort", "an effort level")
    if req.inference_geo:  # a residency demand must not be quietly routed elsewhere
        raise _refuse("inference_geo", "choosing the inference geography (Switchyard's routing policy decides)")
    if req.speed not in (None, "standard"):
        raise _refuse("speed", f"speed {req.speed!r}")
    response_format = None
    if req.output_config is not None and req.output_config.format is not None:
        response_format = {"type": "json_schema",
                           "json_schema": {"name": "output", "schema": req.output_config.format.schema}}
    messages: list[Message] = []
    if isinstance(req.system, str) and req.system:
        messages.append(Message(role="system", content=req.system))
    elif isinstance(req.system, list) and req.system:
        messages.append(Message(role="system", content=[ContentPart(type="text", text=b.text) for b in req.system]))
    for i, m in enumerate(req.messages):
        messages.extend(_user_turn(m, i) if m.role == "user" else [_assistant_turn(m, i)])
    tools = None
    if req.tools:
        tools = []
        for k, t in enumerate(req.tools):
            if t.type not in (None, "custom"):
                raise _refuse(f"tools[{k}]", f"the server tool {t.type!r}")
            fn: dict[str, Any] = {"name": t.name, "parameters": t.input_schema or {"type": "object", "properties": {}}}
            if t.description:
                fn["description"] = t.description
            tools.append({"type": "function", "function": fn})
    tool_choice: str | dict[str, Any] | None = None
    parallel = None
    if req.tool_choice is not None:
        tc = req.tool_choice
        if tc.type == "tool":
            if not tc.name:
                raise InvalidRequest("tool_choice of type 'tool' needs a name", param="tool_choice.name")
            tool_choice = {"type": "function", "function": {"name": tc.name}}
        else:
            tool_choice = {"auto": "auto", "any": "required", "none": "none"}[tc.type]
        if tc.disable_parallel_tool_use:
            parallel = False
    fields: dict[str, Any] = {
        "model": req.model, "messages": messages, "max_tokens": req.max_tokens, "temperature": req.temperature,
        "top_p": req.top_p, "stop": req.stop_sequences or None, "stream": req.stream,
        "stream_options": {"include_usage": True} if req.stream else None, "tools": tools,
        "tool_choice": tool_choice, "parallel_tool_calls": parallel, "response_format": response_format,
        "user": req.metadata.user_id if req.metadata else None,
        "switchyard": req.switchyard,
    }
    try:
        # convert re-checks the canonical constraints, so a request valid here is valid everywhere downstream
        return msgspec.convert({k: v for k, v in fields.items() if v is not None}, ChatRequest, from_attributes=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc).split(" - at ")[0]) from None


# ---- rendering ----------------------------------------------------------------------------------

def message_id(request_id: str) -> str:
    return "msg_" + request_id.removeprefix("req_")


def anthropic_usage(usage: Usage) -> dict[str, int]:
    """Canonical usage (prompt includes the cache) as Anthropic's (input excludes cache reads and writes)."""
    fresh = max(0, usage.prompt_tokens - usage.cached_tokens - usage.cache_creation_tokens)
    return {"input_tokens": fresh, "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": usage.cache_creation_tokens,
            "cache_read_input_tokens": usage.cached_tokens}


def _tool_input(arguments: str | None) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        value = arguments
    # Anthropic's tool_use.input must be an object; keep whatever the model produced rather than lose it
    return value if isinstance(value, dict) else {"arguments": value}


def _text_of(content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p.text or "" for p in content)


def render_message(resp: ChatResponse, request_id: str, model: str) -> dict[str, Any]:
    """A canonical response as Anthropic's ``message`` object (first choice; Anthropic has one)."""
    choice = resp.choices[0] if resp.choices else None
    content: list[dict[str, Any]] = []
    finish = None
    if choice is not None:
        finish = choice.finish_reason
        text = _text_of(choice.message.content) or choice.message.refusal or ""
        if text:
            content.append({"type": "text", "text": text})
        for k, call in enumerate(choice.message.tool_calls or ()):
            fn = call.function or FunctionCall()
            content.append({"type": "tool_use", "id": call.id or f"toolu_{k}", "name": fn.name or "",
                            "input": _tool_input(fn.arguments)})
    return {"id": message_id(request_id), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": STOP_REASONS.get(finish or "stop", "end_turn"),
            "stop_sequence": None, "usage": anthropic_usage(resp.usage)}


def render_error(info: ErrorInfo, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error envelope; the HTTP status stays ``info.status``."""
    message = info.message
    if info.status == 401 and info.code == "invalid_api_key":
        # Anthropic's own words, and how a key reaches this gateway: x-api-key (as the SDK sends it) or bearer
        message = ("x-api-key header is required" if message.startswith("You didn't") else "invalid x-api-key") + \
            ": send your Switchyard API key as 'x-api-key: <key>' or 'Authorization: Bearer <key>'."
    body: dict[str, Any] = {"type": "error",
                            "error": {"type": ERROR_TYPES.get(info.status, "api_error" if info.status >= 500
                                                              else "invalid_request_error"),
                                      "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


class MessagesStreamEncoder:
    """Canonical stream chunks → Anthropic stream events (SSE bytes) for one response.

    ``encode`` each chunk as it arrives (the first call also emits ``message_start``),
    then ``finish`` once (closes the open block, ``message_delta`` with stop reason and
    usage, ``message_stop``), or ``error`` if the upstream failed mid-stream.
    """

    def __init__(self, request_id: str, model: str, input_tokens: int = 0) -> None:
        self.request_id = request_id
        self.model = model
        self._input_tokens = input_tokens  # an estimate until the final usage arrives
        self._started = False
        self._open: int | None = None  # index of the open content block
        self._open_kind: str | None = None
        self._next_index = 0
        self._tool_blocks: dict[int, int] = {}  # canonical tool-call index → content-block index
        self._finish: str | None = None
        self._usage: Usage | None = None

    def serving(self, model: str) -> None:
        """The model that serves the response, named in ``message_start`` if that has not gone out yet."""
        if not self._started:
            self.model = model

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return sse_event("message_start", {"type": "message_start", "message": {
            "id": message_id(self.request_id), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open, self._open_kind = self._open, None, None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _open_block(self, kind: str, block: dict[str, Any]) -> tuple[bytes, int]:
        out = self._close()
        index = self._next_index
        self._next_index += 1
        self._open, self._open_kind = index, kind
        out += sse_event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": block})
        return out, index

    def _text(self, text: str) -> bytes:
        out = b""
        if self._open_kind != "text":
            out, _ = self._open_block("text", {"type": "text", "text": ""})
        return out + sse_event("content_block_delta", {"type": "content_block_delta", "index": self._open,
                                                       "delta": {"type": "text_delta", "text": text}})

    def _tool(self, call: ToolCall, position: int) -> bytes:
        out = b""
        key = call.index if call.index is not None else position
        fn = call.function or FunctionCall()
        if key not in self._tool_blocks:
            block = {"type": "tool_use", "id": call.id or f"toolu_{self.request_id[-8:]}_{key}",
                     "name": fn.name or "", "input": {}}
            out, self._tool_blocks[key] = self._open_block("tool", block)
        if fn.arguments:
            # Deltas go to the call's own block even if another opened since: blocks are addressed by index.
            out += sse_event("content_block_delta", {"type": "content_block_delta", "index": self._tool_blocks[key],
                                                     "delta": {"type": "input_json_delta",
                                                               "partial_json": fn.arguments}})
        return out

    def encode(self, chunk: StreamChunk) -> bytes:
        out = self._start()
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # Anthropic messages have one choice; the ingress never asks for more
            d = choice.delta
            if d.content:
                out += self._text(d.content)
            if d.refusal:
                out += self._text(d.refusal)
            for position, call in enumerate(d.tool_calls or ()):
                out += self._tool(call, position)
            if choice.finish_reason:
                self._finish = choice.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        return out

    def finish(self) -> bytes:
        out = self._start() + self._close()
        usage = anthropic_usage(self._usage) if self._usage is not None else \
            {"input_tokens": self._input_tokens, "output_tokens": 0}
        out += sse_event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": STOP_REASONS.get(self._finish or "stop",
                                                                                     "end_turn"),
                                                     "stop_sequence": None},
                                           "usage": usage})
        return out + sse_event("message_stop", {"type": "message_stop"})

    def error(self, info: ErrorInfo) -> bytes:
        """An in-stream ``error`` event: the stream ends without ``message_stop``, so clients see it failed."""
        return self._start() + sse_event("error", render_error(info))

    @staticmethod
    def ping() -> bytes:
        return sse_event("ping", {"type": "ping"})
