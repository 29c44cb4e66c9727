"""The console's read APIs end to end: GET /v1/requests, /v1/stats, /v1/audit/events and /v1/me against a running
system on its own nats-server — filters, cursor pagination, tenant isolation, role checks, NDJSON, the audit trail
of admin actions — and /v1/stats over a store seeded with 100,000 requests, its figures checked and timed."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from services.settings import ApiKeyConfig
from shared.natsd import NatsServer
from tests.support.system import ADMIN_KEY, MEMBER_KEY, OTHER_TENANT_KEY, make_settings, start_system
from tests.support.wait import eventually

VIEWER_KEY = "sk-test-viewer-a"
MEMBER_B_KEY = "sk-test-member-b"
BULK_KEY = "sk-test-bulk-admin"
BULK_VIEWER_KEY = "sk-test-bulk-viewer"
SEEDED = 100_000
SECRET_WORDS = "zebra-quartz-marmalade"  # prompt text that must appear in no read of the audit trail


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reads")
    nats = NatsServer(tmp / "nats").start()
    settings = make_settings(nats, tmp / "data", api_keys={
        MEMBER_KEY: ApiKeyConfig(tenant="default", team="team-a"),
        VIEWER_KEY: ApiKeyConfig(tenant="default", team="team-a", role="viewer"),
        MEMBER_B_KEY: ApiKeyConfig(tenant="default", team="team-b"),
        OTHER_TENANT_KEY: ApiKeyConfig(tenant="tenant-b", team="team-b"),
        BULK_KEY: ApiKeyConfig(tenant="bulk", team="t0", role="admin"),
        BULK_VIEWER_KEY: ApiKeyConfig(tenant="bulk", team="t1", role="viewer"),
    })
    system = await start_system(settings)
    try:
        sent = await _traffic(system)
        yield system, sent
    finally:
        await system.close()
        nats.stop()


def client(system, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=system.base_url, timeout=30, headers={"authorization": f"Bearer {key}"})


async def _chat(system, key: str, model: str, text: str = "hello") -> httpx.Response:
    async with client(system, key) as c:
        return await c.post("/v1/chat/completions", json={"model": model, "messages": [
            {"role": "user", "content": f"{text} {SECRET_WORDS}"}]})


async def _traffic(system) -> dict[str, list[str]]:
    """Known requests: team-a plain, fallback, failed and PII; team-b plain. Returns their ids by kind."""
    sent: dict[str, list[str]] = {"plain": [], "fallback": [], "failed": [], "pii": [], "team_b": []}
    keys = {}
    async with client(system, ADMIN_KEY) as c:  # a team with no budget left (denied) and one with a budget
        for team, usd in (("broke", 0), ("budgeted", 100)):
            r = await c.post("/v1/admin/teams", json={"name": team, "settings": {"daily_budget_usd": usd}})
            assert r.status_code == 201, r.text
            keys[team] = (await c.post("/v1/admin/keys", json={"team": team})).json()["key"]
    for kind, key, model, text in [("denied", keys["broke"], "mock-1", "no money"),
                                   ("budgeted", keys["budgeted"], "mock-1", "on budget")]:
        r = await _chat(system, key, model, text)
        sent[kind] = [r.headers["x-request-id"]]
    for kind, key, model, text in [
        ("plain", MEMBER_KEY, "mock-1", "hello"), ("plain", MEMBER_KEY, "mock-1", "again"),
        ("fallback", MEMBER_KEY, "resilient", "fall back"), ("failed", MEMBER_KEY, "flaky-1", "fail"),
        ("pii", MEMBER_KEY, "mock-1", "mail me at bob@example.com"), ("team_b", MEMBER_B_KEY, "mock-1", "b"),
        ("plain", MEMBER_KEY, "mock-1", "third"),
    ]:
        r = await _chat(system, key, model, text)
        rid = r.headers.get("x-request-id") or r.json().get("id")
        assert rid, r.text
        sent[kind].append(rid)
    async with client(system, MEMBER_KEY) as c:
        job = await c.post("/v1/jobs", json={"model": "mock-1", "messages": [{"role": "user", "content": "a job"}]})
        assert job.status_code == 202, job.text
        sent["job"] = [job.json()["id"]]
    everyone = {rid for ids in sent.values() for rid in ids}

    async def recorded() -> bool:
        async with client(system, ADMIN_KEY) as c:
            rows = (await c.get("/v1/requests", params={"limit": 1000})).json()["data"]
        done = {r["id"] for r in rows if r["outcome"] in ("succeeded", "failed", "denied")}
        return everyone <= done

    await eventually(recorded, timeout=20, interval=0.1, message="audit did not record every request")
    return sent


async def _pages(c: httpx.AsyncClient, path: str, **params) -> list[dict]:
    out, cursor = [], None
    while True:
        body = (await c.get(path, params={**params, **({"cursor": cursor} if cursor else {})})).json()
        out.extend(body["data"])
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return out
        cursor = body["next_cursor"]


async def test_me_says_who_the_key_is(stack):
    system, _ = stack
    async with client(system, VIEWER_KEY) as c:
        me = (await c.get("/v1/me")).json()
    assert {k: me[k] for k in ("tenant", "team", "role", "operator")} == {
        "tenant": "default", "team": "team-a", "role": "viewer", "operator": False}
    assert me["key_id"]
    async with client(system, ADMIN_KEY) as c:
        assert (await c.get("/v1/me")).json()["operator"] is True
    async with client(system, "sk-nope") as c:
        assert (await c.get("/v1/me")).status_code == 401


async def test_request_rows_and_filters(stack):
    system, sent = stack
    async with client(system, ADMIN_KEY) as c:
        rows = (await c.get("/v1/requests", params={"limit": 1000})).json()["data"]
        by_id = {r["id"]: r for r in rows}
        assert [r["created"] for r in rows] == sorted((r["created"] for r in rows), reverse=True)  # newest first

        fallback = by_id[sent["fallback"][0]]
        assert fallback["requested_model"] == "resilient" and fallback["served_model"] == "mock-1"
        assert fallback["provider"] == "mock" and fallback["outcome"] == "succeeded" and fallback["degraded"] is True
        assert [a["model"] for a in fallback["attempts"]] == ["flaky-1", "mock-1"]
        assert fallback["attempts"][-1]["outcome"] == "success"
        chain = fallback["attempt_chain"].split(" → ")
        assert chain[0].startswith("mock-flaky/flaky-1 ") and chain[1] == "mock/mock-1 success"
        assert fallback["latency_ms"] > 0 and fallback["usage"]["total_tokens"] > 0 and fallback["cost_usd"] > 0
        assert fallback["pii"] is None and fallback["error"] is None

        failed = by_id[sent["failed"][0]]
        assert failed["outcome"] == "failed" and failed["served_model"] is None and failed["error"]["code"]
        assert by_id[sent["pii"][0]]["pii"] == {"EMAIL": 1}
        assert by_id[sent["team_b"][0]]["team"] == "team-b"

        async def ids(**params) -> set[str]:
            r = await c.get("/v1/requests", params={"limit": 1000, **params})
            assert r.status_code == 200, r.text
            return {x["id"] for x in r.json()["data"]}

        assert await ids(degraded="true") == set(sent["fallback"])
        assert await ids(outcome="failed") == set(sent["failed"])
        assert await ids(outcome="denied") == set(sent["denied"])
        denied = by_id[sent["denied"][0]]
        assert denied["team"] == "broke" and denied["attempts"] == [] and denied["error"]["code"]
        assert await ids(pii="true") == set(sent["pii"])
        assert await ids(team="team-b") == set(sent["team_b"])
        assert await ids(model="resilient") == set(sent["fallback"])
        served_mock = await ids(model="mock-1")  # requested or served
        assert set(sent["fallback"]) <= served_mock and not set(sent["failed"]) & served_mock
        assert await ids(provider="mock-flaky") == set()  # the failed request was served by nobody
        assert await ids(job="true") == set(sent["job"])
        assert by_id[sent["job"][0]]["job"] is True
        newest = max(by_id[i]["created"] for i in by_id)
        assert await ids(since=str(newest)) == {i for i in by_id if by_id[i]["created"] == newest}
        assert await ids(until="2000-01-01T00:00:00Z") == set()


async def test_pagination_has_no_duplicates_or_gaps(stack):
    system, _ = stack
    async with client(system, ADMIN_KEY) as c:
        everything = (await c.get("/v1/requests", params={"limit": 1000})).json()["data"]
        for size in (1, 2, 3):
            paged = await _pages(c, "/v1/requests", limit=size)
            assert [r["id"] for r in paged] == [r["id"] for r in everything]
        trail = (await c.get("/v1/audit/events", params={"limit": 1000})).json()["data"]
        assert [e["id"] for e in await _pages(c, "/v1/audit/events", limit=7)] == [e["id"] for e in trail]


@pytest.mark.parametrize("path, params, param", [
    ("/v1/requests", {"limit": "0"}, "limit"),
    ("/v1/requests", {"limit": "1001"}, "limit"),
    ("/v1/requests", {"outcome": "exploded"}, "outcome"),
    ("/v1/requests", {"degraded": "maybe"}, "degraded"),
    ("/v1/requests", {"cursor": "not-a-cursor"}, "cursor"),
    ("/v1/requests", {"modle": "mock-1"}, "modle"),
    ("/v1/requests", {"since": "yesterday"}, "since"),
    ("/v1/ledger", {"limit": "-1"}, "limit"),
    ("/v1/ledger", {"limit": "abc"}, "limit"),
    ("/v1/stats", {"window": "forever"}, "window"),
    ("/v1/stats", {"window": "40d"}, "window"),
    ("/v1/stats", {"group_by": "colour"}, "group_by"),
    ("/v1/stats", {"window": "7d", "interval": "1s"}, "interval"),
    ("/v1/audit/events", {"type": "admitted,teleported"}, "type"),
])
async def test_bad_parameters_are_400_naming_them(stack, path, params, param):
    system, _ = stack
    async with client(system, ADMIN_KEY) as c:
        r = await c.get(path, params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


async def test_tenant_isolation_and_roles(stack):
    system, sent = stack
    async with client(system, VIEWER_KEY) as viewer:
        for params in ({}, {"team": "team-b"}):  # a viewer's team filter is forced to its own
            rows = (await viewer.get("/v1/requests", params={"limit": 1000, **params})).json()["data"]
            assert rows and {r["team"] for r in rows} == {"team-a"}
        trail = (await viewer.get("/v1/audit/events", params={"limit": 1000, "team": "team-b"})).json()["data"]
        assert trail and {e["team"] for e in trail} == {"team-a"}
        stats = (await viewer.get("/v1/stats", params={"group_by": "team"})).json()
        assert [g["key"] for g in stats["groups"]] == ["team-a"]
        assert (await viewer.get(f"/v1/requests/{sent['team_b'][0]}")).status_code == 404
    async with client(system, OTHER_TENANT_KEY) as other:
        assert (await other.get("/v1/requests")).json()["data"] == []
        assert (await other.get("/v1/audit/events")).json()["data"] == []
        assert (await other.get("/v1/stats")).json()["totals"]["requests"] == 0
        assert (await other.get(f"/v1/requests/{sent['plain'][0]}")).status_code == 404
    async with client(system, MEMBER_KEY) as member:  # a member reads its tenant, as it does the ledger
        teams = {r["team"] for r in (await member.get("/v1/requests", params={"limit": 1000})).json()["data"]}
        assert teams == {"team-a", "team-b", "broke", "budgeted"}


async def test_stats_agree_with_the_request_list(stack):
    system, sent = stack
    async with client(system, ADMIN_KEY) as c:
        rows = (await c.get("/v1/requests", params={"limit": 1000})).json()["data"]
        body = (await c.get("/v1/stats", params={"window": "1h", "group_by": "model", "interval": "1m"})).json()
    t = body["totals"]
    assert t["requests"] == len(rows)
    assert t["succeeded"] == sum(r["outcome"] == "succeeded" for r in rows)
    assert t["failed"] == sum(r["outcome"] == "failed" for r in rows)
    assert t["fallbacks"] == sum(len(r["attempts"]) > 1 for r in rows)
    assert t["usage"]["total_tokens"] == sum(r["usage"]["total_tokens"] for r in rows)
    assert t["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert t["spend_today_usd"] == pytest.approx(t["cost_usd"])
    lat = sorted(r["latency_ms"] for r in rows if r["latency_ms"] is not None)
    assert t["latency_ms"]["p50"] == pytest.approx(lat[math.ceil(0.5 * len(lat)) - 1])
    assert t["latency_ms"]["p99"] == pytest.approx(lat[-1])
    assert t["savings_usd"] >= 0
    groups = {g["key"]: g for g in body["groups"]}
    assert groups["mock-1"]["requests"] == sum((r["served_model"] or r["requested_model"]) == "mock-1" for r in rows)
    assert sum(g["requests"] for g in body["groups"]) == t["requests"]
    assert sum(p["requests"] for p in body["series"]) == t["requests"]
    async with client(system, ADMIN_KEY) as c:
        outcomes = (await c.get("/v1/stats", params={"group_by": "outcome"})).json()["groups"]
    assert {g["key"]: g["requests"] for g in outcomes} == {
        o: sum(r["outcome"] == o for r in rows) for o in {r["outcome"] for r in rows}}


async def test_audit_trail_records_admin_actions_and_admissions(stack):
    system, sent = stack
    async with client(system, ADMIN_KEY) as c:
        created = (await c.post("/v1/admin/keys", json={"team": "team-a", "role": "viewer"})).json()
        assert (await c.post(f"/v1/admin/keys/{created['id']}/rotate", json={})).status_code == 200
        assert (await c.patch("/v1/admin/teams/team-a", json={"settings": {"rpm": 1000}})).status_code == 200
        deployments = (await c.get("/v1/providers/status")).json()["data"]
        slow = next(d["deployment"] for d in deployments if d["model"] == "slow-1")
        assert (await c.post("/v1/providers/breaker", json={"deployment": slow, "action": "force_open"})).status_code == 200
        assert (await c.post("/v1/providers/breaker", json={"deployment": slow, "action": "reset"})).status_code == 200

        async def trail() -> list[dict]:
            return (await c.get("/v1/audit/events", params={"limit": 1000})).json()["data"]

        wanted = {"key_created", "key_rotated", "team_changed", "breaker", "admitted", "completed"}
        events = await eventually(lambda: _having(trail, wanted), timeout=10, interval=0.1)
        made = [e for e in events if e["type"] == "key_created" and e["key_id"] == created["id"]]
        assert made and made[0]["actor"] and made[0]["detail"]["role"] == "viewer"
        breakers = [e["detail"]["action"] for e in events if e["type"] == "breaker" and e["detail"]["subject"] == slow]
        assert breakers == ["reset", "force_open"]  # newest first
        team = next(e for e in events if e["type"] == "team_changed")
        assert team["team"] == "team-a" and team["detail"]["settings"] == {"rpm": 1000}
        admitted = [e for e in events if e["type"] == "admitted" and e["request_id"] == sent["pii"][0]]
        assert admitted and admitted[0]["detail"]["pii"] == {"EMAIL": 1}
        denied_or_done = {e["request_id"] for e in events if e["type"] == "completed"}
        assert set(sent["plain"]) <= denied_or_done
        dump = json.dumps(events)
        assert SECRET_WORDS not in dump and created["key"] not in dump  # metadata only: no prompt, no key

        only = (await c.get("/v1/audit/events", params={"type": "key_created,key_rotated"})).json()["data"]
        assert only and {e["type"] for e in only} <= {"key_created", "key_rotated"}
        per_request = (await c.get("/v1/audit/events", params={"request_id": sent["fallback"][0]})).json()["data"]
        assert {e["type"] for e in per_request} == {"admitted", "completed"}
        spent = (await c.get("/v1/audit/events", params={"request_id": sent["budgeted"][0]})).json()["data"]
        assert [e["type"] for e in spent][::-1][:2] == ["budget_reserved", "admitted"]
        assert {"budget_settled", "completed"} <= {e["type"] for e in spent}
        [denial] = (await c.get("/v1/audit/events", params={"request_id": sent["denied"][0]})).json()["data"]
        assert denial["type"] == "denied" and denial["team"] == "broke" and denial["detail"]["reason"]

        r = await c.get("/v1/audit/events", params={"limit": 3}, headers={"accept": "application/x-ndjson"})
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert [x["id"] for x in lines] == [e["id"] for e in events[:3]]
        nxt = await c.get("/v1/audit/events", params={"limit": 3, "cursor": r.headers["x-next-cursor"]},
                          headers={"accept": "application/x-ndjson"})
        assert [json.loads(x)["id"] for x in nxt.text.splitlines()] == [e["id"] for e in events[3:6]]


async def _having(trail, wanted: set[str]) -> list[dict] | None:
    """The trail once it holds every type wanted, and both breaker actions."""
    events = await trail()
    whole = wanted <= {e["type"] for e in events} and sum(e["type"] == "breaker" for e in events) >= 2
    return events if whole else None


async def test_trace_names_the_estimate_as_the_response_does(stack):
    system, sent = stack
    async with client(system, ADMIN_KEY) as c:
        trace = (await c.get(f"/v1/requests/{sent['fallback'][0]}")).json()
    candidates = trace["routing"]["candidates"]
    assert candidates and all("estimated_cost_usd" in x and "est_cost_usd" not in x for x in candidates)
    assert "est_cost_usd" not in json.dumps(trace)


# ---- /v1/stats over 100,000 seeded requests ------------------------------------------------------------------

MODELS = ("mock-1", "gpt-x", "claude-y", "small-z")


def _seed(db: Path, now: float, n: int) -> list[dict]:
    """``n`` requests of tenant ``bulk`` written straight into the audit store, with values chosen per row."""
    rng = random.Random(20)
    rows = []
    for i in range(n):
        status = "failed" if i % 10 == 0 else "denied" if i % 20 == 5 else "succeeded"
        ok = status == "succeeded"
        latency = float(rng.randint(1, 5000))
        rows.append({
            "request_id": f"bulk-{i:07d}", "tenant": "bulk", "team": f"t{i % 3}", "key_id": f"k{i % 7}",
            "model": MODELS[i % 4], "stage": 3, "status": status, "job": False, "created_at": now - 3000 * (i / n),
            "completed_at": now, "attempts": 2 if i % 4 == 1 else 1, "prompt_tokens": 10 + i % 5,
            "completion_tokens": 20 if ok else 0, "cached_tokens": 0, "reasoning_tokens": 0,
            "cost_usd": 0.001 * (1 + i % 3) if ok else 0.0, "api": "chat.completions",
            "served_model": MODELS[i % 4] if ok else None, "provider": "mock" if ok else None,
            "latency_ms": latency, "ttft_ms": latency / 4 if ok else None, "degraded": i % 4 == 1,
            "savings_usd": 0.0005 if ok and i % 2 else 0.0})
    conn = sqlite3.connect(db, timeout=30)
    cols = list(rows[0])
    conn.executemany(f"INSERT INTO audit_requests ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     [tuple(r[c] for c in cols) for r in rows])
    conn.commit()
    conn.close()
    return rows


def _nearest_rank(values: list[float], p: int) -> float | None:
    values = sorted(values)
    return values[math.ceil(p * len(values) / 100) - 1] if values else None


def _expect(rows: list[dict]) -> dict:
    ok = sum(r["status"] == "succeeded" for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    lat = [r["latency_ms"] for r in rows]
    ttft = [r["ttft_ms"] for r in rows if r["ttft_ms"] is not None]
    return {
        "requests": len(rows), "succeeded": ok, "failed": failed,
        "denied": sum(r["status"] == "denied" for r in rows),
        "success_rate": round(ok / (ok + failed), 6),
        "latency_ms": {f"p{p}": _nearest_rank(lat, p) for p in (50, 95, 99)},
        "ttft_ms": {f"p{p}": _nearest_rank(ttft, p) for p in (50, 95, 99)},
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "cost_usd": sum(r["cost_usd"] for r in rows), "fallbacks": sum(r["attempts"] > 1 for r in rows),
        "savings_usd": sum(r["savings_usd"] for r in rows)}


def _check(got: dict, want: dict) -> None:
    for k in ("requests", "succeeded", "failed", "denied", "success_rate", "latency_ms", "ttft_ms", "fallbacks"):
        assert got[k] == want[k], k
    assert got["usage"]["prompt_tokens"] == want["prompt_tokens"]
    assert got["cost_usd"] == pytest.approx(want["cost_usd"], rel=1e-9)
    assert got["savings_usd"] == pytest.approx(want["savings_usd"], rel=1e-9)


async def test_stats_over_100k_seeded_requests(stack):
    system, _ = stack
    db = Path(system.deps.settings.data_dir) / "audit.db"
    now = time.time()
    started = time.perf_counter()
    rows = _seed(db, now, SEEDED)
    seeded_s = time.perf_counter() - started
    async with client(system, BULK_KEY) as c:
        started = time.perf_counter()
        r = await c.get("/v1/stats", params={"window": "1h", "group_by": "model"})
        took = time.perf_counter() - started
        assert r.status_code == 200, r.text
        body = r.json()
        started = time.perf_counter()
        series = (await c.get("/v1/stats", params={"window": "1h", "interval": "5m"})).json()["series"]
        series_took = time.perf_counter() - started
        started = time.perf_counter()
        page = (await c.get("/v1/requests", params={"limit": 100, "model": "gpt-x", "outcome": "succeeded"})).json()
        list_took = time.perf_counter() - started
    print(f"\n/v1/stats over {SEEDED} seeded requests: {took * 1000:.0f} ms (group_by=model), "
          f"{series_took * 1000:.0f} ms (interval=5m); /v1/requests page: {list_took * 1000:.0f} ms "
          f"(seeding took {seeded_s:.1f} s)")
    _check(body["totals"], _expect(rows))
    groups = {g["key"]: g for g in body["groups"]}
    assert set(groups) == set(MODELS)
    for model in MODELS:
        mine = [x for x in rows if x["model"] == model]
        _check(groups[model], _expect(mine))
    assert sum(p["requests"] for p in series) == SEEDED
    assert all(p["latency_ms_p50"] is not None for p in series)
    assert len(page["data"]) == 100 and page["has_more"]
    assert all(x["served_model"] == "gpt-x" and x["outcome"] == "succeeded" for x in page["data"])

    async with client(system, BULK_VIEWER_KEY) as viewer:  # a viewer's figures are its team's
        mine = (await viewer.get("/v1/stats", params={"window": "1h"})).json()["totals"]
    _check(mine, _expect([x for x in rows if x["team"] == "t1"]))
