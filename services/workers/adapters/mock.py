"""The built-in deterministic provider: the same request always gets the same answer.

Used when no provider key is configured, by tests and by demos. Latency and
failures can be injected per provider (catalog ``options``: ``latency_ms``,
``failure_rate``, ``failure_status``, ``seed``) or per request through the
``switchyard.mock`` extension object (``latency_ms``, ``status``,
``retry_after``, ``content``).
"""

from __future__ import annotations

import asyncio
import hashlib
import random

import msgspec

from services.workers.adapters.base import classify
from shared.canonical import ChatRequest, ChatResponse, Choice, Message, Usage, estimate_prompt_tokens
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


class MockAdapter:
    """A provider that runs in-process."""

    def __init__(self, spec: ProviderSpec, client=None) -> None:
        self.spec = spec
        o = spec.options
        self.latency_s = float(o.get("latency_ms", 0)) / 1000
        self.failure_rate = float(o.get("failure_rate", 0.0))
        self.failure_status = int(o.get("failure_status", 503))
        self._rng = random.Random(o.get("seed", 7))

    async def complete(self, request: ChatRequest, target: Target, timeout_s: float) -> ChatResponse:
        hints = (request.switchyard or {}).get("mock") or {}
        latency = float(hints.get("latency_ms", self.latency_s * 1000)) / 1000
        if latency > 0:
            await asyncio.sleep(latency)
        status = hints.get("status")
        if status is None and self.failure_rate and self._rng.random() < self.failure_rate:
            status = self.failure_status
        if status is not None and int(status) >= 400:
            headers = {"retry-after": str(hints["retry_after"])} if "retry_after" in hints else {}
            raise classify(self.spec.name, int(status), f"mock failure {status}", headers)
        text, n = reply_for(request)
        text = hints.get("content", text)
        usage = Usage(prompt_tokens=estimate_prompt_tokens(request), completion_tokens=n)
        return ChatResponse(model=target.upstream_model,
                            choices=[Choice(index=0, message=Message(role="assistant", content=text),
                                            finish_reason="stop" if n < (request.output_cap() or 10**9) else "length")],
                            usage=usage)

    async def aclose(self) -> None:
        return None
