"""The built-in deterministic provider: the same request always gets the same answer, chunks and vectors.

Used when no provider key is configured, by tests and by demos. Latency and
failures can be injected per provider (catalog ``options``: ``latency_ms``,
``failure_rate``, ``failure_status``, ``seed``, ``embedding_dimensions``) or
per request through the ``switchyard.mock`` extension object (``latency_ms``,
``status``, ``retry_after``, ``content``, and for streams ``chunk_delay_ms``
and ``cut_after`` -- the number of content chunks after which the stream
breaks off without finishing).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import struct
from typing import Any, AsyncIterator

import msgspec

from services.workers.adapters.base import DEFAULT_EMBED_DIMENSIONS, classify, stream_cut
from shared.canonical import (
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    StreamChunk,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)
from shared.catalog import ProviderSpec
from shared.events import Target

_WORDS = ("switchyard routes every request along the right track with care speed and a clear record of "
          "what happened and what it cost").split()


def reply_for(request: ChatRequest) -> tuple[str, int]:
    """Deterministic reply text and completion-token count for a request."""
    digest = hashlib.sha256(msgspec.json.encode(request.messages) + request.model.encode()).digest()
    cap = request.output_cap() or 64
    n = min(cap, 8 + digest[0] % 24)
    words = [_WORDS[(digest[i % len(digest)] + i) % len(_WORDS)] for i in range(n)]
    return "Mock reply: " + " ".join(words) + ".", n


def vector_for(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from the text's hash: equal texts embed equally, different ones differ."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        raw.extend((v / 2**31) - 1.0 for v in struct.unpack(">8I", block))
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


class MockAdapter:
    """A provider that runs in-process."""

    def __init__(self, spec: ProviderSpec, client: Any = None) -> None:
        self.spec = spec
        o = spec.options
        self.latency_s = float(o.get("latency_ms", 0)) / 1000
        self.failure_rate = float(o.get("failure_rate", 0.0))
        self.failure_status = int(o.get("failure_status", 503))
        self.dimensions = int(o.get("embedding_dimensions", DEFAULT_EMBED_DIMENSIONS))
        self._rng = random.Random(o.get("seed", 7))

    def _hints(self, request: Any) -> dict[str, Any]:
        return (request.switchyard or {}).get("mock") or {}

    async def _before(self, hints: dict[str, Any]) -> None:
        """Injected latency and failures, shared by every call."""
        latency = float(hints.get("latency_ms", self.latency_s * 1000)) / 1000
        if latency > 0:
            await asyncio.sleep(latency)
        status = hints.get("status")
        if status is None and self.failure_rate and self._rng.random() < self.failure_rate:
            status = self.failure_status
        if status is not None and int(status) >= 400:
            headers = {"retry-after": str(hints["retry_after"])} if "retry_after" in hints else {}
            raise classify(self.spec.name, int(status), f"mock failure {status}", headers)

    def _answer(self, request: ChatRequest, hints: dict[str, Any]) -> tuple[str, Usage, str]:
        text, n = reply_for(request)
        text = hints.get("content", text)
        finish = "stop" if n < (request.output_cap() or 10**9) else "length"
        return text, Usage(prompt_tokens=estimate_prompt_tokens(request), completion_tokens=n), finish

    async def complete(self, request: ChatRequest, target: Target, timeout_s: float) -> ChatResponse:
        hints = self._hints(request)
        await self._before(hints)
        text, usage, finish = self._answer(request, hints)
        return ChatResponse(model=target.upstream_model,
                            choices=[Choice(index=0, message=Message(role="assistant", content=text),
                                            finish_reason=finish)],  # type: ignore[arg-type]
                            usage=usage)

    async def stream(self, request: ChatRequest, target: Target, timeout_s: float) -> AsyncIterator[StreamChunk]:
        hints = self._hints(request)
        await self._before(hints)
        text, usage, finish = self._answer(request, hints)
        delay = float(hints.get("chunk_delay_ms", 0)) / 1000
        cut_after = hints.get("cut_after")
        model = target.upstream_model
        words = text.split(" ")
        for i, word in enumerate(words):
            if cut_after is not None and i >= int(cut_after):
                raise stream_cut(self.spec.name, f"broke off after {i} chunks (injected)")
            if delay > 0 and i:
                await asyncio.sleep(delay)
            delta = Delta(role="assistant", content=word) if i == 0 else Delta(content=" " + word)
            yield StreamChunk(choices=[ChunkChoice(index=0, delta=delta)], model=model)
        yield StreamChunk(choices=[ChunkChoice(index=0, delta=Delta(), finish_reason=finish)],  # type: ignore
                          model=model)
        yield StreamChunk(usage=usage, model=model)

    async def embed(self, request: EmbeddingRequest, target: Target, timeout_s: float) -> EmbeddingResponse:
        hints = self._hints(request)
        await self._before(hints)
        inp = request.input
        # token-id inputs are hashed by their JSON form, so they embed deterministically too
        if isinstance(inp, str):
            texts = [inp]
        elif inp and isinstance(inp[0], int):
            texts = [msgspec.json.encode(inp).decode()]
        else:
            texts = [x if isinstance(x, str) else msgspec.json.encode(x).decode() for x in inp]
        dims = request.dimensions or self.dimensions
        return EmbeddingResponse(model=target.upstream_model, data=[vector_for(t, dims) for t in texts],
                                 usage=Usage(prompt_tokens=sum(estimate_tokens(t) for t in texts)))

    async def aclose(self) -> None:
        return None
