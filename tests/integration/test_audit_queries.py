"""The audit store's list and statistics reads on SQLite and PostgreSQL: rows written by ``build_rows`` from real
events, then paged, filtered, aggregated and ranked (percentiles exact, and over the bounded sample)."""

from __future__ import annotations

import math

import msgspec
import pytest

from services.audit.handlers import build_rows
from services.audit.queries import (
    BadQuery,
    EventsQuery,
    RequestsQuery,
    StatsQuery,
    list_events,
    list_requests,
    stats,
)
from tests.integration.test_audit_store import store  # noqa: F401 - SQLite, and PostgreSQL when it is reachable
from tests.unit.test_audit_handlers import AZURE, OPENAI, T0, Story

N = 24


def _events() -> list:
    """N requests, each received a second after the last: every third fails over to a second attempt, every
    fourth fails outright, the rest succeed; request i takes (i + 1) * 10 ms."""
    out = []
    for i in range(N):
        story = Story(f"r{i:02d}", team="ops" if i % 2 else "research")
        story.ctx = msgspec.structs.replace(story.ctx, received_at=T0 + i)
        end = i + (i + 1) / 100
        out += [story.requested(at=i), story.admitted(at=i + 0.001), story.dispatched(1, OPENAI, at=i + 0.002)]
        if i % 4 == 3:
            out.append(story.failed(at=end))
        elif i % 3 == 0:
            out += [story.attempt_failed(1, OPENAI, at=i + 0.003), story.dispatched(2, AZURE, at=i + 0.004),
                    story.succeeded(2, AZURE, at=end)]
        else:
            out.append(story.succeeded(1, OPENAI, at=end))
    return out


async def test_pages_filters_and_cursor(store):
    await store.apply(build_rows(_events()))
    everything = await list_requests(store, RequestsQuery(tenant="acme", limit=1000))
    ids = [r["id"] for r in everything["data"]]
    assert ids == [f"r{i:02d}" for i in reversed(range(N))]  # newest first
    paged, cursor = [], None
    while True:
        page = await list_requests(store, RequestsQuery(tenant="acme", limit=5, cursor=cursor))
        paged += [r["id"] for r in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert paged == ids
    failed = await list_requests(store, RequestsQuery(tenant="acme", outcome="failed", limit=1000))
    assert {r["id"] for r in failed["data"]} == {f"r{i:02d}" for i in range(N) if i % 4 == 3}
    fallback = await list_requests(store, RequestsQuery(tenant="acme", degraded=True, limit=1000))
    assert {r["id"] for r in fallback["data"]} == {f"r{i:02d}" for i in range(N) if i % 4 != 3 and i % 3 == 0}
    row = next(r for r in fallback["data"] if r["id"] == "r00")
    assert row["attempt_chain"] == "openai/gpt-4o-mini timeout → azure/gpt-4o-mini success"
    assert row["latency_ms"] == pytest.approx(10.0) and row["served_model"] == "gpt-4o-mini"
    ops = await list_requests(store, RequestsQuery(tenant="acme", team="ops", since=T0 + 10, until=T0 + 20))
    assert [r["id"] for r in ops["data"]] == [f"r{i:02d}" for i in (19, 17, 15, 13, 11)]
    assert (await list_requests(store, RequestsQuery(tenant="other")))["data"] == []
    with pytest.raises(BadQuery):
        await list_requests(store, RequestsQuery(tenant="acme", cursor="%%%"))


async def test_stats_totals_groups_series_and_the_sampled_percentiles(store):
    await store.apply(build_rows(_events()))
    q = StatsQuery(tenant="acme", since=T0, until=T0 + N, group_by="team", interval_s=6.0, day_start=T0)
    body = await stats(store, q)
    t = body["totals"]
    failed = [i for i in range(N) if i % 4 == 3]
    assert (t["requests"], t["failed"], t["succeeded"]) == (N, len(failed), N - len(failed))
    assert t["fallbacks"] == sum(1 for i in range(N) if i % 4 != 3 and i % 3 == 0)
    lat = [(i + 1) * 10.0 for i in range(N)]
    rank = {p: lat[math.ceil(p * N / 100) - 1] for p in (50, 95, 99)}
    assert t["latency_ms"] == pytest.approx({f"p{p}": v for p, v in rank.items()})
    assert t["cost_usd"] == pytest.approx(0.0015 * (N - len(failed)) + 0.0, abs=1e-9)
    assert t["spend_today_usd"] == pytest.approx(t["cost_usd"])
    assert {g["key"]: g["requests"] for g in body["groups"]} == {"ops": N // 2, "research": N // 2}
    assert [(p["t"], p["key"], p["requests"]) for p in body["series"]][:2] == [(T0, "ops", 3), (T0, "research", 3)]
    assert sum(p["requests"] for p in body["series"]) == N and body["percentile_sample"] == 1
    sampled = await stats(store, StatsQuery(tenant="acme", since=T0, until=T0 + N, exact=N // 4))
    assert sampled["percentile_sample"] == 4 and sampled["totals"]["requests"] == N  # sums stay whole
    assert all(v in lat for v in sampled["totals"]["latency_ms"].values())  # real values of the sampled requests


async def test_audit_trail_pages_and_filters(store):
    await store.apply(build_rows(_events()))
    all_events = await list_events(store, EventsQuery(tenant="acme", limit=1000))
    assert len(all_events["data"]) == 2 * N  # admitted and completed per request
    assert [e["ts"] for e in all_events["data"]] == sorted((e["ts"] for e in all_events["data"]), reverse=True)
    paged, cursor = [], None
    while True:
        page = await list_events(store, EventsQuery(tenant="acme", limit=7, cursor=cursor))
        paged += page["data"]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert paged == all_events["data"]
    done = await list_events(store, EventsQuery(tenant="acme", types=["completed"], team="ops", limit=1000))
    assert len(done["data"]) == N // 2 and {e["detail"]["outcome"] for e in done["data"]} == {"succeeded", "failed"}
    one = await list_events(store, EventsQuery(tenant="acme", request_id="r05"))
    assert [e["type"] for e in one["data"]] == ["completed", "admitted"]
