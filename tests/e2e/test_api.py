"""End to end through the whole pipeline (gateway → JetStream → policy → router → worker → audit), in-process,
against a real nats-server, with the official ``openai`` SDK as the client."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.support.api import poll_job, sdk, wait_trace
from tests.support.system import MEMBER_KEY, OTHER_TENANT_KEY
from tests.support.wait import eventually


async def provider_calls_in_flight(system) -> float:
    """The workers' provider calls in flight, read from /metrics."""
    text = (await system.http.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("switchyard_worker_in_flight{"))


async def test_chat_completion_via_openai_sdk(system):
    client = sdk(system)
    raw = await client.chat.completions.with_raw_response.create(
        model="mock-1", messages=[{"role": "user", "content": "Say hello"}])
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content.startswith("Mock reply:")
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert float(raw.headers["x-switchyard-overhead-ms"]) >= 0
    # Deterministic mock: the same request gets the same answer.
    again = await client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "Say hello"}])
    assert again.choices[0].message.content == resp.choices[0].message.content


async def test_models_list(system):
    models = await sdk(system).models.list()
    ids = {m.id for m in models.data}
    assert {"mock-1", "flaky-1", "resilient"} <= ids
    assert "gpt-4o" not in ids  # no OpenAI key configured: not offered


async def test_bad_key_is_401_in_openai_shape(system):
    with pytest.raises(openai.AuthenticationError) as exc:
        await sdk(system, key="sk-wrong").chat.completions.create(
            model="mock-1", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 401
    assert exc.value.body["code"] == "invalid_api_key"
    r = await httpx.AsyncClient().post(system.base_url + "/v1/chat/completions", json={})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_unknown_model_is_404(system):
    with pytest.raises(openai.NotFoundError) as exc:
        await sdk(system).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found"
    assert exc.value.body["param"] == "model"


@pytest.mark.parametrize("body, param", [
    ({"model": "mock-1", "messages": []}, "messages"),
    ({"model": "mock-1", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "mock-1", "messages": [{"role": "user", "content": "x"}], "temperature": 7}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}]}, None),
])
async def test_malformed_requests_are_400_naming_the_param(system, body, param):
    r = await system.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param


async def test_invalid_json_and_oversized_body(system):
    r = await system.http.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    big = b'{"model":"mock-1","messages":[{"role":"user","content":"' + b"a" * (5 * 1024 * 1024) + b'"}]}'
    r = await system.http.post("/v1/chat/completions", content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


async def test_too_many_messages_is_422(system):
    msgs = [{"role": "user", "content": "x"}] * (system.deps.settings.policy.max_messages + 1)
    r = await system.http.post("/v1/chat/completions", json={"model": "mock-1", "messages": msgs})
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages"


async def test_fallback_to_next_candidate_is_traced(system):
    client = sdk(system)
    raw = await client.chat.completions.with_raw_response.create(
        model="resilient", messages=[{"role": "user", "content": "fall back please"}])
    resp = raw.parse()
    assert resp.model == "mock-1"
    rid = raw.headers["x-request-id"]
    trace = await wait_trace(system, rid, "succeeded")
    outcomes = [(a["attempt"], a["provider"], a["outcome"]) for a in trace["attempts"]]
    assert outcomes == [(1, "mock-flaky", "failed"), (2, "mock", "success")]
    assert trace["cost_usd"] > 0


async def test_all_candidates_failing_is_502_with_every_reason(system):
    with pytest.raises(openai.APIStatusError) as exc:
        await sdk(system).chat.completions.create(model="flaky-1", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 502
    assert exc.value.body["code"] == "all_candidates_failed"
    assert "mock-flaky" in exc.value.body["message"]


async def test_sync_call_gives_up_at_deadline_but_request_is_recorded(system):
    r = await system.http.post("/v1/chat/completions", headers={"x-switchyard-timeout": "1"},
                               json={"model": "mock-1", "messages": [{"role": "user", "content": "slow"}],
                                     "switchyard": {"mock": {"latency_ms": 700}}})
    assert r.status_code == 200  # finished inside its deadline
    started = asyncio.get_running_loop().time()
    r = await system.http.post("/v1/chat/completions", headers={"x-switchyard-timeout": "0.3"},
                               json={"model": "slow-1", "messages": [{"role": "user", "content": "slow"}],
                                     "switchyard": {"mock": {"latency_ms": 600}}})
    elapsed = asyncio.get_running_loop().time() - started
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert elapsed < 1.0
    rid = r.headers["x-request-id"]
    trace = await wait_trace(system, rid, "expired")
    assert trace["error"]["code"] == "deadline_exceeded"
    assert [a["outcome"] for a in trace["attempts"]] == ["timeout"]


async def test_job_lifecycle_trace_and_ledger(system):
    r = await system.http.post("/v1/jobs", json={"model": "mock-1", "messages": [{"role": "user", "content": "job"}]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["id"].startswith("job_")
    done = await poll_job(system, job["id"])
    assert done["status"] == "completed"
    assert done["result"]["object"] == "chat.completion"
    assert done["result"]["choices"][0]["message"]["content"].startswith("Mock reply:")
    trace = await wait_trace(system, job["id"], "succeeded")
    assert [a["outcome"] for a in trace["attempts"]] == ["success"]
    ledger = (await system.http.get("/v1/ledger", params={"model": "mock-1"})).json()
    mine = [row for row in ledger["data"] if row["request_id"] == job["id"]]
    assert len(mine) == 1 and mine[0]["cost_usd"] == pytest.approx(trace["cost_usd"])
    assert ledger["totals"]["cost_usd"] >= mine[0]["cost_usd"]


async def test_job_is_invisible_to_another_tenant(system):
    r = await system.http.post("/v1/jobs", json={"model": "mock-1", "messages": [{"role": "user", "content": "mine"}]})
    job_id = r.json()["id"]
    other = {"authorization": f"Bearer {OTHER_TENANT_KEY}"}
    missing = await system.http.get("/v1/jobs/job_doesnotexist", headers=other)
    foreign = await system.http.get(f"/v1/jobs/{job_id}", headers=other)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["code"] == missing.json()["error"]["code"]
    await poll_job(system, job_id)
    trace = await system.http.get(f"/v1/requests/{job_id}", headers=other)
    assert trace.status_code == 404
    ledger = (await system.http.get("/v1/ledger", headers=other)).json()
    assert all(row["request_id"] != job_id for row in ledger["data"])
    # Same tenant, other team (member key) still sees it.
    same = await system.http.get(f"/v1/jobs/{job_id}", headers={"authorization": f"Bearer {MEMBER_KEY}"})
    assert same.status_code == 200


async def test_cancel_job(system):
    r = await system.http.post("/v1/jobs", json={"model": "slow-1", "messages": [{"role": "user", "content": "c"}],
                                                 "switchyard": {"mock": {"latency_ms": 1500}}})
    job_id = r.json()["id"]
    c = await system.http.post(f"/v1/jobs/{job_id}/cancel")
    assert c.status_code == 200, c.text
    assert c.json()["status"] == "cancelled"
    # Behaviour under test: nothing that comes later (the 1.5 s attempt ending upstream) reopens the job; this
    # sleep is the time given to such a late outcome, which must not arrive, not a wait for a state.
    await asyncio.sleep(2.0)
    final = await poll_job(system, job_id)
    assert final["status"] == "cancelled"
    trace = await wait_trace(system, job_id, "cancelled")
    assert trace["status"] == "cancelled"
    again = await system.http.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409


async def test_failed_job_carries_error(system):
    r = await system.http.post("/v1/jobs", json={"model": "flaky-1", "messages": [{"role": "user", "content": "f"}]})
    done = await poll_job(system, r.json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "all_candidates_failed"


async def test_unknown_request_and_route(system):
    r = await system.http.get("/v1/requests/req_nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await system.http.get("/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


async def test_ops_endpoints(system):
    assert (await system.http.get("/healthz")).status_code == 200
    ready = (await system.http.get("/readyz")).json()
    assert ready["ready"] and set(ready["targets"]) == {"audit", "policy", "router", "worker", "gateway"}
    metrics = (await system.http.get("/metrics")).text
    assert "switchyard_gateway_overhead_seconds_bucket" in metrics
    assert 'switchyard_requests_total{api="chat.completions",outcome="succeeded"}' in metrics
    assert "gen_ai_client_operation_duration_seconds" in metrics
    docs = await system.http.get("/openapi.json")
    assert "/v1/chat/completions" in docs.json()["paths"]


async def test_gateway_refuses_past_its_in_flight_limit(system):
    """Back-pressure: with one request waiting and a limit of one, the next gets 503 + Retry-After at once."""
    limits = system.deps.settings.gateway
    saved = limits.max_in_flight
    limits.max_in_flight = 1
    try:
        slow = asyncio.ensure_future(system.http.post("/v1/chat/completions", json={
            "model": "mock-1", "messages": [{"role": "user", "content": "slow"}],
            "switchyard": {"mock": {"latency_ms": 600}}}))
        # a worker calls the provider only after the gateway has started waiting on the request
        await eventually(lambda: provider_calls_in_flight(system), timeout=5, interval=0.01)
        started = asyncio.get_running_loop().time()
        r = await system.http.post("/v1/chat/completions", json={"model": "mock-1",
                                                                 "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert r.headers["retry-after"] == "1"
        assert asyncio.get_running_loop().time() - started < 0.5
        assert (await slow).status_code == 200
        job = await system.http.post("/v1/jobs", json={"model": "mock-1",
                                                       "messages": [{"role": "user", "content": "x"}]})
        assert job.status_code == 202  # jobs queue in the stream, not in the gateway
    finally:
        limits.max_in_flight = saved
