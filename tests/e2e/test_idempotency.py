"""``Idempotency-Key`` end to end: a retry returns the first call's answer and the provider is called once.

Against a real nats-server and a fake OpenAI upstream that counts its calls; two gateways share the key store,
so concurrent retries through both still run once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from services.gateway.settings import GatewaySettings
from shared.natsd import free_port
from tests.support.system import OTHER_TENANT_KEY, start_replica
from tests.support.upstream import system_on_fake_upstream
from tests.support.wait import eventually

CHAT = {"model": "up-1", "messages": [{"role": "user", "content": "hello"}]}


def keyed(key: str) -> dict[str, str]:
    return {"idempotency-key": key}


@pytest.fixture
async def upstream(tmp_path: Path):
    async with system_on_fake_upstream(tmp_path) as (system, fakes):
        yield system, fakes


def calls(fakes) -> int:
    return len(fakes.requests_to("openai"))


async def test_a_retry_returns_the_first_answer_without_calling_the_provider_again(upstream):
    system, fakes = upstream
    http = system.http
    first = await http.post("/v1/chat/completions", json=CHAT, headers=keyed("retry-1"))
    assert first.status_code == 200, first.text
    before = calls(fakes)
    again = await http.post("/v1/chat/completions", json=CHAT, headers=keyed("retry-1"))
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert calls(fakes) == before

    # Another body with the same key: refused, nothing runs.
    other = await http.post("/v1/chat/completions", json={**CHAT, "temperature": 0.5}, headers=keyed("retry-1"))
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    # Another tenant's identical key is its own.
    theirs = await http.post("/v1/chat/completions", json=CHAT, headers={**keyed("retry-1"),
                                                                           "authorization": f"Bearer {OTHER_TENANT_KEY}"})
    assert theirs.status_code == 200 and theirs.headers["x-request-id"] != first.headers["x-request-id"]
    # Without the header every call runs.
    await http.post("/v1/chat/completions", json=CHAT)
    await http.post("/v1/chat/completions", json=CHAT)
    assert calls(fakes) == before + 3
    # A key that is no key: 400.
    bad = await http.post("/v1/chat/completions", json=CHAT, headers=keyed("x" * 300))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Idempotency-Key"


async def test_anthropic_messages_and_streams(upstream):
    system, fakes = upstream
    http = system.http
    msg = {**CHAT, "max_tokens": 16}
    a = await http.post("/v1/messages", json=msg, headers=keyed("m-1"))
    b = await http.post("/v1/messages", json=msg, headers=keyed("m-1"))
    assert a.status_code == b.status_code == 200 and a.json() == b.json()
    before = calls(fakes)
    # A streamed request runs once; a retry is not replayed as a stream but refused with its request id.
    streamed = await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=keyed("s-1"))
    assert streamed.status_code == 200 and "data:" in streamed.text
    retry = await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=keyed("s-1"))
    assert retry.status_code == 409 and retry.headers["x-request-id"] == streamed.headers["x-request-id"]
    assert calls(fakes) == before + 1


async def test_concurrent_retries_through_two_gateways_run_once(upstream, tmp_path: Path):
    system, fakes = upstream
    settings = system.deps.settings.model_copy(update={"gateway": GatewaySettings(port=free_port())})
    other = await start_replica(settings, "gateway")
    far = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.gateway.port}", timeout=30,
                            headers=dict(system.http.headers))
    try:
        before = calls(fakes)
        answers = await asyncio.gather(*(
            (system.http if i % 2 else far).post("/v1/chat/completions", json=CHAT, headers=keyed("race-1"))
            for i in range(8)))
        assert {r.status_code for r in answers} <= {200, 409}, [r.text for r in answers]
        assert len({r.headers["x-request-id"] for r in answers}) == 1
        assert calls(fakes) == before + 1
        # Once it has finished, every retry gets the answer.
        later = await far.post("/v1/chat/completions", json=CHAT, headers=keyed("race-1"))
        assert later.status_code == 200 and later.headers["idempotent-replayed"] == "true"

        # Jobs: a retried submission is the same job, through either gateway.
        jobs = await asyncio.gather(*(
            (system.http if i % 2 else far).post("/v1/jobs", json=CHAT, headers=keyed("job-1")) for i in range(4)))
        ids = {r.headers.get("x-request-id") for r in jobs}
        assert None not in ids, [(r.status_code, r.text) for r in jobs]
        assert len(ids) == 1 and {r.status_code for r in jobs} <= {202, 409}, [r.text for r in jobs]
        job_id = ids.pop()

        async def done() -> bool:
            return (await far.get(f"/v1/jobs/{job_id}")).json()["status"] == "completed"
        await eventually(done, timeout=20, interval=0.1)
        replay = await system.http.post("/v1/jobs", json=CHAT, headers=keyed("job-1"))
        assert replay.status_code == 202 and replay.json()["id"] == job_id and replay.json()["status"] == "completed"
        assert calls(fakes) == before + 2
    finally:
        await far.aclose()
        await other.stop()
