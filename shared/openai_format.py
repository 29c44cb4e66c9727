"""OpenAI wire shapes Switchyard emits, rendered in one place (sync responses and job results alike)."""

from __future__ import annotations

from typing import Any

from shared.canonical import Message
from shared.events import CompletionSucceeded


def render_completion(event: CompletionSucceeded) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` object for a successful request, with a ``switchyard`` extension."""
    response = event.response
    body = {
        "id": f"chatcmpl-{event.request_id}",
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
    body["switchyard"] = {
        "request_id": event.request_id,
        "provider": event.target.provider,
        "deployment": event.target.deployment,
        "model": event.target.model,
        "attempts": event.attempt,
        "cost_usd": event.cost_usd,
    }
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


def model_list(names: list[str], owner_of: dict[str, str]) -> dict[str, Any]:
    """OpenAI's model list."""
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": owner_of.get(n, "switchyard")}
                     for n in names]}
