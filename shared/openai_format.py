"""OpenAI wire shapes Switchyard emits, rendered in one place (sync responses and job results alike)."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.canonical import Message, StreamChunk
from shared.events import CompletionSucceeded


def render_completion(event: CompletionSucceeded) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` object for a successful request, with a ``switchyard`` extension."""
    response = event.response
    body = {
        "id": completion_id(event.request_id),
        "object": "chat.completion",
        "created": int(event.ts),
        "model": event.target.model,
        "choices": [
            {"index": c.index, "message": render_message(c.message), "logprobs": None,
             "finish_reason": c.finish_reason}
            for c in response.choices
        ],
        "usage": response.usage.openai(),
    }
    if response.system_fingerprint is not None:
        body["system_fingerprint"] = response.system_fingerprint
    body["switchyard"] = switchyard_object(event)
    return body


def render_message(message: Message) -> dict[str, Any]:
    """One assistant message as OpenAI renders it (content always present, null when absent)."""
    out: dict = {"role": message.role, "content": message_text(message)}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": tc.id, "type": tc.type or "function",
             "function": {"name": tc.function.name if tc.function else None,
                          "arguments": tc.function.arguments if tc.function else None}}
            for tc in message.tool_calls
        ]
    if message.refusal is not None:
        out["refusal"] = message.refusal
    return out


def message_text(message: Message) -> str | None:
    """The text of a message, multi-part content joined."""
    if message.content is None or isinstance(message.content, str):
        return message.content
    return "".join(p.text for p in message.content if p.text)


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def render_chunk(request_id: str, created: int, model: str, chunk: StreamChunk) -> dict[str, Any]:
    """OpenAI's ``chat.completion.chunk`` for one canonical increment."""
    return {
        "id": completion_id(request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": c.index, "delta": msgspec.to_builtins(c.delta), "logprobs": None,
                     "finish_reason": c.finish_reason} for c in chunk.choices],
    }


def render_usage_chunk(event: CompletionSucceeded, created: int) -> dict[str, Any]:
    """The final chunk of ``stream_options.include_usage``: no choices, the usage (and Switchyard's object)."""
    return {
        "id": completion_id(event.request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": event.target.model,
        "choices": [],
        "usage": event.response.usage.openai(),
        "switchyard": switchyard_object(event),
    }


def switchyard_object(event: CompletionSucceeded) -> dict[str, Any]:
    """Switchyard's extension object: where the request ran and what it cost."""
    return {
        "request_id": event.request_id,
        "provider": event.target.provider,
        "deployment": event.target.deployment,
        "model": event.target.model,
        "attempts": event.attempt,
        "cost_usd": event.cost_usd,
    }


def render_embeddings(event: CompletionSucceeded) -> dict[str, Any]:
    """OpenAI's embedding list."""
    usage = event.response.usage
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(event.embeddings or [])],
        "model": event.target.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        "switchyard": switchyard_object(event),
    }


def model_list(names: list[str], owner_of: dict[str, str]) -> dict[str, Any]:
    """OpenAI's model list."""
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": owner_of.get(n, "switchyard")}
                     for n in names]}
