"""Small helpers for the adapter tests: fixture files, adapter construction, stream collection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import msgspec

from services.workers.adapters import adapter_class
from services.workers.adapters.base import SSEEvent, SSEParser
from shared.canonical import ChatRequest, FunctionCall, Message, StreamChunk, ToolCall
from shared.catalog import ProviderSpec
from shared.events import Target

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
UPSTREAM_MODEL = {"openai": "gpt-4o-mini", "openai-compatible": "llama3.1:8b", "azure": "gpt4o-mini-prod",
                  "anthropic": "claude-sonnet-4-5-20250929", "gemini": "gemini-2.5-flash",
                  "mistral": "mistral-small-2506", "bedrock": "us.anthropic.claude-haiku-4-5-20251001-v1:0"}
# the fake route each adapter type talks to
FAKE_ROUTE = {"openai-compatible": "openai"}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


def sse_fixture(name: str) -> list[SSEEvent]:
    return SSEParser().feed_text(fixture_bytes(name).decode())


def canonical_request() -> ChatRequest:
    return msgspec.json.decode(fixture_bytes("canonical_request.json"), type=ChatRequest)


def chat(*messages: Message | str, **fields: Any) -> ChatRequest:
    """A chat request; bare strings are user messages."""
    msgs = [Message(role="user", content=m) if isinstance(m, str) else m for m in messages] or \
        [Message(role="user", content="What's the weather in Paris tomorrow?")]
    return ChatRequest(model=fields.pop("model", "m"), messages=msgs, **fields)


def spec(kind: str, *, base_url: str | None = None, api_key: str | None = "test-key", name: str | None = None,
         options: dict[str, Any] | None = None) -> ProviderSpec:
    return ProviderSpec(name=name or kind, type=kind, base_url=base_url, api_key=api_key, options=options or {})


def target(kind: str, upstream_model: str | None = None) -> Target:
    up = upstream_model or UPSTREAM_MODEL[kind]
    return Target(deployment=f"{kind}/{up}", provider=kind, model="m", upstream_model=up)


def make_adapter(kind: str, client: httpx.AsyncClient | None, fake: Any = None, **kw: Any):
    """An adapter of ``kind`` pointed at the fake (or at ``base_url``)."""
    options = dict(kw.pop("options", None) or {})
    if kind == "bedrock":
        options.setdefault("access_key_id", fake.aws_access_key if fake else "AKIDFAKE00000000")
        options.setdefault("secret_access_key", fake.aws_secret if fake else "fake-secret")
        options.setdefault("region", "us-east-1")
        options.setdefault("credential_chain", False)
    if "base_url" not in kw and fake is not None:
        kw["base_url"] = fake.base_url(FAKE_ROUTE.get(kind, kind))
    return adapter_class(kind)(spec(kind, options=options, **kw), client)


def decode_all(decoder: Any, events: list[Any]) -> list[StreamChunk]:
    out: list[StreamChunk] = []
    for e in events:
        out.extend(decoder.feed(e))
    out.extend(decoder.finish())
    return out


async def collect(stream: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [c async for c in stream]


def text_of(chunks: list[StreamChunk], index: int = 0) -> str:
    return "".join(c.delta.content or "" for ch in chunks for c in ch.choices if c.index == index)


def finish_of(chunks: list[StreamChunk]) -> list[str]:
    return [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason]


def tool_calls_of(chunks: list[StreamChunk]) -> list[ToolCall]:
    """Streamed tool-call deltas assembled the way an OpenAI client does: by index, arguments concatenated."""
    calls: dict[int, dict[str, Any]] = {}
    for ch in chunks:
        for c in ch.choices:
            for d in c.delta.tool_calls or ():
                slot = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                slot["id"] = slot["id"] or d.id
                if d.function:
                    slot["name"] = slot["name"] or d.function.name
                    slot["arguments"] += d.function.arguments or ""
    return [ToolCall(id=v["id"], function=FunctionCall(name=v["name"], arguments=v["arguments"]))
            for _, v in sorted(calls.items())]
