"""OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama, TGI, Groq, Together, DeepSeek ...).

Registered for catalog types ``openai`` and ``openai-compatible``. The
canonical model *is* this wire format, so the request passes through with
three translations: Switchyard's own fields are removed; for OpenAI itself
``max_tokens`` becomes ``max_completion_tokens`` (reasoning models refuse the
former, every chat model accepts the latter); for other servers the
``developer`` role becomes ``system`` (their chat templates know only
system/user/assistant/tool) and OpenAI's stored-completion ``metadata`` is
not sent to them. ``logprobs``/``top_logprobs`` pass through and the answer's
log probabilities come back on each choice (and each stream increment). Streams always ask for the final usage chunk
(``stream_options.include_usage``); a server that never sends one (option
``stream_usage: false``) gets an estimate so nothing streams unbilled.

The wire structs and the stream decoder here are shared by the other
Chat Completions dialects (Azure, Mistral).
"""

from __future__ import annotations

from typing import Any

import msgspec

from services.workers.adapters.base import (
    HttpAdapter,
    SSEEvent,
    UpstreamRequest,
    estimated_usage,
    stream_cut,
    stream_error,
)
from shared.canonical import (
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    EmbeddingRequest,
    EmbeddingResponse,
    FunctionCall,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
)
from shared.errors import UpstreamBadResponse
from shared.events import Target

# ---- wire structs (lenient: unknown fields ignored, finish reasons kept as text until mapped) --------


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class WireUsage(msgspec.Struct):
    """Usage as the Chat Completions dialects report it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None
    prompt_cache_hit_tokens: int | None = None  # DeepSeek reports its cache this way

    def canonical(self) -> Usage:
        cached = (self.prompt_tokens_details.cached_tokens or 0) if self.prompt_tokens_details else 0
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=cached or self.prompt_cache_hit_tokens or 0,
            reasoning_tokens=(self.completion_tokens_details.reasoning_tokens or 0)
            if self.completion_tokens_details else 0,
        )


class _WireFunction(msgspec.Struct):
    name: str | None = None
    arguments: str | dict[str, Any] | None = None


class _WireToolCall(msgspec.Struct):
    id: str | None = None
    type: str | None = None
    function: _WireFunction | None = None
    index: int | None = None


class _WireMessage(msgspec.Struct):
    role: str | None = None
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[_WireToolCall] | None = None
    refusal: str | None = None


class _WireChoice(msgspec.Struct):
    index: int = 0
    message: _WireMessage | None = None
    delta: _WireMessage | None = None
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class _WireResponse(msgspec.Struct):
    choices: list[_WireChoice] = []
    id: str | None = None
    model: str | None = None
    usage: WireUsage | None = None
    system_fingerprint: str | None = None
    error: dict[str, Any] | None = None


class _WireEmbedding(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _WireEmbeddings(msgspec.Struct):
    data: list[_WireEmbedding]
    model: str | None = None
    usage: WireUsage | None = None


_response = msgspec.json.Decoder(_WireResponse)
_embeddings = msgspec.json.Decoder(_WireEmbeddings)
_encoder = msgspec.json.Encoder()

FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter",
          "function_call": "function_call"}
# Fields that are Switchyard's, not the provider's.
_OURS = ("switchyard",)


def _text(content: str | list[dict[str, Any]] | None) -> str | None:
    """Content as text; some servers (Mistral's reasoning models) answer with a list of typed chunks."""
    if content is None or isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if p.get("type") == "text")


def _tool_calls(calls: list[_WireToolCall] | None) -> list[ToolCall] | None:
    if not calls:
        return None
    out = []
    for c in calls:
        fn = None
        if c.function is not None:
            args = c.function.arguments
            if isinstance(args, dict):  # a few servers send an object; the canonical form is JSON text
                args = _encoder.encode(args).decode()
            fn = FunctionCall(name=c.function.name, arguments=args)
        out.append(ToolCall(id=c.id, type=c.type or "function", function=fn, index=c.index))
    return out


def finish_reason(provider: str, value: str | None, table: dict[str, str]) -> str | None:
    """A dialect's finish reason in canonical words; unknown ones end normally, ``error`` is a failure."""
    if value is None:
        return None
    if value == "error":
        raise UpstreamBadResponse(f"{provider} ended the generation with finish_reason 'error'")
    return table.get(value, "stop")


def parse_body(data: bytes, target: Target, provider: str = "openai", table: dict[str, str] = FINISH) \
        -> ChatResponse:
    """A Chat Completions response body in canonical form."""
    r = _response.decode(data)
    if r.error is not None:
        raise UpstreamBadResponse(f"{provider} answered 200 with an error: {r.error.get('message', '')}")
    if not r.choices:
        raise UpstreamBadResponse(f"{provider} answered without choices")
    choices = []
    for c in r.choices:
        m = c.message or _WireMessage()
        choices.append(Choice(index=c.index, finish_reason=finish_reason(provider, c.finish_reason, table),
                              message=Message(role="assistant", content=_text(m.content),
                                              tool_calls=_tool_calls(m.tool_calls), refusal=m.refusal),
                              logprobs=c.logprobs))
    return ChatResponse(model=r.model or target.upstream_model, choices=choices,
                        usage=r.usage.canonical() if r.usage else Usage(), provider_id=r.id,
                        system_fingerprint=r.system_fingerprint)


def request_body(request: ChatRequest, model: str) -> dict:
    """The canonical request as an OpenAI body for ``model`` (non-streaming)."""
    body = msgspec.to_builtins(request)
    for key in _OURS:
        body.pop(key, None)
    body["model"] = model
    body["stream"] = False
    body.pop("stream_options", None)
    return body


class ChatCompletionsDecoder:
    """``data: {chat.completion.chunk}`` events until ``data: [DONE]``."""

    def __init__(self, provider: str, request: ChatRequest, table: dict[str, str] = FINISH) -> None:
        self.provider = provider
        self.request = request
        self.table = table
        self.done = False
        self._usage_seen = False
        self._text: list[str] = []

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        if event.data.strip() == "[DONE]":
            self.done = True
            return []
        if not event.data.strip():
            return []
        wire = _response.decode(event.data)
        if wire.error is not None:
            err = wire.error
            raise stream_error(self.provider, str(err.get("type") or err.get("code") or "error"),
                               str(err.get("message") or err))
        out: list[StreamChunk] = []
        choices = []
        for c in wire.choices:
            d = c.delta or _WireMessage()
            text = _text(d.content)
            if text:
                self._text.append(text)
            calls = _tool_calls(d.tool_calls)
            for call in calls or ():
                if call.function and call.function.arguments:
                    self._text.append(call.function.arguments)
            choices.append(ChunkChoice(index=c.index, finish_reason=finish_reason(self.provider, c.finish_reason,
                                                                                  self.table),
                                       delta=Delta(role=d.role, content=text, tool_calls=calls, refusal=d.refusal),
                                       logprobs=c.logprobs))
        if choices:
            out.append(StreamChunk(choices=choices, model=wire.model))
        if wire.usage is not None:
            self._usage_seen = True
            out.append(StreamChunk(usage=wire.usage.canonical(), model=wire.model))
        return out

    def finish(self) -> list[StreamChunk]:
        if not self.done:
            raise stream_cut(self.provider, "ended without data: [DONE]")
        if self._usage_seen:
            return []
        return [StreamChunk(usage=estimated_usage(self.request, "".join(self._text)))]


class OpenAIAdapter(HttpAdapter):
    """``POST {base_url}/chat/completions`` and ``/embeddings`` with an optional bearer key."""

    default_base = "https://api.openai.com/v1"

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", **self.spec.headers}
        if self.api_key:
            h["authorization"] = f"Bearer {self.api_key}"
        return h

    def base(self) -> str:
        return (self.spec.base_url or self.default_base).rstrip("/")

    def query(self) -> dict[str, str] | None:
        """Query parameters every call carries (Azure's api-version)."""
        return None

    def chat_url(self, target: Target) -> str:
        return f"{self.base()}/chat/completions"

    def embed_url(self, target: Target) -> str:
        return f"{self.base()}/embeddings"

    def chat_body(self, request: ChatRequest, target: Target, stream: bool) -> dict[str, Any]:
        """The dialect's body; subclasses translate further."""
        body = request_body(request, target.upstream_model)
        if stream:
            body["stream"] = True
            if self.spec.options.get("stream_usage", True):
                body["stream_options"] = {"include_usage": True}
        if self.spec.type == "openai":
            if "max_tokens" in body:
                cap = body.pop("max_tokens")
                body.setdefault("max_completion_tokens", cap)  # when both are sent the canonical cap wins
        else:
            for m in body["messages"]:
                if m.get("role") == "developer":
                    m["role"] = "system"
            body.pop("metadata", None)  # OpenAI's stored-completion tags: bookkeeping other servers reject
        return body

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        return UpstreamRequest("POST", self.chat_url(target), self.headers(),
                               _encoder.encode(self.chat_body(request, target, stream=False)), self.query())

    def build_stream_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        return UpstreamRequest("POST", self.chat_url(target), {**self.headers(), "accept": "text/event-stream"},
                               _encoder.encode(self.chat_body(request, target, stream=True)), self.query())

    def parse_response(self, data: bytes, request: ChatRequest, target: Target) -> ChatResponse:
        return parse_body(data, target, self.spec.name)

    def stream_decoder(self, request: ChatRequest, target: Target) -> ChatCompletionsDecoder:
        return ChatCompletionsDecoder(self.spec.name, request)

    def embed_body(self, request: EmbeddingRequest, target: Target) -> dict[str, Any]:
        body = msgspec.to_builtins(request)
        body.pop("switchyard", None)
        body["model"] = target.upstream_model
        # Always floats upstream: the gateway re-encodes to the client's encoding_format.
        body["encoding_format"] = "float"
        return body

    def build_embed_request(self, request: EmbeddingRequest, target: Target) -> UpstreamRequest:
        return UpstreamRequest("POST", self.embed_url(target), self.headers(),
                               _encoder.encode(self.embed_body(request, target)), self.query())

    def parse_embed_response(self, data: bytes, request: EmbeddingRequest, target: Target) -> EmbeddingResponse:
        return parse_embeddings(data, target)


def parse_embeddings(data: bytes, target: Target) -> EmbeddingResponse:
    """An OpenAI-style embeddings list, put back in input order."""
    r = _embeddings.decode(data)
    vectors = [d.embedding for d in sorted(r.data, key=lambda d: d.index)]
    usage = Usage(prompt_tokens=r.usage.prompt_tokens) if r.usage else Usage()
    return EmbeddingResponse(model=r.model or target.upstream_model, data=vectors, usage=usage)
