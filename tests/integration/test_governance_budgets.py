"""Budgets through the whole pipeline with two policy replicas on a real nats-server.

The property of the issue: 50 concurrent requests whose estimates add up to 5× the remaining budget →
admitted cost ≤ remaining budget, and once all have finished (some failing upstream) no reservation is open
and spent = Σ ledger.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.policy.settings import PolicySettings
from shared.settings import ConsumerSettings
from shared.state.budgets import to_usd
from tests.support.governance import bearer, budget, chat, estimate, make_key, make_team, start_cluster
from tests.support.wait import eventually


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    # A small in-flight window per replica, so both policy replicas really share the work.
    policy = PolicySettings(consumer=ConsumerSettings(concurrency=4, batch=2))
    c = await start_cluster(tmp_path_factory.mktemp("budgets"), policy_replicas=2, policy=policy)
    yield c
    await c.close()


async def ledger_total(http: httpx.AsyncClient, team: str, rows: int) -> dict:
    async def ready():
        body = (await http.get("/v1/ledger", params={"team": team, "limit": 1000})).json()
        return body if len(body["data"]) >= rows else None
    return await eventually(ready, timeout=15)


def metric(deps, name: str, **labels) -> float:
    value = deps.telemetry.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


async def test_fifty_concurrent_requests_never_overrun_the_budget(cluster):
    http = cluster.http
    slow_ok = chat("within budget", max_tokens=1000, switchyard={"mock": {"latency_ms": 1500}})
    failing = chat("fails upstream", model="flaky-1", max_tokens=1000)
    bodies = [slow_ok] * 35 + [failing] * 15
    estimates = [estimate(cluster, b) for b in bodies]
    remaining = sum(estimates) // 5
    await make_team(http, "prop", daily_budget_usd=to_usd(remaining), monthly_budget_usd=to_usd(remaining))
    key, _ = await make_key(http, "prop")

    async with httpx.AsyncClient(base_url=cluster.system.base_url, timeout=60, headers=bearer(key)) as client:
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))

    ok = [r for r, b in zip(responses, bodies) if r.status_code == 200]
    upstream_failed = [r for r in responses if r.status_code == 502]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(upstream_failed) + len(refused) == 50, [r.status_code for r in responses]
    assert ok and refused, "the budget should admit some requests and refuse others"
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)

    # Every successful request held its reservation (1.5 s upstream) while all 50 were admitted or refused:
    # their estimates together fit in what was left of the budget.
    assert len(ok) * estimates[0] <= remaining

    first = refused[0]
    err = first.json()["error"]
    assert "daily budget of team default/prop" in err["message"] and "resets at" in err["message"]
    assert first.headers["x-switchyard-budget-scope"] == "team.default.prop"
    assert first.headers["x-switchyard-budget-reset"].endswith("T00:00:00Z")
    assert 1 <= int(first.headers["retry-after"]) <= 120

    ledger = await ledger_total(http, "prop", rows=len(ok))
    spent_ledger = ledger["totals"]["cost_usd"]
    assert 0 < spent_ledger <= to_usd(remaining)  # admitted cost ≤ remaining budget

    async def settled():
        b = await budget(http, "prop")
        return b if b["open_reservations"] == 0 else None
    b = await eventually(settled, timeout=15)
    daily, monthly = b["periods"]["daily"], b["periods"]["monthly"]
    assert daily["reserved_usd"] == 0 and monthly["reserved_usd"] == 0
    assert daily["spent_usd"] == pytest.approx(spent_ledger, abs=1e-8)
    assert monthly["spent_usd"] == pytest.approx(spent_ledger, abs=1e-8)
    assert daily["remaining_usd"] == pytest.approx(to_usd(remaining) - spent_ledger, abs=1e-8)

    # Both policy replicas admitted and settled part of the traffic.
    for deps in (cluster.system.deps, cluster.replicas[0].deps):
        decided = sum(metric(deps, "switchyard_admissions_total", decision=d, reason=r)
                      for d, r in (("admitted", ""), ("denied", "budget_exceeded")))
        assert decided > 0

    # The trace explains the money: reserved, then settled (success) or released (upstream failure).
    trace = await eventually(lambda: _trace_with(http, ok[0].headers["x-request-id"], "settled"))
    kinds = [e["event"] for e in trace["budget"]]
    assert kinds == ["reserved", "settled"] and trace["budget"][1]["amount_usd"] == pytest.approx(trace["cost_usd"])
    assert trace["admission"]["decision"] == "admitted" and trace["admission"]["budgets"] == ["team.default.prop"]
    if upstream_failed:
        trace = await eventually(lambda: _trace_with(http, upstream_failed[0].headers["x-request-id"], "released"))
        assert [e["event"] for e in trace["budget"]] == ["reserved", "released"]

    async def denied_trace():
        t = await http.get(f"/v1/requests/{refused[0].headers['x-request-id']}")
        return t.json() if t.status_code == 200 and t.json()["status"] == "denied" else None
    denied = await eventually(denied_trace)
    assert denied["admission"]["reason"] == "budget_exceeded"


async def test_a_key_budget_refuses_on_its_own(cluster):
    http = cluster.http
    await make_team(http, "keyed")
    body = chat("hi", max_tokens=1000)
    key, meta = await make_key(http, "keyed", limits={"daily_usd": to_usd(estimate(cluster, body) * 2 - 1)})
    async with httpx.AsyncClient(base_url=cluster.system.base_url, timeout=30, headers=bearer(key)) as client:
        first = await client.post("/v1/chat/completions",
                                  json={**body, "switchyard": {"mock": {"latency_ms": 500}}})
        assert first.status_code == 200

        async def settled():
            keys = (await budget(http, "keyed"))["keys"]
            return keys if keys and keys[0]["open_reservations"] == 0 else None
        [mine] = await eventually(settled)
        assert mine["key_id"] == meta["id"] and mine["periods"]["daily"]["spent_usd"] > 0
        # Room for one more estimate, not two: of three concurrent requests exactly one is admitted.
        rs = await asyncio.gather(*(client.post("/v1/chat/completions",
                                                json={**body, "switchyard": {"mock": {"latency_ms": 500}}})
                                    for _ in range(3)))
    assert sorted(r.status_code for r in rs) == [200, 429, 429]
    refused = next(r for r in rs if r.status_code == 429).json()["error"]
    assert refused["code"] == "budget_exceeded" and f"key {meta['id']}" in refused["message"]


async def test_cancelled_and_expired_requests_release(cluster):
    http = cluster.http
    await make_team(http, "release", daily_budget_usd=1.0)
    key, _ = await make_key(http, "release")
    h = bearer(key)
    job = await http.post("/v1/jobs", headers=h, json=chat("slow job", model="slow-1", max_tokens=500,
                                                              switchyard={"mock": {"latency_ms": 2000}}))
    assert job.status_code == 202

    async def reserved():  # the job is admitted: cancelling it now has a reservation to release
        return (await budget(http, "release"))["open_reservations"] > 0
    await eventually(reserved)
    assert (await http.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=h)).status_code == 200
    r = await http.post("/v1/chat/completions", headers={**h, "x-switchyard-timeout": "0.3"},
                        json=chat("too slow", model="slow-1", max_tokens=500,
                                  switchyard={"mock": {"latency_ms": 2000}}))
    assert r.status_code == 504

    async def released():
        b = await budget(http, "release")
        return b if b["open_reservations"] == 0 else None
    await eventually(released, timeout=15)
    trace = await eventually(lambda: _trace_with(http, job.json()["id"], "released"))
    assert [e["reason"] for e in trace["budget"] if e["event"] == "released"] == ["cancelled"]

    # The provider call running when the job was cancelled is billed (issue 17): its cost, and nothing else, is
    # spent (0 when the cancel came before the call started).
    async def spent_what_was_billed():
        job_trace = (await http.get(f"/v1/requests/{job.json()['id']}")).json()
        spent = (await budget(http, "release"))["periods"]["daily"]["spent_usd"]
        ended = all(a["outcome"] != "dispatched" for a in job_trace["attempts"])
        return ended and spent == pytest.approx(job_trace["cost_usd"], abs=1e-9)
    await eventually(spent_what_was_billed, timeout=10)
    trace = await eventually(lambda: _trace_with(http, r.headers["x-request-id"], "released"))
    assert trace["budget"][-1]["reason"] == "expired"


async def _trace_with(http, rid: str, kind: str) -> dict | None:
    r = await http.get(f"/v1/requests/{rid}")
    if r.status_code != 200:
        return None
    body = r.json()
    return body if any(e["event"] == kind for e in body.get("budget", [])) else None


async def test_soft_alerts_once_per_period_with_event_and_metric(cluster):
    http = cluster.http
    body = chat("alert me", max_tokens=50)
    one = estimate(cluster, body)
    await make_team(http, "alerts", daily_budget_usd=to_usd(one * 20), alert_thresholds=[0.00001, 0.9])
    key, _ = await make_key(http, "alerts")
    ids = []
    for _ in range(3):
        r = await http.post("/v1/chat/completions", headers=bearer(key), json=body)
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])

    async def alerted():
        total = sum(metric(d, "switchyard_budget_alerts_total", scope_kind="team", period="daily",
                           threshold="1e-05") for d in (cluster.system.deps, cluster.replicas[0].deps))
        return total or None
    assert await eventually(alerted) == 1  # three settlements crossed the threshold; one alert for the day
    b = await budget(http, "alerts")
    assert b["alerts_sent"] == ["d1e-05"]  # not the 90 % one
    # The alert event is in the trace of the request whose settlement crossed the threshold.
    trace = await eventually(lambda: _trace_with(http, ids[0], "alert"))
    alert = next(e for e in trace["budget"] if e["event"] == "alert")
    assert alert["scope"] == "team.default.alerts" and alert["period"] == "daily" and alert["threshold"] == 1e-05
