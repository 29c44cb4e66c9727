"""Every adapter over real HTTP on loopback against its provider's fake: calls, streams, embeddings, faults."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from services.workers.adapters.mistral import MistralAdapter
from shared.canonical import Delta, EmbeddingRequest
from shared.catalog import ProviderSpec
from shared.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tests.fakes.providers import Fault, Reply

from tests.support.adapters import (
    FAKE_ROUTE,
    chat,
    collect,
    finish_of,
    fixture_bytes,
    make_adapter,
    target,
    text_of,
    tool_calls_of,
)

KINDS = ["openai", "openai-compatible", "azure", "mistral", "anthropic", "gemini", "bedrock"]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
TOOL_REPLY = Reply(text="", tool_calls=(("get_weather", {"city": "Paris", "unit": "celsius"}),
                                        ("get_weather", {"city": "Lyon"})), finish="tool_calls",
                   prompt_tokens=40, completion_tokens=22)


def route(kind: str) -> str:
    return FAKE_ROUTE.get(kind, kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_complete(kind, fake, client):
    fake.reply(route(kind), Reply(text="Sunny and 21 degrees.", prompt_tokens=30, completion_tokens=6))
    r = await make_adapter(kind, client, fake).complete(chat(max_tokens=50), target(kind), 5)
    assert r.choices[0].message.content == "Sunny and 21 degrees."
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (30, 6)


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_text(kind, fake, client):
    fake.reply(route(kind), Reply(text="Sunny and 21 degrees in Paris tomorrow.", prompt_tokens=30,
                                  completion_tokens=9))
    chunks = await collect(make_adapter(kind, client, fake).stream(chat(stream=True), target(kind), 5))
    assert len(chunks) > 4  # really streamed, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text_of(chunks) == "Sunny and 21 degrees in Paris tomorrow."
    assert finish_of(chunks) == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("kind", KINDS)
async def test_tool_calls_sync_and_streamed(kind, fake, client):
    fake.reply(route(kind), TOOL_REPLY)
    adapter = make_adapter(kind, client, fake)
    request = chat(tools=[WEATHER_TOOL])
    r = await adapter.complete(request, target(kind), 5)
    assert r.choices[0].finish_reason == "tool_calls"
    sync = [(c.function.name, json.loads(c.function.arguments)) for c in r.choices[0].message.tool_calls]
    chunks = await collect(adapter.stream(request, target(kind), 5))
    streamed = tool_calls_of(chunks)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed] == sync == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_weather", {"city": "Lyon"})]
    assert all(c.id for c in streamed) and finish_of(chunks) == ["tool_calls"]


@pytest.mark.parametrize("kind", ["anthropic", "bedrock"])
async def test_json_mode_through_a_forced_tool_comes_back_as_text(kind, fake, client):
    adapter = make_adapter(kind, client, fake)
    request = chat(response_format={"type": "json_object"})
    r = await adapter.complete(request, target(kind), 5)
    assert json.loads(r.choices[0].message.content) == {"answer": 42} and r.choices[0].finish_reason == "stop"
    chunks = await collect(adapter.stream(request, target(kind), 5))
    assert json.loads(text_of(chunks)) == {"answer": 42} and finish_of(chunks) == ["stop"]
    assert not tool_calls_of(chunks)


@pytest.mark.parametrize("kind", ["openai", "azure", "mistral", "gemini"])
async def test_embeddings(kind, fake, client):
    adapter = make_adapter(kind, client, fake)
    r = await adapter.embed(EmbeddingRequest(model="e", input=["alpha", "beta", "gamma"], dimensions=4),
                            target(kind, "embed-model"), 5)
    assert len(r.data) == 3 and all(len(v) == 4 for v in r.data)
    assert r.data[0] != r.data[1] and r.usage.prompt_tokens > 0


@pytest.mark.parametrize("kind", ["anthropic", "bedrock"])
async def test_providers_without_embeddings_refuse_by_name(kind, fake, client):
    with pytest.raises(InvalidRequest, match=f"{kind} does not offer embeddings"):
        await make_adapter(kind, client, fake).embed(EmbeddingRequest(model="e", input="x"), target(kind), 5)
    assert fake.requests_to(route(kind)) == []


async def test_what_goes_over_the_wire(fake, client):
    for kind in KINDS:
        await make_adapter(kind, client, fake).complete(chat(), target(kind), 5)
    assert fake.last("anthropic").headers["anthropic-version"] == "2023-06-01"
    assert fake.last("gemini").path == "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    assert "key" not in fake.last("gemini").query
    assert fake.last("azure").path == "/azure/openai/deployments/gpt4o-mini-prod/chat/completions"
    assert fake.last("azure").query["api-version"] == "2024-10-21"
    # the fake re-derived the SigV4 signature from the raw request and accepted it
    bedrock = fake.last("bedrock")
    assert bedrock.headers["authorization"].startswith("AWS4-HMAC-SHA256")
    assert json.loads(bedrock.body)["messages"][0]["content"] == [{"text": "What's the weather in Paris tomorrow?"}]


async def test_gemini_streams_with_alt_sse(fake, client):
    await collect(make_adapter("gemini", client, fake).stream(chat(), target("gemini"), 5))
    rec = fake.last("gemini")
    assert rec.path.endswith(":streamGenerateContent") and rec.query == {"alt": "sse"}


@pytest.mark.parametrize("kind", KINDS)
async def test_wrong_credentials_fail_over_as_auth_errors(kind, fake, client):
    kw = {"options": {"secret_access_key": "wrong"}} if kind == "bedrock" else {"api_key": "wrong-key"}
    adapter = make_adapter(kind, client, fake, **kw)
    with pytest.raises(UpstreamAuthFailed) as exc:
        await adapter.complete(chat(), target(kind), 5)
    assert exc.value.retryable and exc.value.info().outcome == "auth"
    with pytest.raises(UpstreamAuthFailed):
        await collect(adapter.stream(chat(), target(kind), 5))


async def test_bedrock_signature_problem_is_reported_by_the_fake(fake, client):
    adapter = make_adapter("bedrock", client, fake, options={"secret_access_key": "wrong"})
    with pytest.raises(UpstreamAuthFailed, match="403: InvalidSignatureException: The request signature we calculated"):
        await adapter.complete(chat(), target("bedrock"), 5)


# ---- faults ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_rate_limit_with_retry_after(kind, fake, client):
    fake.fail(route(kind), Fault(status=429, retry_after=7), times=2)
    adapter = make_adapter(kind, client, fake)
    with pytest.raises(UpstreamRateLimited) as exc:
        await adapter.complete(chat(), target(kind), 5)
    assert exc.value.retry_after == 7 and exc.value.retryable and exc.value.info().status == 429
    with pytest.raises(UpstreamRateLimited):  # before the first chunk, a stream fails the same way
        await collect(adapter.stream(chat(), target(kind), 5))
    assert (await adapter.complete(chat(), target(kind), 5)).choices  # the fault was consumed


@pytest.mark.parametrize("kind,status", [(k, 503) for k in KINDS] + [("anthropic", 529), ("openai", 500)])
async def test_server_errors_are_retryable_unavailability(kind, status, fake, client):
    fake.fail(route(kind), Fault(status=status))
    with pytest.raises(UpstreamUnavailable) as exc:
        await make_adapter(kind, client, fake).complete(chat(), target(kind), 5)
    assert exc.value.retryable and f"returned {status}" in exc.value.message


@pytest.mark.parametrize("kind", KINDS)
async def test_context_length(kind, fake, client):
    fake.fail(route(kind), Fault(status=400, kind="context_length"))
    with pytest.raises(ContextLengthExceeded) as exc:
        await make_adapter(kind, client, fake).complete(chat(), target(kind), 5)
    assert not exc.value.retryable and exc.value.info().code == "context_length_exceeded"


@pytest.mark.parametrize("kind", KINDS)
async def test_hang_is_a_timeout_sync_and_streaming(kind, fake, client):
    fake.fail(route(kind), Fault(hang=True), times=2)
    adapter = make_adapter(kind, client, fake)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await adapter.complete(chat(), target(kind), 0.3)
    with pytest.raises(UpstreamTimeout):
        await collect(adapter.stream(chat(), target(kind), 0.3))
    assert time.monotonic() - started < 2.0


async def test_latency_within_the_timeout_is_fine(fake, client):
    fake.fail("anthropic", Fault(latency_s=0.2))
    started = time.monotonic()
    r = await make_adapter("anthropic", client, fake).complete(chat(), target("anthropic"), 2)
    assert r.choices and time.monotonic() - started >= 0.2


async def test_a_slow_drip_stream_hits_the_total_deadline(fake, client):
    # every chunk arrives within the read timeout, but the whole stream takes longer than allowed
    fake.fail("openai", Fault(chunk_delay_s=0.15))
    fake.reply("openai", Reply(text="one two three four five six seven eight nine ten"))
    chunks = []
    with pytest.raises(UpstreamTimeout):
        async for c in make_adapter("openai", client, fake).stream(chat(), target("openai"), 0.5):
            chunks.append(c)
    assert 0 < len(chunks) < 10


@pytest.mark.parametrize("kind", KINDS)
async def test_malformed_bodies(kind, fake, client):
    fake.fail(route(kind), Fault(malformed=True), times=2)
    adapter = make_adapter(kind, client, fake)
    with pytest.raises(UpstreamBadResponse, match="unreadable"):
        await adapter.complete(chat(), target(kind), 5)
    with pytest.raises(UpstreamBadResponse):
        await collect(adapter.stream(chat(), target(kind), 5))


@pytest.mark.parametrize("abort", [False, True], ids=["clean-end", "dropped-connection"])
@pytest.mark.parametrize("kind", KINDS)
async def test_cut_streams_are_errors_after_the_chunks_already_sent(kind, abort, fake, client):
    fake.reply(route(kind), Reply(text="one two three four five six"))
    fake.fail(route(kind), Fault(cut_after=4, abort=abort))
    seen = []
    with pytest.raises(UpstreamBadResponse, match="stream cut") as exc:
        async for c in make_adapter(kind, client, fake).stream(chat(), target(kind), 5):
            seen.append(c)
    assert exc.value.retryable
    assert text_of(seen) and not any(c.usage for c in seen)  # partial text, never a usage chunk that looks final


@pytest.mark.parametrize("kind,error", [("openai", UpstreamUnavailable), ("azure", UpstreamUnavailable),
                                        ("mistral", UpstreamUnavailable), ("anthropic", UpstreamUnavailable),
                                        ("gemini", UpstreamUnavailable), ("bedrock", UpstreamRateLimited)])
async def test_provider_error_events_mid_stream(kind, error, fake, client):
    fake.reply(route(kind), Reply(text="one two three four five"))
    fake.fail(route(kind), Fault(error_after=4))
    seen = []
    with pytest.raises(error, match="mid-stream"):
        async for c in make_adapter(kind, client, fake).stream(chat(), target(kind), 5):
            seen.append(c)
    assert seen


async def test_unreachable_provider_is_unavailable(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    adapter = make_adapter("openai", client, base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        await adapter.complete(chat(), target("openai"), 2)
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        await collect(adapter.stream(chat(), target("openai"), 2))


async def test_closing_the_stream_early_stops_reading_upstream(fake, client):
    """A client that goes away must not keep us draining the provider's stream."""
    fake.fail("anthropic", Fault(chunk_delay_s=0.2))
    fake.reply("anthropic", Reply(text=" ".join(["word"] * 40)))
    stream = make_adapter("anthropic", client, fake).stream(chat(), target("anthropic"), 30)
    started = time.monotonic()
    first = await anext(stream)
    await stream.aclose()
    assert first.choices[0].delta == Delta(role="assistant", content="word")
    assert time.monotonic() - started < 2.0  # the 45 chunks × 0.2 s of the whole stream were not waited for
    # the pool is usable afterwards
    assert (await make_adapter("anthropic", client, fake).complete(chat(), target("anthropic"), 5)).choices


@pytest.mark.parametrize("kind,fixture,content_type", [
    ("openai", "openai/stream_tool_calls.sse", "text/event-stream"),
    ("anthropic", "anthropic/stream_tool_use.sse", "text/event-stream"),
    ("gemini", "gemini/stream_text.sse", "text/event-stream"),
    ("mistral", "mistral/stream_text.sse", "text/event-stream"),
])
async def test_recorded_provider_streams_replayed_over_http(kind, fixture, content_type, fake, client):
    fake.fail(route(kind), Fault(raw=fixture_bytes(fixture), content_type=content_type))
    chunks = await collect(make_adapter(kind, client, fake).stream(chat(), target(kind), 5))
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    assert finish_of(chunks)


async def test_timeouts_are_per_call_not_per_client(fake):
    # the worker's pooled client has a long default; the adapter must impose the call's own timeout
    async with httpx.AsyncClient(timeout=httpx.Timeout(60)) as client:
        fake.fail("gemini", Fault(hang=True))
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await make_adapter("gemini", client, fake).complete(chat(), target("gemini"), 0.2)
        assert time.monotonic() - started < 1.5


async def test_concurrent_streams_share_one_pool(fake, client):
    adapter = make_adapter("bedrock", client, fake)
    results = await asyncio.gather(*(collect(adapter.stream(chat(f"question {i}"), target("bedrock"), 5))
                                     for i in range(8)))
    assert all(text_of(r) == "Hello! How can I help you today?" for r in results)
    assert len(fake.requests_to("bedrock")) == 8


@pytest.mark.parametrize("kind", KINDS)
async def test_the_first_chunk_carries_the_first_token_not_just_a_role(kind, fake, client):
    """An empty opening chunk would fake a fast time-to-first-token and end the chance of fallback."""
    fake.reply(route(kind), Reply(text="Sunny tomorrow."))
    chunks = await collect(make_adapter(kind, client, fake).stream(chat(), target(kind), 5))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == "Sunny"


async def test_a_stream_that_fails_right_after_opening_has_sent_nothing(fake, client):
    fake.fail("anthropic", Fault(error_after=1))  # message_start, then an overloaded error event
    stream = make_adapter("anthropic", client, fake).stream(chat(), target("anthropic"), 5)
    with pytest.raises(UpstreamUnavailable):
        await anext(stream)  # the failure comes before any chunk, so another provider may still be tried


async def test_a_fault_can_ride_on_a_request_header(fake, client):
    """For systems under test in another process: the catalog's provider headers carry the fault."""
    spec = ProviderSpec(name="mistral", type="mistral", base_url=fake.base_url("mistral"), api_key="test-key",
                        headers={"x-fake-fault": json.dumps({"status": 429, "retry_after": 2})})
    with pytest.raises(UpstreamRateLimited) as exc:
        await MistralAdapter(spec, client).complete(chat(), target("mistral"), 5)
    assert exc.value.retry_after == 2
