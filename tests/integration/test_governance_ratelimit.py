"""Rate limits through the whole pipeline, shared by two policy replicas through JetStream KV."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.policy.settings import PolicySettings
from shared.settings import ConsumerSettings
from tests.support.governance import bearer, chat, make_key, make_team, start_cluster


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    policy = PolicySettings(consumer=ConsumerSettings(concurrency=4, batch=2))
    c = await start_cluster(tmp_path_factory.mktemp("rates"), policy_replicas=2, policy=policy)
    yield c
    await c.close()


async def fire(cluster, key: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=cluster.system.base_url, timeout=30, headers=bearer(key)) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))


@pytest.mark.parametrize("limit, total", [(5, 12), (1, 6), (9, 30)])
async def test_exactly_n_of_m_concurrent_requests_at_a_limit_of_n(cluster, limit, total):
    team = f"rpm-{limit}"
    await make_team(cluster.http, team, rpm=limit)
    key, _ = await make_key(cluster.http, team)
    rs = await fire(cluster, key, [chat(f"n of m {i}") for i in range(total)])
    ok = [r for r in rs if r.status_code == 200]
    limited = [r for r in rs if r.status_code == 429]
    assert len(ok) == limit and len(limited) == total - limit, [r.status_code for r in rs]
    for r in limited:
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 120
        assert r.headers["x-ratelimit-limit-requests"] == str(limit)
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == list(range(limit))  # each admitted request saw one fewer left


async def test_tokens_per_minute_count_prompt_and_output_cap(cluster):
    await make_team(cluster.http, "tpm", tpm=2500)
    key, _ = await make_key(cluster.http, "tpm")
    rs = await fire(cluster, key, [chat("tokens", max_tokens=1000) for _ in range(4)])
    assert sorted(r.status_code for r in rs) == [200, 200, 429, 429]
    limited = next(r for r in rs if r.status_code == 429)
    assert limited.headers["x-ratelimit-limit-tokens"] == "2500"
    assert "tokens per minute" in limited.json()["error"]["message"]
    too_big = await fire(cluster, key, [chat("huge", max_tokens=3000)])
    assert too_big[0].status_code == 422 and too_big[0].json()["error"]["code"] == "tokens_exceed_rate_limit"


async def test_a_key_limit_and_its_team_limit_both_apply(cluster):
    await make_team(cluster.http, "both", rpm=4)
    strict, _ = await make_key(cluster.http, "both", limits={"rpm": 2})
    loose, _ = await make_key(cluster.http, "both")
    rs = await fire(cluster, strict, [chat("k") for _ in range(4)])
    assert sorted(r.status_code for r in rs) == [200, 200, 429, 429]
    # The team's limit counted only the strict key's 2 admitted requests: 2 are left for the other key.
    rs = await fire(cluster, loose, [chat("t") for _ in range(4)])
    assert sorted(r.status_code for r in rs) == [200, 200, 429, 429]


async def test_a_request_refused_for_one_reason_consumes_no_other_quota(cluster):
    http = cluster.http
    await make_team(http, "order", rpm=3, pii_action="block", daily_budget_usd=0.0000001)
    key, _ = await make_key(http, "order")
    # Refused by PII (before rate limits) and by the budget (after them): neither keeps a rate-limit unit.
    pii = await fire(cluster, key, [chat("write to jane.doe@example.com") for _ in range(3)])
    assert [r.json()["error"]["code"] for r in pii] == ["pii_detected"] * 3
    broke = await fire(cluster, key, [chat("within the rate limit") for _ in range(3)])
    assert [r.json()["error"]["code"] for r in broke] == ["budget_exceeded"] * 3
    r = await http.patch("/v1/admin/teams/order", json={"settings": {"daily_budget_usd": 10}})
    assert r.status_code == 200, r.text
    rs = await fire(cluster, key, [chat("now it fits") for _ in range(4)])
    assert sorted(r.status_code for r in rs) == [200, 200, 200, 429]


async def test_success_responses_carry_the_rate_limit_headers(cluster):
    await make_team(cluster.http, "headers", rpm=100, tpm=1_000_000)
    key, _ = await make_key(cluster.http, "headers")
    [r] = await fire(cluster, key, [chat("headers please", max_tokens=100)])
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit-requests"] == "100" and r.headers["x-ratelimit-remaining-requests"] == "99"
    assert r.headers["x-ratelimit-limit-tokens"] == "1000000"
    assert int(r.headers["x-ratelimit-remaining-tokens"]) < 1_000_000
