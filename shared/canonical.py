"""The canonical chat model every provider adapter translates to and from.

It is shaped after OpenAI's Chat Completions wire format (the gateway's public
API), so an OpenAI request decodes straight into it; other providers'
adapters translate. Structs are msgspec, decoded once at the gateway and then
carried inside events.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ContentPart(Struct, kw_only=True, omit_defaults=True):
    """One part of a multi-part message: text, an image, or audio/file passed through."""

    type: str
    text: str | None = None
    image_url: dict[str, Any] | None = None
    input_audio: dict[str, Any] | None = None
    file: dict[str, Any] | None = None


class FunctionCall(Struct, kw_only=True, omit_defaults=True):
    """A function name and its JSON-encoded arguments."""

    name: str | None = None
    arguments: str | None = None


class ToolCall(Struct, kw_only=True, omit_defaults=True):
    """A tool call produced by the model (also used for streamed deltas, where fields arrive piecemeal)."""

    id: str | None = None
    type: str | None = "function"
    function: FunctionCall | None = None
    index: int | None = None


class Message(Struct, kw_only=True, omit_defaults=True):
    """One chat message."""

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class ChatRequest(Struct, kw_only=True, omit_defaults=True):
    """A chat completion request (OpenAI's fields; unknown fields are ignored)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    # Switchyard's extension object (routing hints); ignored by OpenAI itself.
    switchyard: dict[str, Any] | None = None

    def output_cap(self) -> int | None:
        """The output-token cap the client asked for, whichever field carried it."""
        return self.max_completion_tokens or self.max_tokens


class Usage(Struct, kw_only=True, omit_defaults=False):
    """Token usage of one attempt, in canonical units."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def openai(self) -> dict[str, Any]:
        """OpenAI's usage object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


class Choice(Struct, kw_only=True):
    """One generated alternative."""

    index: int = 0
    message: Message
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None  # OpenAI's ``{"content": [{token, logprob, bytes, top_logprobs}]}``


class ChatResponse(Struct, kw_only=True, omit_defaults=True):
    """A provider's answer in canonical form."""

    model: str
    choices: list[Choice]
    usage: Usage = msgspec.field(default_factory=Usage)
    provider_id: str | None = None
    system_fingerprint: str | None = None


class Delta(Struct, kw_only=True, omit_defaults=True):
    """The increment one stream chunk adds to a choice."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class ChunkChoice(Struct, kw_only=True):
    """One choice's increment in a stream chunk."""

    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None  # the log probabilities of this increment's tokens, when asked for


class StreamChunk(Struct, kw_only=True, omit_defaults=True):
    """A canonical streaming increment; the provider's final usage arrives as a chunk with ``usage`` set."""

    choices: list[ChunkChoice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    model: str | None = None


def prompt_text(request: ChatRequest) -> str:
    """The text of the messages' contents, concatenated (what a reader of the conversation sees)."""
    parts: list[str] = []
    for m in request.messages:
        if isinstance(m.content, str):
            parts.append(m.content)
        elif m.content:
            parts.extend(p.text for p in m.content if p.text)
    return "\n".join(parts)


CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4  # the role and the chat template's delimiters around each message
IMAGE_TOKENS_LOW = 85  # an image at ``detail: "low"``: OpenAI's fixed price for one
# Any other image: about the most one image costs on the providers (Anthropic bills up to ~1,600 for an image at
# its size cap; OpenAI's high-detail tiles and Gemini's 258 a tile stay below).
IMAGE_TOKENS = 1_600

_json = msgspec.json.Encoder()


class PromptSize(Struct, frozen=True):
    """What a request sends upstream: ``chars`` of text, and the estimated ``tokens`` the provider will bill."""

    chars: int
    tokens: int


def _parts_size(parts: list[ContentPart]) -> tuple[int, int, int]:
    """(text characters, text pieces, fixed media tokens) of a multi-part content."""
    chars = pieces = media = 0
    for p in parts:
        if p.text:
            chars += len(p.text)
            pieces += 1
        elif p.image_url is not None:
            media += IMAGE_TOKENS_LOW if p.image_url.get("detail") == "low" else IMAGE_TOKENS
        elif p.file is not None or p.input_audio is not None:
            # Files (PDFs) and audio are billed by the provider's own reckoning of their content; counting
            # their encoded size as text over-estimates, never under-estimates, what they can cost.
            chars += len(_json.encode(p.file if p.file is not None else p.input_audio))
            pieces += 1
    return chars, pieces, media


def measure_prompt(request: ChatRequest) -> PromptSize:
    """Everything the request sends upstream, measured once: the one count behind ``max_prompt_chars``, the
    context-length check, the tokens counted against TPM and the budget reservation.

    Characters: the text of every message of every role (contents, text parts, names, refusals), the
    arguments and names of tool calls, file and audio parts at their encoded size, the tool definitions,
    ``tool_choice``, ``response_format`` and ``stop`` (as the JSON sent). Tokens: characters at
    ``CHARS_PER_TOKEN``, plus ``MESSAGE_OVERHEAD_TOKENS`` a message, plus a fixed cost per image
    (``IMAGE_TOKENS_LOW`` at detail "low", ``IMAGE_TOKENS`` otherwise) whatever its encoded size.
    A request of plain string messages measures exactly as ``prompt_text`` reads it.
    """
    chars = pieces = media = 0
    for m in request.messages:
        if isinstance(m.content, str):
            chars += len(m.content)
            pieces += 1
        elif m.content:
            c, n, media_tokens = _parts_size(m.content)
            chars, pieces, media = chars + c, pieces + n, media + media_tokens
        if m.name:
            chars += len(m.name)
        if m.refusal:
            chars += len(m.refusal)
        for call in m.tool_calls or ():
            fn = call.function
            if fn is not None:
                chars += len(fn.name or "") + len(fn.arguments or "")
    chars += max(0, pieces - 1)  # the newlines ``prompt_text`` joins the pieces with
    for extra in (request.tools, request.tool_choice, request.response_format, request.stop):
        if extra:
            chars += len(extra) if isinstance(extra, str) else len(_json.encode(extra))
    text_tokens = max(1, (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)
    return PromptSize(chars=chars, tokens=text_tokens + media + MESSAGE_OVERHEAD_TOKENS * len(request.messages))


def estimate_tokens(text: str) -> int:
    """A cheap, provider-neutral token estimate (~4 characters a token), used before the provider counts."""
    return max(1, (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Estimated prompt tokens of everything the request sends upstream (``measure_prompt``)."""
    return measure_prompt(request).tokens


# The widest embedding any provider offers is a few thousand dimensions; a larger ask is a mistake or an attempt
# to make a provider (the in-process mock above all) compute and ship huge vectors.
MAX_EMBEDDING_DIMENSIONS = 8192


class EmbeddingRequest(Struct, kw_only=True, omit_defaults=True):
    """An embeddings request (OpenAI's fields)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    # text, texts, token ids, or lists of token ids; never empty
    input: Annotated[str, Meta(min_length=1)] | Annotated[list[str | int | list[int]], Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1, le=MAX_EMBEDDING_DIMENSIONS)] | None = None
    user: str | None = None
    switchyard: dict[str, Any] | None = None


class EmbeddingResponse(Struct, kw_only=True):
    """Embedding vectors in input order, with usage."""

    model: str
    data: list[list[float]]
    usage: Usage = msgspec.field(default_factory=Usage)
