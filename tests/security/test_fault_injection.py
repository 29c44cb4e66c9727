"""Finding 11: a client cannot inject mock faults unless the operator enabled fault injection for the provider.

The attack: any client sends ``"switchyard": {"mock": {"status": 500}}`` again and again, so the mock
provider fails for real, its shared circuit breaker opens, and every tenant's traffic to it stops. On a
provider whose catalog entry does not say ``fault_injection: true`` (the default) the field is refused with a
400 — never silently dropped — and the breaker sees nothing. Where the operator turned it on (the test
catalogs' ``mock``), it still works.
"""

from __future__ import annotations

import httpx

from tests.support.governance import bearer
from tests.support.system import MEMBER_KEY, OTHER_TENANT_KEY


def body(model: str, **mock) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "switchyard": {"mock": mock}}


async def window(http: httpx.AsyncClient, deployment: str) -> dict:
    rows = (await http.get("/v1/providers/status")).json()["data"]
    row = next(r for r in rows if r["deployment"] == deployment)
    return {"state": row["breaker"]["state"], "failures": row["window"]["failures"]}


async def test_injected_faults_are_refused_where_the_operator_did_not_enable_them(secure):
    deployment = "mock-closed/closed-1"
    before = await window(secure.http, deployment)
    async with httpx.AsyncClient(base_url=secure.base_url, headers=bearer(MEMBER_KEY), timeout=30) as attacker:
        for fault in ({"status": 500}, {"status": 503, "retry_after": 30}, {"latency_ms": 60_000},
                      {"cut_after": 1}):
            for _ in range(3):
                r = await attacker.post("/v1/chat/completions", json=body("closed-1", **fault))
                assert r.status_code == 400, r.text
                error = r.json()["error"]
                assert error["code"] == "fault_injection_disabled" and error["param"] == "switchyard.mock"
        job = await attacker.post("/v1/jobs", json=body("closed-1", status=500))
        assert job.status_code == 202  # a job is accepted first, then refused by the same admission rule
    after = await window(secure.http, deployment)
    assert after == before and after["state"] == "closed"
    # Another tenant's traffic to that provider flows as before.
    async with httpx.AsyncClient(base_url=secure.base_url, headers=bearer(OTHER_TENANT_KEY), timeout=30) as other:
        r = await other.post("/v1/chat/completions",
                             json={"model": "closed-1", "messages": [{"role": "user", "content": "hello"}]})
        assert r.status_code == 200, r.text


async def test_an_operator_enabled_provider_still_takes_injected_faults(system):
    # The session catalog (tests/data/catalog.yaml) turns fault injection on for ``mock``.
    r = await system.http.post("/v1/chat/completions", json=body("mock-1", content="injected answer"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "injected answer"
