"""Streaming end to end: OpenAI SSE through the pipeline, fallback before the first chunk only, cut streams
surfaced as errors, and a client disconnect that cancels upstream and is billed once."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.api import sdk, wait_trace
from tests.support.wait import eventually

MSG = [{"role": "user", "content": "stream to me"}]


async def ledger_rows(system, request_id: str) -> list[dict]:
    data = (await system.http.get("/v1/ledger", params={"limit": 1000})).json()["data"]
    return [r for r in data if r["request_id"] == request_id]


async def test_stream_matches_non_stream_and_ends_with_usage(system):
    client = sdk(system)
    whole = await client.chat.completions.create(model="mock-1", messages=MSG)
    stream = await client.chat.completions.create(model="mock-1", messages=MSG, stream=True,
                                                  stream_options={"include_usage": True})
    text, finish, usage, ids = [], None, None, set()
    async for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text) == whole.choices[0].message.content
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert len(ids) == 1


async def test_time_to_first_token_is_in_the_trace(system):
    raw = await sdk(system).chat.completions.with_raw_response.create(
        model="mock-1", messages=MSG, stream=True, extra_body={"switchyard": {"mock": {"latency_ms": 40}}})
    [c async for c in raw.parse()]
    trace = await wait_trace(system, raw.headers["x-request-id"], "succeeded")
    [attempt] = trace["attempts"]
    assert attempt["ttft_ms"] is not None and attempt["ttft_ms"] >= 40
    assert attempt["latency_ms"] >= attempt["ttft_ms"]
    metrics = (await system.http.get("/metrics")).text
    assert 'switchyard_time_to_first_token_seconds_count{gen_ai_provider_name="mock"}' in metrics


async def test_stream_falls_back_before_first_chunk(system):
    stream = await sdk(system).chat.completions.create(model="resilient", messages=MSG, stream=True)
    chunks = [c async for c in stream]
    assert chunks and chunks[0].model == "mock-1"


async def test_stream_failing_before_output_gets_a_status(system):
    with pytest.raises(openai.APIStatusError) as exc:
        await sdk(system).chat.completions.create(model="flaky-1", messages=MSG, stream=True)
    assert exc.value.status_code == 502


async def test_cut_upstream_stream_is_an_error_not_a_silent_end(system):
    raw = await sdk(system).chat.completions.with_raw_response.create(
        model="resilient", messages=MSG, stream=True, extra_body={"switchyard": {"mock": {"cut_after": 3}}})
    rid = raw.headers["x-request-id"]
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in raw.parse():
            got.append(chunk)
    assert "stream" in str(exc.value).lower()
    assert got, "some chunks arrived before the cut"
    trace = await wait_trace(system, rid, "failed")
    # the flaky candidate failed before any output (fallback allowed), the mock broke mid-stream (no fallback)
    assert [a["outcome"] for a in trace["attempts"]] == ["failed", "stream_broken"]
    rows = await ledger_rows(system, rid)
    assert len(rows) == 1 and rows[0]["cost_usd"] > 0 and rows[0]["completion_tokens"] > 0


async def test_client_disconnect_cancels_upstream_and_bills_once(system):
    body = {"model": "mock-1", "messages": MSG, "stream": True,
            "switchyard": {"mock": {"chunk_delay_ms": 150}}}
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body,
                               headers={"authorization": system.http.headers["authorization"]}) as resp:
            assert resp.status_code == 200
            rid = resp.headers["x-request-id"]
            lines = 0
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    lines += 1
                if lines >= 3:
                    break  # leave mid-stream
    trace = await wait_trace(system, rid, "cancelled")
    assert [a["outcome"] for a in trace["attempts"]] == ["cancelled"]
    rows = await eventually(lambda: ledger_rows(system, rid), message=f"a ledger row for {rid}")
    assert len(rows) == 1
    assert rows[0]["completion_tokens"] > 0 and rows[0]["cost_usd"] > 0


async def test_streams_add_no_subscription_per_request(system):
    # Chunks reach the gateway through one wildcard subscription per instance, cancels the workers through one
    # per process: streaming requests leave the connection's subscriptions as they were, and so the server's.
    client = sdk(system)
    nc = system.deps.bus.nc
    before = len(nc._subs)
    for _ in range(5):
        stream = await client.chat.completions.create(model="mock-1", messages=MSG, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert len(nc._subs) == before
