"""``POST /v1/embeddings`` through the pipeline with the official ``openai`` SDK, billed like completions."""

from __future__ import annotations

import openai
import pytest

from tests.support.api import sdk, wait_trace


async def test_embeddings_deterministic_and_billed(system):
    client = sdk(system)
    raw = await client.embeddings.with_raw_response.create(model="mock-embed-1", input=["alpha", "beta"])
    resp = raw.parse()
    assert [d.index for d in resp.data] == [0, 1]
    assert len(resp.data[0].embedding) > 8 and resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0
    again = await client.embeddings.create(model="mock-embed-1", input="alpha")
    assert again.data[0].embedding == resp.data[0].embedding
    rid = raw.headers["x-request-id"]
    trace = await wait_trace(system, rid, "succeeded")
    assert trace["cost_usd"] > 0
    ledger = (await system.http.get("/v1/ledger", params={"model": "mock-embed-1"})).json()
    assert any(r["request_id"] == rid for r in ledger["data"])


async def test_embeddings_refused_for_chat_only_model(system):
    with pytest.raises(openai.BadRequestError) as exc:
        await sdk(system).embeddings.create(model="mock-1", input="x")
    assert "embeddings" in exc.value.body["message"]


@pytest.mark.parametrize("body", [{"model": "mock-embed-1", "input": []},
                                  {"model": "mock-embed-1", "input": ["a", 1]},
                                  {"model": "mock-embed-1"}])
async def test_embeddings_bad_input(system, body):
    r = await system.http.post("/v1/embeddings", json=body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
