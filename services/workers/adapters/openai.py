"""OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama, TGI, Groq, Together, DeepSeek ...)."""

from __future__ import annotations

import msgspec

from services.workers.adapters.base import HttpAdapter, UpstreamRequest
from shared.canonical import ChatRequest, ChatResponse, Choice, Usage
from shared.events import Target


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None

    def canonical(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=(self.prompt_tokens_details.cached_tokens or 0) if self.prompt_tokens_details else 0,
            reasoning_tokens=(self.completion_tokens_details.reasoning_tokens or 0)
            if self.completion_tokens_details else 0,
        )


class _Response(msgspec.Struct):
    choices: list[Choice]
    id: str | None = None
    model: str | None = None
    usage: _Usage | None = None
    system_fingerprint: str | None = None


_response = msgspec.json.Decoder(_Response)
_encoder = msgspec.json.Encoder()
# Fields that are Switchyard's, not the provider's.
_OURS = ("switchyard",)


def request_body(request: ChatRequest, model: str) -> dict:
    """The canonical request as an OpenAI body for ``model``."""
    body = msgspec.to_builtins(request)
    for key in _OURS:
        body.pop(key, None)
    body["model"] = model
    body["stream"] = False
    body.pop("stream_options", None)
    return body


def parse_body(data: bytes, target: Target) -> ChatResponse:
    r = _response.decode(data)
    return ChatResponse(model=r.model or target.upstream_model, choices=r.choices,
                        usage=r.usage.canonical() if r.usage else Usage(), provider_id=r.id,
                        system_fingerprint=r.system_fingerprint)


class OpenAIAdapter(HttpAdapter):
    """``POST {base_url}/chat/completions`` with a bearer key."""

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", **self.spec.headers}
        if self.api_key:
            h["authorization"] = f"Bearer {self.api_key}"
        return h

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        base = (self.spec.base_url or "https://api.openai.com/v1").rstrip("/")
        return UpstreamRequest("POST", f"{base}/chat/completions", self.headers(),
                               _encoder.encode(request_body(request, target.upstream_model)))

    def parse_response(self, data: bytes, target: Target) -> ChatResponse:
        return parse_body(data, target)
