"""Ingress dialects: the wire shapes a client speaks, over one pipeline.

A dialect parses a client's body into the canonical ``ChatRequest`` (and, for
embeddings, the ``EmbeddingRequest`` the event carries) and renders terminal
events, errors and stream chunks back in that client's format. The gateway's
sync, streaming, deadline and cancellation logic is the same for all of them.
Legacy text completions (``POST /v1/completions``) are a chat request of one
user message; their dialect (``legacy_completions``) renders ``text_completion``
objects and chunks, and is made per request because ``echo`` needs the prompt.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from services.gateway import anthropic_format as anthropic
from services.gateway import handlers as h
from services.gateway import legacy_format as legacy
from shared.canonical import ChatRequest, EmbeddingRequest, StreamChunk, estimate_prompt_tokens
from shared.errors import ErrorInfo
from shared.events import ChunkMessage, CompletionRequested, CompletionSucceeded
from shared.openai_format import render_chunk, render_completion, render_embeddings, render_usage_chunk

_json = msgspec.json.Encoder()


class StreamEncoder(Protocol):
    """Turns one request's relayed chunks and its end into SSE bytes."""

    def chunk(self, message: ChunkMessage) -> bytes: ...

    def finish(self, term: CompletionSucceeded) -> bytes: ...

    def error(self, info: ErrorInfo) -> bytes: ...


class Dialect(Protocol):
    """One client wire format."""

    api: str

    def parse(self, body: bytes, max_bytes: int) -> tuple[ChatRequest, EmbeddingRequest | None]: ...

    def success(self, term: CompletionSucceeded) -> dict[str, Any]: ...

    def error_body(self, info: ErrorInfo, request_id: str | None) -> dict[str, Any]: ...

    def stream(self, event: CompletionRequested) -> StreamEncoder: ...


def _data(body: dict) -> bytes:
    return b"data: " + _json.encode(body) + b"\n\n"


class OpenAIStream:
    """``chat.completion.chunk`` events, the optional usage chunk, then ``[DONE]``."""

    def __init__(self, event: CompletionRequested) -> None:
        self.request_id = event.request_id
        self.created = int(event.ctx.received_at)
        self.include_usage = bool((event.request.stream_options or {}).get("include_usage"))

    def chunk(self, message: ChunkMessage) -> bytes:
        if not message.chunk.choices:
            return b""  # the provider's own usage chunk: ours comes from the terminal event
        return _data(render_chunk(self.request_id, self.created, message.model, message.chunk))

    def finish(self, term: CompletionSucceeded) -> bytes:
        usage = _data(render_usage_chunk(term, self.created)) if self.include_usage else b""
        return usage + b"data: [DONE]\n\n"

    def error(self, info: ErrorInfo) -> bytes:
        # An error object in the stream, and no [DONE]: the openai SDK raises instead of ending quietly.
        return _data(info.body())


class OpenAIChat:
    """OpenAI Chat Completions (``POST /v1/chat/completions``)."""

    api = "chat.completions"

    def parse(self, body: bytes, max_bytes: int) -> tuple[ChatRequest, None]:
        return h.parse_chat_request(body, max_bytes), None

    def success(self, term: CompletionSucceeded) -> dict[str, Any]:
        return render_completion(term)

    def error_body(self, info: ErrorInfo, request_id: str | None) -> dict[str, Any]:
        return info.body()

    def stream(self, event: CompletionRequested) -> StreamEncoder:
        return OpenAIStream(event)


class AnthropicStream:
    """Anthropic Messages stream events."""

    def __init__(self, event: CompletionRequested) -> None:
        # message_start goes out with the first chunk, so it can name the model that serves the request (the
        # client may have asked for an alias or ``auto``); its input_tokens are the prompt as measured for
        # admission, the count the provider bills (message_delta carries the settled usage at the end).
        self.encoder = anthropic.MessagesStreamEncoder(event.request_id, event.request.model,
                                                       input_tokens=estimate_prompt_tokens(event.request))

    def chunk(self, message: ChunkMessage) -> bytes:
        if message.model:
            self.encoder.serving(message.model)
        return self.encoder.encode(message.chunk)

    def finish(self, term: CompletionSucceeded) -> bytes:
        # The terminal event's usage is the settled one: it is what the client is billed for.
        self.encoder.encode(StreamChunk(usage=term.response.usage))
        return self.encoder.finish()

    def error(self, info: ErrorInfo) -> bytes:
        return self.encoder.error(info)


class AnthropicMessages:
    """Anthropic Messages (``POST /v1/messages``), routed to any provider."""

    api = "messages"

    def parse(self, body: bytes, max_bytes: int) -> tuple[ChatRequest, None]:
        return anthropic.parse_messages_request(body, max_bytes), None

    def success(self, term: CompletionSucceeded) -> dict[str, Any]:
        body = anthropic.render_message(term.response, term.request_id, term.target.model)
        return body

    def error_body(self, info: ErrorInfo, request_id: str | None) -> dict[str, Any]:
        return anthropic.render_error(info, request_id)

    def stream(self, event: CompletionRequested) -> StreamEncoder:
        return AnthropicStream(event)


class OpenAIEmbeddings:
    """OpenAI Embeddings (``POST /v1/embeddings``): synchronous only."""

    api = "embeddings"

    def parse(self, body: bytes, max_bytes: int) -> tuple[ChatRequest, EmbeddingRequest]:
        # The inputs as a prompt, for admission and redaction; the request itself, for the provider.
        embedding = h.parse_embedding_request(body, max_bytes)
        return h.embedding_prompt(embedding), embedding

    def success(self, term: CompletionSucceeded) -> dict[str, Any]:
        return render_embeddings(term)

    def error_body(self, info: ErrorInfo, request_id: str | None) -> dict[str, Any]:
        return info.body()

    def stream(self, event: CompletionRequested) -> StreamEncoder:
        raise NotImplementedError("embeddings do not stream")


class LegacyStream:
    """Legacy ``text_completion`` chunks (the prompt first when echoing), the optional usage chunk, ``[DONE]``."""

    def __init__(self, dialect: "LegacyCompletions", event: CompletionRequested) -> None:
        self.dialect = dialect
        self.request_id = event.request_id
        self.created = int(event.ctx.received_at)
        self.include_usage = bool((event.request.stream_options or {}).get("include_usage"))
        self.echoed: set[int] = set()

    def chunk(self, message: ChunkMessage) -> bytes:
        out = b""
        for c in message.chunk.choices:
            text = c.delta.content or ""
            if self.dialect.echo and c.index not in self.echoed:
                self.echoed.add(c.index)
                text = self.dialect.prompt + text
            if not text and c.finish_reason is None:
                continue
            out += _data(legacy.render_chunk(self.request_id, self.created, message.model, c.index, text,
                                             c.finish_reason, legacy.logprobs(c.logprobs)))
        return out

    def finish(self, term: CompletionSucceeded) -> bytes:
        usage = _data(legacy.render_usage_chunk(term, self.created)) if self.include_usage else b""
        return usage + b"data: [DONE]\n\n"

    def error(self, info: ErrorInfo) -> bytes:
        return _data(info.body())


class LegacyCompletions:
    """OpenAI's legacy Completions (``POST /v1/completions``): one instance per request (it keeps the prompt)."""

    api = legacy.API

    def __init__(self) -> None:
        self.prompt = ""
        self.echo = False

    def parse(self, body: bytes, max_bytes: int) -> tuple[ChatRequest, None]:
        req = legacy.parse(body, max_bytes)
        self.prompt, self.echo = legacy.prompt_of(req), bool(req.echo)
        return legacy.chat_request(req), None

    def success(self, term: CompletionSucceeded) -> dict[str, Any]:
        return legacy.render_completion(term, self.prompt if self.echo else "")

    def error_body(self, info: ErrorInfo, request_id: str | None) -> dict[str, Any]:
        return info.body()

    def stream(self, event: CompletionRequested) -> StreamEncoder:
        return LegacyStream(self, event)


def legacy_completions() -> LegacyCompletions:
    """The dialect of one legacy completions request."""
    return LegacyCompletions()


OPENAI = OpenAIChat()
EMBEDDINGS = OpenAIEmbeddings()
ANTHROPIC = AnthropicMessages()
