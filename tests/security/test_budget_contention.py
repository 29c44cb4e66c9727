"""Finding 9: contention on one team's budget must never surface as a 503, and never overrun the budget.

Every admission of a team reserves on one KV entry (its budget counter), and every terminal event settles
on it. With one compare-and-set per change, a few hundred concurrent requests of one team made most writes
lose races and retry until they gave up: 503 ``policy_unavailable`` for requests that fitted the budget.
Changes of one counter made at the same time in one policy process are now written together
(``shared.state.kv.GroupCommit``); replicas still contend, one batch each.

- 400 concurrent requests of one team, two policy replicas, a budget that covers them all: every one is
  answered 200 (before, about a quarter were 503s), and afterwards nothing is left reserved;
- 100 concurrent requests against a budget that covers 30 of them (each holds its reservation for 2 s
  upstream): all are decided before the first admitted one ends, at most 30 are admitted, the rest are
  refused 429 ``budget_exceeded``, not one is a 503, and the spend never exceeds the budget;
- the budget store itself, two stores (as two replicas) reserving 100-way concurrently on one counter:
  exactly as many reservations as fit, not one more, and no store error.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter as Tally

import httpx
import nats
import pytest
from nats.js.api import KeyValueConfig, StorageType

from services.policy.settings import PolicySettings
from shared.errors import ServiceUnavailable
from shared.settings import ConsumerSettings
from shared.state.budgets import BudgetRefused, BudgetStore, Scope, to_usd
from tests.support.governance import bearer, budget, chat, estimate, make_key, make_team, start_cluster
from tests.support.wait import eventually


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    # Two policy replicas sharing the consumer (each with the default in-flight window): both write the counter.
    c = await start_cluster(tmp_path_factory.mktemp("contention"), policy_replicas=2,
                            policy=PolicySettings(consumer=ConsumerSettings()))
    yield c
    await c.close()


async def fire(cluster, key: str, bodies: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=cluster.system.base_url, timeout=120, headers=bearer(key),
                                 limits=limits) as client:
        return await asyncio.gather(*(timed(client, b) for b in bodies))


async def timed(client: httpx.AsyncClient, body: dict) -> httpx.Response:
    """The response, with the moment it came back (``response.at``, monotonic seconds)."""
    response = await client.post("/v1/chat/completions", json=body)
    response.at = time.monotonic()
    return response


async def settled(http: httpx.AsyncClient, team: str) -> dict:
    async def done():
        b = await budget(http, team)
        return b if b["open_reservations"] == 0 else None
    return await eventually(done, timeout=30)


async def test_four_hundred_concurrent_requests_of_one_team_are_all_answered(cluster):
    body = chat("one team, many requests", max_tokens=20)
    await make_team(cluster.http, "busy", daily_budget_usd=to_usd(estimate(cluster, body) * 1000))
    key, _ = await make_key(cluster.http, "busy")
    responses = await fire(cluster, key, [body] * 400)
    statuses = Tally(r.status_code for r in responses)
    assert statuses == {200: 400}, (statuses, [r.json()["error"] for r in responses if r.status_code != 200][:3])
    b = await settled(cluster.http, "busy")
    assert 0 < b["periods"]["daily"]["spent_usd"] <= b["periods"]["daily"]["limit_usd"]


async def test_a_hundred_concurrent_requests_on_a_tight_budget_never_overrun_it_nor_get_503(cluster):
    body = chat("hold the budget", max_tokens=400, switchyard={"mock": {"latency_ms": 2000}})
    one = estimate(cluster, body)
    limit = one * 30
    await make_team(cluster.http, "tight", daily_budget_usd=to_usd(limit), monthly_budget_usd=to_usd(limit))
    key, _ = await make_key(cluster.http, "tight")
    responses = await fire(cluster, key, [body] * 100)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 100, Tally(r.status_code for r in responses)
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    # Every admitted request held its reservation while the others were decided: at most 30 fit.
    assert max(r.at for r in refused) < min(r.at for r in ok), "admissions took longer than the 2 s hold"
    assert 1 <= len(ok) <= 30
    b = await settled(cluster.http, "tight")
    daily = b["periods"]["daily"]
    assert daily["spent_usd"] <= daily["limit_usd"] + 1e-9  # $0 over
    assert daily["reserved_usd"] == 0


async def test_two_budget_stores_reserving_a_hundred_way_on_one_counter_take_exactly_what_fits(nats_server):
    nc = await nats.connect(**nats_server.connect_options())
    js = nc.jetstream()
    bucket = f"t_budgets_{uuid.uuid4().hex[:10]}"
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.MEMORY))
    try:
        replicas = [BudgetStore(kv), BudgetStore(kv)]  # two policy processes: separate batches, one counter
        amount, fits = 1_000_003, 37
        scope = Scope(key="team.acme.ml", daily=amount * fits, monthly=amount * fits * 10)

        async def reserve(i: int) -> str:
            try:
                await replicas[i % 2].reserve(f"req_{i}", [scope], amount, expires=4e9)
                return "reserved"
            except BudgetRefused:
                return "refused"
            except ServiceUnavailable:
                return "unavailable"

        outcomes = Tally(await asyncio.gather(*(reserve(i) for i in range(100))))
        assert outcomes == {"reserved": fits, "refused": 100 - fits}
        counter = await replicas[0].counter(scope.key)
        assert counter.reserved() == amount * fits and len(counter.open) == fits
        # Settling them all concurrently, each at its full amount, spends exactly the budget.
        await asyncio.gather(*(replicas[i % 2].settle(rid, [scope], amount, ts=time.time())
                               for i, rid in enumerate(counter.open)))
        counter = await replicas[1].counter(scope.key)
        assert counter.open == {} and counter.day_spent == amount * fits
    finally:
        await js.delete_key_value(bucket)
        await nc.close()
