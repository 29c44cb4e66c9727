"""The built-in deterministic provider: the same request always gets the same answer, chunks and vectors.

Used when no provider key is configured, by tests and by demos. It honours
what clients ask of a chat model (``mock_chat``): tools and ``tool_choice``
(a call whose arguments are valid against the tool's schema; after a tool
result, a plain answer), ``response_format`` (JSON, valid against a given
schema), ``n``, ``stop``, the output cap (counted in the pieces it streams),
``logprobs``/``top_logprobs``; what it cannot honour is refused with a 400. Its embeddings
put similar texts close together (hashed words, trigrams and bigrams), so the
semantic cache can be exercised without a model. Latency and
failures can be injected per provider (catalog ``options``: ``latency_ms``,
``failure_rate``, ``failure_status``, ``seed``, ``embedding_dimensions``) or
per request through the ``switchyard.mock`` extension object, only on a
provider whose catalog entry says ``fault_injection: true`` (``latency_ms``,
``status``, ``retry_after``, ``content``, and for streams ``chunk_delay_ms``
and ``cut_after`` -- the number of content chunks after which the stream
breaks off without finishing).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import struct
from typing import Any, AsyncIterator

import msgspec

from services.workers.adapters.base import DEFAULT_EMBED_DIMENSIONS, classify, refuse, stream_cut
from services.workers.adapters.mock_chat import Answer, answer
from shared.canonical import (
    ChatRequest,
    ChatResponse,
    ChunkChoice,
    Delta,
    EmbeddingRequest,
    EmbeddingResponse,
    StreamChunk,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)
from shared.catalog import ProviderSpec
from shared.events import Target

_WORDS = ("switchyard routes every request along the right track with care speed and a clear record of "
          "what happened and what it cost").split()


def reply_for(request: ChatRequest, choice: int = 0) -> str:
    """Deterministic reply text (before ``stop`` and the output cap) for one choice of a request."""
    digest = hashlib.sha256(msgspec.json.encode(request.messages) + request.model.encode()
                            + (f":{choice}".encode() if choice else b"")).digest()
    n = 8 + digest[0] % 24
    words = [_WORDS[(digest[i % len(digest)] + i) % len(_WORDS)] for i in range(n)]
    return "Mock reply: " + " ".join(words) + "."


def _hashed(text: str, dimensions: int) -> list[float]:
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


_STOPWORDS = frozenset("a an and are as at be by can do does did for how i in is it its me my of on or please s "
                       "that the this to what whats with you your".split())
_FEATURE_CHARS = 20_000  # the mock reads this much of a text: its cost stays bounded on huge inputs


def _word(w: str) -> str:
    """A crude stem, enough for plurals to meet their singular."""
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def _features(text: str) -> dict[str, float]:
    """Content words, their character trigrams and word bigrams, weighted (the lexical core of an embedding)."""
    words = [_word(w) for w in re.findall(r"[a-z0-9]+", text[:_FEATURE_CHARS].lower()) if w not in _STOPWORDS]
    out: dict[str, float] = {}
    for w in words:
        out["w:" + w] = out.get("w:" + w, 0.0) + 1.0
        padded = f" {w} "
        for i in range(len(padded) - 2):
            out["t:" + padded[i:i + 3]] = out.get("t:" + padded[i:i + 3], 0.0) + 0.3
    for a, b in zip(words, words[1:]):
        out[f"b:{a} {b}"] = out.get(f"b:{a} {b}", 0.0) + 0.3
    return out


def vector_for(text: str, dimensions: int) -> list[float]:
    """A unit vector in which similar texts lie close: hashed lexical features (feature hashing with signs) plus
    a small share of the text's own hash, so equal texts embed equally and different ones differ (slightly, when
    they share every feature). Semantic-cache tests and the paraphrase measurement rely on the closeness."""
    raw = [0.0] * dimensions
    for feature, weight in _features(text).items():
        h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "big")
        raw[h % dimensions] += weight if (h >> 32) & 1 else -weight
    norm = math.sqrt(math.fsum(v * v for v in raw))
    exact = _hashed(text, dimensions)
    if norm == 0:
        return exact  # no words at all (punctuation, an empty string): only the hash says anything
    mixed = [v / norm + 0.02 * e for v, e in zip(raw, exact)]
    norm = math.sqrt(math.fsum(v * v for v in mixed))
    return [v / norm for v in mixed]


MAX_EMBEDDING_VALUES = 1_000_000  # inputs × dimensions of one request: the mock computes them on the event loop


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
        hints = (request.switchyard or {}).get("mock") or {}
        if hints and not self.spec.fault_injection:
            # Admission refuses these already; a request that reaches here anyway is refused the same way.
            raise refuse(self.spec.name, "switchyard.mock", "fault injection is not enabled for this provider "
                                                             "(catalog: fault_injection: true)")
        return hints

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

    def _answers(self, request: ChatRequest, hints: dict[str, Any]) -> tuple[list[Answer], Usage]:
        answers = answer(self.spec.name, request, reply_for, hints.get("content"))
        usage = Usage(prompt_tokens=estimate_prompt_tokens(request),
                      completion_tokens=sum(len(a.tokens) for a in answers))
        return answers, usage

    async def complete(self, request: ChatRequest, target: Target, timeout_s: float) -> ChatResponse:
        hints = self._hints(request)
        answers, usage = self._answers(request, hints)  # a request it cannot honour is refused before any wait
        await self._before(hints)
        return ChatResponse(model=target.upstream_model, choices=[a.choice() for a in answers], usage=usage)

    async def stream(self, request: ChatRequest, target: Target, timeout_s: float) -> AsyncIterator[StreamChunk]:
        hints = self._hints(request)
        answers, usage = self._answers(request, hints)
        await self._before(hints)
        delay = float(hints.get("chunk_delay_ms", 0)) / 1000
        cut_after = hints.get("cut_after")
        model = target.upstream_model
        sent = 0
        for a in answers:
            for delta, logprobs in a.deltas():
                if cut_after is not None and sent >= int(cut_after):
                    raise stream_cut(self.spec.name, f"broke off after {sent} chunks (injected)")
                if delay > 0 and sent:
                    await asyncio.sleep(delay)
                sent += 1
                yield StreamChunk(choices=[ChunkChoice(index=a.index, delta=delta, logprobs=logprobs)], model=model)
            yield StreamChunk(choices=[ChunkChoice(index=a.index, delta=Delta(),  # type: ignore[arg-type]
                                                   finish_reason=a.finish)], model=model)
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
        if len(texts) * dims > MAX_EMBEDDING_VALUES:
            raise refuse(self.spec.name, "dimensions", f"at most {MAX_EMBEDDING_VALUES} values per request "
                                                       f"(inputs × dimensions)")
        return EmbeddingResponse(model=target.upstream_model, data=[vector_for(t, dims) for t in texts],
                                 usage=Usage(prompt_tokens=sum(estimate_tokens(t) for t in texts)))

    async def aclose(self) -> None:
        return None
