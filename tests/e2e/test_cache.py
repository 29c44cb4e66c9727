"""The response cache through the whole pipeline against a counting fake upstream: hits and misses, what a hit
costs and records (trace, ledger, budget), streaming replay, refresh, bypass, purge, tenant isolation, semantic
hits, and 50 concurrent identical requests making one upstream call."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from services.workers.settings import CacheSettings, WorkerSettings
from tests.fakes.providers import Fault, Reply
from tests.support.api import sdk, wait_trace
from tests.support.governance import bearer, make_key, make_team
from tests.support.upstream import system_on_fake_upstream
from tests.support.wait import eventually

USE = {"x-switchyard-cache": "use"}


@pytest.fixture(scope="module")
async def cached(tmp_path_factory):
    settings = {"workers": WorkerSettings(cache=CacheSettings(embedding_model="mock-embed-1"))}
    async with system_on_fake_upstream(tmp_path_factory.mktemp("cache"), **settings) as (system, fakes):
        http = system.http
        await make_team(http, "cached", cache_mode="exact", daily_budget_usd=10.0)
        await make_team(http, "semantic", cache_mode="semantic", cache_similarity=0.8)
        await make_team(http, "plain")
        keys = {team: (await make_key(http, team))[0] for team in ("cached", "semantic", "plain")}
        r = await http.post("/v1/admin/teams", json={"name": "cached", "tenant": "acme",
                                                     "settings": {"cache_mode": "exact"}})
        assert r.status_code == 201, r.text
        keys["acme"] = (await make_key(http, "cached", tenant="acme"))[0]
        yield system, fakes, keys


def body(content: str, **extra) -> dict:
    return {"model": "up-1", "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


async def post(system, key: str, payload: dict, headers: dict | None = None) -> httpx.Response:
    return await system.http.post("/v1/chat/completions", json=payload, headers={**bearer(key), **(headers or {})})


async def test_a_repeat_is_a_hit_that_costs_nothing_and_is_recorded(cached):
    system, fakes, keys = cached
    fakes.reset()
    fakes.reply("openai", Reply(text="the first answer", prompt_tokens=100, completion_tokens=50))
    first = await post(system, keys["cached"], body("what is a hit?"))
    assert first.status_code == 200, first.text
    assert first.headers["x-switchyard-cache"] == "miss"
    fakes.reply("openai", Reply(text="a different answer"))
    second = await post(system, keys["cached"], body("what is a hit?"))
    assert second.status_code == 200 and second.headers["x-switchyard-cache"] == "hit"
    assert second.json()["choices"][0]["message"]["content"] == "the first answer"
    assert len(fakes.requests_to("openai")) == 1  # the hit never reached the upstream
    extension = second.json()["switchyard"]
    assert extension["cost_usd"] == 0 and extension["cache"]["status"] == "hit"
    assert extension["cache"]["source"] == first.headers["x-request-id"]
    miss_cost = first.json()["switchyard"]["cost_usd"]
    assert miss_cost > 0 and extension["cache"]["savings_usd"] == pytest.approx(miss_cost)

    trace = await wait_trace(system, second.headers["x-request-id"], "succeeded")
    attempt = trace["attempts"][0]
    assert attempt["outcome"] == "success" and attempt["cost_usd"] == 0
    assert attempt["cache"]["status"] == "hit" and attempt["cache"]["kind"] == "exact"
    assert trace["cost_usd"] == 0

    async def ledger_rows() -> list[dict]:
        r = await system.http.get("/v1/ledger", params={"team": "cached"})
        rows = {row["request_id"]: row for row in r.json()["data"]}
        return [rows[i] for i in (first.headers["x-request-id"], second.headers["x-request-id"]) if i in rows]

    rows = await eventually(lambda: _two(ledger_rows), message="ledger rows of the miss and the hit")
    miss, hit = rows
    assert miss["cache"] == "miss" and miss["cost_usd"] == pytest.approx(miss_cost)
    assert hit["cache"] == "hit" and hit["cost_usd"] == 0 and hit["savings_usd"] == pytest.approx(miss_cost)

    # The team's budget is settled at $0 for the hit: what was spent is the miss alone.
    async def settled() -> bool:
        t = await system.http.get(f"/v1/requests/{second.headers['x-request-id']}")
        return any(b["event"] == "settled" for b in t.json().get("budget", []))

    await eventually(settled, message="the hit's budget settlement")
    hit_trace = (await system.http.get(f"/v1/requests/{second.headers['x-request-id']}")).json()
    assert [b["amount_usd"] for b in hit_trace["budget"] if b["event"] == "settled"] == [0.0]


async def _two(fetch) -> list[dict] | None:
    rows = await fetch()
    return rows if len(rows) == 2 else None


async def test_every_parameter_that_matters_and_every_tenant_gets_its_own_entry(cached):
    system, fakes, keys = cached
    fakes.reset()
    base = body("keyed question")
    assert (await post(system, keys["cached"], base)).headers["x-switchyard-cache"] == "miss"
    assert (await post(system, keys["cached"], base)).headers["x-switchyard-cache"] == "hit"
    for variant in (body("keyed question", max_tokens=7), body("keyed question", seed=3),
                    body("keyed question", stop=["x"]), body("keyed question", response_format={"type": "text"}),
                    body("Keyed question")):
        r = await post(system, keys["cached"], variant)
        assert r.headers["x-switchyard-cache"] == "miss", variant
    # Another tenant's team of the same name, another team of this tenant: their own entries.
    assert (await post(system, keys["acme"], base)).headers["x-switchyard-cache"] == "miss"
    assert (await post(system, keys["semantic"], base)).headers["x-switchyard-cache"] == "miss"
    # The routing headers and the user field do not change the answer: still a hit.
    r = await post(system, keys["cached"], {**base, "user": "u-1"}, {"x-switchyard-preference": "cheap"})
    assert r.headers["x-switchyard-cache"] == "hit"


async def test_refresh_off_and_nondeterministic_requests(cached):
    system, fakes, keys = cached
    fakes.reset()
    fakes.reply("openai", Reply(text="old answer"))
    payload = body("refresh me")
    await post(system, keys["cached"], payload)
    fakes.reply("openai", Reply(text="new answer"))
    r = await post(system, keys["cached"], payload, {"x-switchyard-cache": "refresh"})
    assert r.headers["x-switchyard-cache"] == "miss" and r.json()["choices"][0]["message"]["content"] == "new answer"
    assert r.json()["switchyard"]["cache"]["reason"] == "refresh"
    r = await post(system, keys["cached"], payload)
    assert r.headers["x-switchyard-cache"] == "hit" and r.json()["choices"][0]["message"]["content"] == "new answer"
    r = await post(system, keys["cached"], payload, {"x-switchyard-cache": "off"})
    assert r.headers["x-switchyard-cache"] == "bypass"
    hot = await post(system, keys["cached"], {**payload, "temperature": 0.7})
    assert hot.headers["x-switchyard-cache"] == "bypass"
    assert "temperature 0 or a seed" in hot.json()["switchyard"]["cache"]["reason"]
    assert len(fakes.requests_to("openai")) == 4  # first, refresh, off, temperature 0.7
    bad = await post(system, keys["cached"], payload, {"x-switchyard-cache": "always"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-switchyard-cache"


async def test_a_team_without_cache_asks_per_request(cached):
    system, fakes, keys = cached
    fakes.reset()
    payload = body("per request")
    r = await post(system, keys["plain"], payload)
    assert "x-switchyard-cache" not in r.headers  # not in play: the team's mode is "request", no header sent
    assert (await post(system, keys["plain"], payload, USE)).headers["x-switchyard-cache"] == "miss"
    assert (await post(system, keys["plain"], payload, USE)).headers["x-switchyard-cache"] == "hit"
    assert len(fakes.requests_to("openai")) == 2


async def test_a_hit_streams_as_a_normal_sse_stream(cached):
    system, fakes, keys = cached
    fakes.reset()
    fakes.reply("openai", Reply(text="streamed once and then replayed", prompt_tokens=20, completion_tokens=6))
    client = sdk(system, key=keys["cached"])
    messages = [{"role": "user", "content": "stream it"}]
    first = await client.chat.completions.create(model="up-1", messages=messages, temperature=0, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in first if c.choices]) == \
        "streamed once and then replayed"
    raw = await client.chat.completions.with_raw_response.create(
        model="up-1", messages=messages, temperature=0, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-switchyard-cache"] == "hit"
    chunks = [c async for c in raw.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed once and then replayed"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 6
    assert len(fakes.requests_to("openai")) == 1
    # A non-streamed request is answered from the streamed one's entry too.
    r = await post(system, keys["cached"], {"model": "up-1", "messages": messages, "temperature": 0})
    assert r.headers["x-switchyard-cache"] == "hit"


async def test_fifty_concurrent_identical_requests_make_one_upstream_call(cached):
    system, fakes, keys = cached
    fakes.reset()
    fakes.always("openai", Fault(latency_s=0.5))  # the first call is still running when the others arrive
    try:
        answers = await asyncio.gather(*(post(system, keys["cached"], body("all at once")) for _ in range(50)))
    finally:
        fakes.always("openai", None)
    assert [r.status_code for r in answers] == [200] * 50
    assert len(fakes.requests_to("openai")) == 1
    statuses = sorted(r.headers["x-switchyard-cache"] for r in answers)
    assert statuses == ["hit"] * 49 + ["miss"]
    assert sum(1 for r in answers if r.json()["switchyard"]["cache"].get("coalesced")) >= 40
    assert len({r.json()["choices"][0]["message"]["content"] for r in answers}) == 1


async def test_purge_removes_only_that_teams_answers(cached):
    system, fakes, keys = cached
    fakes.reset()
    payload = body("purge me")
    for team in ("cached", "plain"):
        await post(system, keys[team], payload, USE)
        assert (await post(system, keys[team], payload, USE)).headers["x-switchyard-cache"] == "hit"
    r = await system.http.post("/v1/admin/teams/cached/cache/purge")
    assert r.status_code == 200 and r.json()["purged"] is True
    assert (await post(system, keys["cached"], payload, USE)).headers["x-switchyard-cache"] == "miss"
    assert (await post(system, keys["plain"], payload, USE)).headers["x-switchyard-cache"] == "hit"
    member = await system.http.post("/v1/admin/teams/cached/cache/purge", headers=bearer(keys["cached"]))
    assert member.status_code == 403
    assert (await system.http.post("/v1/admin/teams/nobody/cache/purge")).status_code == 404


async def test_a_paraphrase_is_a_semantic_hit_and_a_different_question_is_not(cached):
    system, fakes, keys = cached
    fakes.reset()
    fakes.reply("openai", Reply(text="Go to settings, then security, then reset."))
    first = await post(system, keys["semantic"], body("How do I reset my password?"))
    assert first.headers["x-switchyard-cache"] == "miss"
    fakes.reply("openai", Reply(text="something else"))
    para = await post(system, keys["semantic"], body("How can I reset my password?"))
    assert para.headers["x-switchyard-cache"] == "hit"
    info = para.json()["switchyard"]["cache"]
    assert info["kind"] == "semantic" and info["similarity"] >= 0.8
    assert para.json()["choices"][0]["message"]["content"] == "Go to settings, then security, then reset."
    other = await post(system, keys["semantic"], body("What is the capital of France?"))
    assert other.headers["x-switchyard-cache"] == "miss"
    # Other parameters must match exactly: the same paraphrase with another max_tokens is not a hit.
    capped = await post(system, keys["semantic"], body("How can I reset my password?", max_tokens=5))
    assert capped.headers["x-switchyard-cache"] == "miss"
    assert len(fakes.requests_to("openai")) == 3
    trace = await wait_trace(system, para.headers["x-request-id"], "succeeded")
    assert trace["attempts"][0]["cache"]["kind"] == "semantic"
    assert json.dumps(trace).count("reset my password") == 0  # the trace holds no prompt text


async def test_a_hit_answers_in_the_anthropic_format_and_stream_too(cached):
    system, fakes, keys = cached
    fakes.reset()
    fakes.reply("openai", Reply(text="anthropic shaped answer"))
    payload = {"model": "up-1", "max_tokens": 50, "temperature": 0,
               "messages": [{"role": "user", "content": "messages api"}]}
    headers = {**bearer(keys["cached"]), "anthropic-version": "2023-06-01"}
    first = await system.http.post("/v1/messages", json=payload, headers=headers)
    assert first.status_code == 200 and first.headers["x-switchyard-cache"] == "miss", first.text
    hit = await system.http.post("/v1/messages", json=payload, headers=headers)
    assert hit.headers["x-switchyard-cache"] == "hit"
    assert hit.json()["content"][0]["text"] == "anthropic shaped answer"
    async with system.http.stream("POST", "/v1/messages", json={**payload, "stream": True}, headers=headers) as r:
        assert r.headers["x-switchyard-cache"] == "hit"
        events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    deltas = [json.loads(e[6:]) for e in events]
    text = "".join(d["delta"].get("text", "") for d in deltas if d.get("type") == "content_block_delta")
    assert text == "anthropic shaped answer" and deltas[-1]["type"] == "message_stop"
    assert len(fakes.requests_to("openai")) == 1
