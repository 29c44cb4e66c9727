"""OpenAI's legacy text Completions (``POST /v1/completions``) wire shapes: parse in, render out, stream out.

Pure translation: the request becomes a canonical chat request of one user
message (so it is admitted, routed and billed like any chat completion), and
the answer is rendered as a ``text_completion``. Translated: ``prompt`` (a
string, or a list of one string), ``max_tokens`` (OpenAI's default of 16 when
absent), ``n``, ``stop``, ``temperature``, ``top_p``, the penalties,
``logit_bias``, ``seed``, ``user``, ``stream`` with ``stream_options``,
``echo`` (the prompt before the text), ``logprobs`` (an integer: that many
alternatives per token, rendered in the legacy ``tokens`` /
``token_logprobs`` / ``top_logprobs`` / ``text_offset`` shape). Refused with a
400 naming the parameter: several prompts in one request, token-id prompts,
``suffix`` (insertion), ``best_of`` above 1 (the schema says so).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from services.gateway.handlers import decode_body
from shared.canonical import ChatRequest, Message
from shared.errors import InvalidRequest
from shared.events import CompletionSucceeded
from shared.openai_format import message_text, switchyard_object

API = "completions"
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


class CompletionRequest(Struct, kw_only=True):
    """A legacy Completions request (unknown fields are ignored, as on the chat endpoint)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    prompt: str | list[str | int | list[int]]  # a string, strings, token ids or lists of them (only text is read)
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    echo: bool | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    suffix: str | None = None
    best_of: Annotated[int, Meta(ge=1, le=1)] | None = None  # only 1 (the default) is supported; use n
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None
    switchyard: dict[str, Any] | None = None


_decoder = msgspec.json.Decoder(CompletionRequest)


def parse(body: bytes, max_bytes: int) -> CompletionRequest:
    """Decode and check a legacy request; what it cannot carry is refused, naming the parameter."""
    req = decode_body(body, _decoder, max_bytes, "completions request")
    if isinstance(req.prompt, list):
        if not req.prompt or not all(isinstance(p, str) for p in req.prompt):
            raise InvalidRequest("prompt must be a string or a list of one string; token-id prompts cannot be read "
                                 "by every provider behind this gateway", param="prompt")
        if len(req.prompt) > 1:
            raise InvalidRequest("send one prompt per request (a list of several prompts is not supported)",
                                 param="prompt")
    if req.suffix:
        raise InvalidRequest("suffix (insertion) is not supported", param="suffix")
    return req


def prompt_of(req: CompletionRequest) -> str:
    return req.prompt if isinstance(req.prompt, str) else str(req.prompt[0])


def chat_request(req: CompletionRequest) -> ChatRequest:
    """The legacy request as a canonical chat request of one user message."""
    fields: dict[str, Any] = {
        "model": req.model, "messages": [Message(role="user", content=prompt_of(req))],
        "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS, "temperature": req.temperature, "top_p": req.top_p,
        "n": req.n, "stop": req.stop, "stream": req.stream, "stream_options": req.stream_options,
        "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
        "logit_bias": req.logit_bias, "seed": req.seed, "user": req.user, "switchyard": req.switchyard,
    }
    if req.logprobs is not None:
        fields.update(logprobs=True, top_logprobs=req.logprobs)
    return ChatRequest(**{k: v for k, v in fields.items() if v is not None})


def completion_id(request_id: str) -> str:
    return f"cmpl-{request_id}"


def logprobs(chat: dict[str, Any] | None, offset: int = 0) -> dict[str, Any] | None:
    """Chat log probabilities (``{"content": [...]}``) in the legacy shape."""
    if not chat or chat.get("content") is None:
        return None
    tokens, lps, tops, offsets = [], [], [], []
    for entry in chat["content"]:
        offsets.append(offset)
        offset += len(entry["token"])
        tokens.append(entry["token"])
        lps.append(entry["logprob"])
        tops.append({t["token"]: t["logprob"] for t in entry.get("top_logprobs") or ()})
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def render_completion(term: CompletionSucceeded, echo: str) -> dict[str, Any]:
    """The ``text_completion`` object (``echo``: the prompt, put before each choice's text)."""
    return {
        "id": completion_id(term.request_id), "object": "text_completion", "created": int(term.ts),
        "model": term.target.model,
        "choices": [{"text": echo + (message_text(c.message) or ""), "index": c.index,
                     "logprobs": logprobs(c.logprobs, len(echo)), "finish_reason": c.finish_reason}
                    for c in term.response.choices],
        "usage": usage(term),
        "switchyard": switchyard_object(term),
    }


def usage(term: CompletionSucceeded) -> dict[str, int]:
    u = term.response.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def render_chunk(request_id: str, created: int, model: str, index: int, text: str, finish_reason: str | None,
                 lp: dict[str, Any] | None) -> dict[str, Any]:
    """One legacy stream chunk: a choice's next text."""
    return {"id": completion_id(request_id), "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": index, "logprobs": lp, "finish_reason": finish_reason}]}


def render_usage_chunk(term: CompletionSucceeded, created: int) -> dict[str, Any]:
    """The final chunk of ``stream_options.include_usage``."""
    return {"id": completion_id(term.request_id), "object": "text_completion", "created": created,
            "model": term.target.model, "choices": [], "usage": usage(term), "switchyard": switchyard_object(term)}
