"""The built-in mock provider: deterministic answers, streams and vectors, with injectable faults."""

from __future__ import annotations

import math
import time

import pytest

from services.workers.adapters.mock import MockAdapter
from shared.canonical import EmbeddingRequest
from shared.errors import InvalidRequest, UpstreamBadResponse, UpstreamRateLimited, UpstreamUnavailable

from tests.support.adapters import chat, collect, finish_of, spec, target, text_of

MOCK = target("openai", "mock-1")


def mock(**options) -> MockAdapter:
    return MockAdapter(spec("mock", options=options))


def injectable() -> MockAdapter:
    """A mock whose catalog entry lets requests inject faults (``fault_injection: true``)."""
    return MockAdapter(spec("mock").model_copy(update={"fault_injection": True}))


async def test_stream_is_deterministic_and_matches_the_sync_answer():
    adapter = mock()
    request = chat("Tell me about switchyards")
    first = await collect(adapter.stream(request, MOCK, 5))
    second = await collect(adapter.stream(request, MOCK, 5))
    assert first == second
    sync = await adapter.complete(request, MOCK, 5)
    assert text_of(first) == sync.choices[0].message.content
    assert first[-1].usage == sync.usage and finish_of(first) == [sync.choices[0].finish_reason]
    assert first[0].choices[0].delta.role == "assistant" and len(first) > 5


async def test_different_requests_stream_differently():
    adapter = mock()
    a = text_of(await collect(adapter.stream(chat("one"), MOCK, 5)))
    b = text_of(await collect(adapter.stream(chat("two"), MOCK, 5)))
    assert a != b


async def test_output_cap_gives_length():
    chunks = await collect(mock().stream(chat("hi", max_tokens=3), MOCK, 5))
    assert finish_of(chunks) == ["length"] and chunks[-1].usage.completion_tokens == 3


async def test_embeddings_are_deterministic_unit_vectors():
    adapter = mock(embedding_dimensions=64)
    r1 = await adapter.embed(EmbeddingRequest(model="e", input=["alpha", "beta"]), MOCK, 5)
    r2 = await adapter.embed(EmbeddingRequest(model="e", input="alpha"), MOCK, 5)
    assert r1.data[0] == r2.data[0] and r1.data[0] != r1.data[1]
    assert len(r1.data[0]) == 64 and math.isclose(math.fsum(v * v for v in r1.data[0]), 1.0)
    r3 = await adapter.embed(EmbeddingRequest(model="e", input=[[1, 2, 3], [4]], dimensions=8), MOCK, 5)
    assert len(r3.data) == 2 and len(r3.data[1]) == 8 and r3.usage.prompt_tokens > 0


async def test_injected_status_fails_the_stream_before_any_chunk():
    request = chat(switchyard={"mock": {"status": 429, "retry_after": 3}})
    stream = injectable().stream(request, MOCK, 5)
    with pytest.raises(UpstreamRateLimited) as exc:
        await anext(stream)
    assert exc.value.retry_after == 3


async def test_injected_cut_breaks_off_mid_stream():
    seen = []
    with pytest.raises(UpstreamBadResponse, match="stream cut"):
        async for c in injectable().stream(chat(switchyard={"mock": {"cut_after": 2}}), MOCK, 5):
            seen.append(c)
    assert len(seen) == 2 and not any(c.usage for c in seen)  # two words, never the usage chunk


async def test_chunk_delay_spaces_the_stream():
    started = time.monotonic()
    chunks = await collect(injectable().stream(chat(max_tokens=5, switchyard={"mock": {"chunk_delay_ms": 20}}),
                                               MOCK, 5))
    assert time.monotonic() - started >= 0.02 * (len(chunks) - 3)  # no delay before the first or the closing two


async def test_provider_failure_rate_applies_to_streams_and_embeddings():
    adapter = mock(failure_rate=1.0, failure_status=503)
    with pytest.raises(UpstreamUnavailable):
        await collect(adapter.stream(chat(), MOCK, 5))
    with pytest.raises(UpstreamUnavailable):
        await adapter.embed(EmbeddingRequest(model="e", input="x"), MOCK, 5)


async def test_injected_faults_are_refused_unless_the_catalog_enables_them():
    with pytest.raises(InvalidRequest, match="fault injection is not enabled"):
        await mock().complete(chat(switchyard={"mock": {"status": 500}}), MOCK, 5)
