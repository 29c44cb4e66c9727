"""Mistral La Plateforme: a Chat Completions dialect with its own names, id rules and error bodies.

Translations: ``seed`` → ``random_seed``; ``max_completion_tokens`` →
``max_tokens``; ``developer`` → ``system``; image parts take the URL as a
plain string; tool-call ids from other providers are mapped to the nine
alphanumeric characters Mistral insists on (deterministically, so a call and
its result still match); ``stream_options`` is not sent (Mistral always puts
usage on its last chunk). Refused: ``logit_bias``, ``logprobs``, audio and file
parts, ``name`` on non-tool messages, the legacy ``function`` role.

Errors come as ``{"object": "error", "message": ..., "type", "code"}``,
``{"message": ...}``, ``{"detail": ...}`` or, for validation,
``{"message": {"detail": [{"loc", "msg"}]}}``; all are read by the base
error reader.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from services.workers.adapters.base import embedding_inputs, refuse, refuse_function_role, refuse_unsupported
from services.workers.adapters.openai import (
    FINISH,
    ChatCompletionsDecoder,
    OpenAIAdapter,
    parse_body,
)
from shared.canonical import ChatRequest, ChatResponse, EmbeddingRequest
from shared.events import Target

_MISTRAL_ID = re.compile(r"^[A-Za-z0-9]{9}\Z")
FINISH_MISTRAL = {**FINISH, "model_length": "length"}
_UNSUPPORTED = {
    "logit_bias": "token biasing",
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
}


def mistral_tool_id(tool_call_id: str) -> str:
    """Mistral rejects tool-call ids that are not 9 alphanumerics; map others stably."""
    if _MISTRAL_ID.match(tool_call_id):
        return tool_call_id
    return hashlib.sha256(tool_call_id.encode()).hexdigest()[:9]


def mistral_body(provider: str, request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    """The canonical request as a Mistral chat body."""
    refuse_function_role(provider, request)
    refuse_unsupported(provider, request, _UNSUPPORTED)
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(request.messages):
        if m.name and m.role != "tool":
            raise refuse(provider, f"messages[{i}].name", "participant names")
        out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        if isinstance(m.content, list):
            parts = []
            for j, p in enumerate(m.content):
                if p.type == "text":
                    parts.append({"type": "text", "text": p.text or ""})
                elif p.type == "image_url" and p.image_url and p.image_url.get("url"):
                    parts.append({"type": "image_url", "image_url": p.image_url["url"]})
                else:
                    raise refuse(provider, f"messages[{i}].content[{j}]", f"content parts of type {p.type!r}")
            out["content"] = parts
        elif m.content is not None:
            out["content"] = m.content
        elif m.role == "assistant" and m.refusal:
            out["content"] = m.refusal
        if m.tool_calls:
            out["tool_calls"] = [{"id": mistral_tool_id(c.id or f"call{i}{k}"), "type": "function",
                                  "function": {"name": c.function.name if c.function else None,
                                               "arguments": (c.function.arguments if c.function else None) or "{}"}}
                                 for k, c in enumerate(m.tool_calls)]
        if m.role == "tool":
            out["tool_call_id"] = mistral_tool_id(m.tool_call_id or "")
            if m.name:
                out["name"] = m.name
        messages.append(out)
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    cap = request.output_cap()
    for key, value in (("temperature", request.temperature), ("top_p", request.top_p), ("max_tokens", cap),
                       ("stop", request.stop), ("n", request.n), ("random_seed", request.seed),
                       ("presence_penalty", request.presence_penalty),
                       ("frequency_penalty", request.frequency_penalty), ("tools", request.tools),
                       ("tool_choice", request.tool_choice), ("parallel_tool_calls", request.parallel_tool_calls),
                       ("response_format", request.response_format)):
        if value is not None:
            body[key] = value
    return body


class MistralAdapter(OpenAIAdapter):
    """``POST {base_url}/chat/completions`` and ``/embeddings`` on La Plateforme."""

    default_base = "https://api.mistral.ai/v1"

    def chat_body(self, request: ChatRequest, target: Target, stream: bool) -> dict[str, Any]:
        return mistral_body(self.label, request, target.upstream_model, stream)

    def parse_response(self, data: bytes, request: ChatRequest, target: Target) -> ChatResponse:
        return parse_body(data, target, self.spec.name, FINISH_MISTRAL)

    def stream_decoder(self, request: ChatRequest, target: Target) -> ChatCompletionsDecoder:
        return ChatCompletionsDecoder(self.spec.name, request, FINISH_MISTRAL)

    def embed_body(self, request: EmbeddingRequest, target: Target) -> dict[str, Any]:
        body: dict[str, Any] = {"model": target.upstream_model, "input": embedding_inputs(self.label, request)}
        if request.dimensions is not None:
            body["output_dimension"] = request.dimensions
        return body
