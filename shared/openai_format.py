"""OpenAI wire shapes Switchyard emits, rendered in one place (sync responses and job results alike)."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.events import CompletionSucceeded


def render_completion(event: CompletionSucceeded) -> dict[str, Any]:
    """OpenAI's ``chat.completion`` object, plus Switchyard's ``switchyard`` extension object."""
    r = event.response
    return {
        "id": "chatcmpl-" + event.request_id.split("_", 1)[-1],
        "object": "chat.completion",
        "created": int(event.ctx.received_at),
        "model": r.model or event.target.model,
        "choices": [msgspec.to_builtins(c) for c in r.choices],
        "usage": r.usage.openai(),
        "system_fingerprint": r.system_fingerprint,
        "switchyard": {
            "request_id": event.request_id,
            "provider": event.target.provider,
            "deployment": event.target.deployment,
            "model": event.target.model,
            "attempts": event.attempt,
            "cost_usd": event.cost_usd,
        },
    }


def model_list(names: list[str], owner_of: dict[str, str]) -> dict[str, Any]:
    """OpenAI's model list."""
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": owner_of.get(n, "switchyard")}
                     for n in names]}
