"""Policy fails closed: when its KV state cannot be read or written, requests are denied with 503."""

from __future__ import annotations

import pytest

from shared.state.buckets import ADMISSIONS, BUDGETS, TEAMS
from tests.support.governance import bearer, chat, delete_bucket, make_key, make_team, start_cluster
from tests.support.wait import eventually


@pytest.fixture
async def cluster(tmp_path):
    c = await start_cluster(tmp_path, policy_replicas=2)
    yield c
    await c.close()


@pytest.mark.parametrize("bucket, settings", [
    (BUDGETS, {"daily_budget_usd": 5}),   # a team with a budget: the reservation cannot be taken
    (TEAMS, {}),                          # the team's settings cannot be read (not taken for "no settings")
    # A team with a rate limit: its admission must be recorded and cannot be. (A team with neither limits nor a
    # budget records nothing at admission, so a missing admission store changes nothing for it.)
    (ADMISSIONS, {"rpm": 1000}),
])
async def test_a_missing_bucket_denies_with_503(cluster, bucket, settings):
    http = cluster.http
    await make_team(http, "closed", **settings)
    key, _ = await make_key(http, "closed")
    ok = await http.post("/v1/chat/completions", headers=bearer(key), json=chat("before"))
    assert ok.status_code == 200, ok.text
    await delete_bucket(cluster.nats, bucket.name)  # an operator's act: no service role may delete a bucket
    r = await http.post("/v1/chat/completions", headers=bearer(key), json=chat("after"))
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "policy_unavailable" and "not admitted" in err["message"]
    assert r.headers["retry-after"] == "1"

    async def recorded():
        t = await http.get(f"/v1/requests/{r.headers['x-request-id']}")
        return t.json() if t.status_code == 200 and t.json()["status"] == "denied" else None
    trace = await eventually(recorded)
    assert trace["error"]["code"] == "policy_unavailable"
