"""The response cache's and the prompt templates' KV stores against a real nats-server: expiry, locks, waiting,
purge per team, coalescing across two worker processes (one upstream call), and template versions under
concurrent writers."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.workers.cache import ResponseCache
from services.workers.settings import CacheSettings
from shared.bus import Bus
from shared.cache import CacheEntry
from shared.canonical import ChatResponse, Choice, Message, Usage
from shared.catalog import load_catalog
from shared.events import AttemptDispatched, CachePlan, CompletionSucceeded, Target, terminal_id
from shared.settings import TelemetrySettings
from shared.state.prompts import TemplateExists, TemplateMessage, TemplateVersion
from shared.state.settings import BreakerSettings, HealthSettings
from shared.state.stores import Stores
from shared.telemetry import Telemetry
from tests.support.clock import SteppedClock
from tests.support.events import chat, ctx

TARGET = Target(deployment="mock/mock-1", provider="mock", model="mock-1", upstream_model="mock-1")
ANSWER = ChatResponse(model="mock-1", choices=[Choice(message=Message(role="assistant", content="cached"))],
                      usage=Usage(prompt_tokens=3, completion_tokens=1))


@pytest.fixture(scope="module")
async def stores(nats_server):
    bus = Bus(nats_server.client_settings(), Telemetry(TelemetrySettings()))
    await bus.connect()
    clock = SteppedClock()
    yield Stores(bus, load_catalog(None), cas_timeout_s=5.0, breaker=BreakerSettings(), health=HealthSettings(),
                 retry_budget_window_s=10.0, clock=clock), clock
    await bus.close()


def entry(now: float, ttl: float = 60.0, source: str = "req_a") -> CacheEntry:
    return CacheEntry(response=ANSWER, created_at=now, expires_at=now + ttl, source=source, cost_usd=0.002)


async def test_an_entry_is_served_until_it_expires(stores):
    s, clock = stores
    cache = await s.cache()
    await cache.put("ttl", "a", "k1", entry(clock(), ttl=10))
    assert (await cache.get("ttl", "a", "k1")).source == "req_a"
    await cache.put("ttl", "a", "k1", entry(clock(), ttl=10, source="req_b"))  # a refresh replaces it
    assert (await cache.get("ttl", "a", "k1")).source == "req_b"
    clock.advance(11)
    assert await cache.get("ttl", "a", "k1") is None
    assert await cache.get("ttl", "b", "k1") is None  # another team never sees it


async def test_a_lock_has_one_holder_until_released_or_expired(stores):
    s, clock = stores
    cache = await s.cache()
    now = clock()
    assert await cache.lock("lk", "a", "k", "w1", now + 30) is None
    holder = await cache.lock("lk", "a", "k", "w2", now + 30)
    assert holder is not None and holder.owner == "w1"
    await cache.unlock("lk", "a", "k", "w2")  # not its lock: nothing happens
    assert (await cache.lock("lk", "a", "k", "w2", now + 30)).owner == "w1"
    await cache.unlock("lk", "a", "k", "w1")
    assert await cache.lock("lk", "a", "k", "w2", now + 1) is None
    clock.advance(2)  # w2 died holding it: after its expiry anyone may take it
    assert await cache.lock("lk", "a", "k", "w3", clock() + 30) is None


async def test_a_waiter_gets_the_holders_answer_or_learns_it_let_go(stores):
    s, clock = stores
    cache = await s.cache()
    now = clock()
    assert await cache.lock("wt", "a", "k", "w1", now + 30) is None
    holder = await cache.lock("wt", "a", "k", "w2", now + 30)

    async def produce() -> None:
        await asyncio.sleep(0.2)
        await cache.put("wt", "a", "k", entry(clock()))
        await cache.unlock("wt", "a", "k", "w1")

    waited, _ = await asyncio.gather(cache.wait("wt", "a", "k", holder, now + 10), produce())
    assert waited is not None and waited.response == ANSWER
    assert await cache.lock("wt", "a", "k2", "w1", now + 30) is None
    holder = await cache.lock("wt", "a", "k2", "w2", now + 30)
    started = time.monotonic()
    _, gave_up = await asyncio.gather(cache.unlock("wt", "a", "k2", "w1"), cache.wait("wt", "a", "k2", holder, now + 10))
    assert gave_up is None and time.monotonic() - started < 2  # the holder failed: no waiting out the bound


async def test_purge_removes_one_teams_records_and_nothing_else(stores):
    s, clock = stores
    cache = await s.cache()
    for tenant, team in (("pg", "a"), ("pg", "b"), ("pg2", "a")):
        await cache.put(tenant, team, "k", entry(clock()))
    await cache.lock("pg", "a", "k", "w1", clock() + 30)
    await cache.purge("pg", "a")
    assert await cache.get("pg", "a", "k") is None
    assert await cache.lock("pg", "a", "k", "w2", clock() + 30) is None  # the lock went with it
    assert await cache.get("pg", "b", "k") is not None and await cache.get("pg2", "a", "k") is not None


def dispatched(rid: str, tenant: str, timeout_s: float = 10.0) -> AttemptDispatched:
    return AttemptDispatched(event_id=f"{rid}.attempt.1", request_id=rid, attempt=1, target=TARGET,
                             request=chat(temperature=0), timeout_s=timeout_s,
                             ctx=ctx(tenant=tenant, cache_plan=CachePlan(mode="use", ttl_s=60)))


class CountingUpstream:
    """The upstream call of an attempt: counts calls, answers after ``latency_s``."""

    def __init__(self, latency_s: float = 0.3) -> None:
        self.calls = 0
        self.latency_s = latency_s

    def call(self, event: AttemptDispatched):
        async def go() -> CompletionSucceeded:
            self.calls += 1
            await asyncio.sleep(self.latency_s)
            return CompletionSucceeded(event_id=terminal_id(event.request_id), request_id=event.request_id,
                                       ctx=event.ctx, attempt=1, target=TARGET, response=ANSWER, cost_usd=0.002,
                                       latency_ms=self.latency_s * 1000)
        return go


async def test_identical_misses_on_two_worker_processes_make_one_upstream_call(stores):
    s, _ = stores
    store = await s.cache()
    # Two workers: separate in-process maps, separate owners; only the KV lock is shared.
    workers = [ResponseCache(store, CacheSettings(), owner=f"worker-{i}") for i in range(2)]
    upstream = CountingUpstream()
    events = [dispatched(f"req_x{i}", "twoproc") for i in range(20)]
    results = await asyncio.gather(*(workers[i % 2].serve(e, upstream.call(e), None) for i, e in enumerate(events)))
    assert upstream.calls == 1
    assert sorted(r.cache.status for r in results) == ["hit"] * 19 + ["miss"]
    assert all(r.response == ANSWER for r in results)
    assert sum(r.cost_usd for r in results) == pytest.approx(0.002)  # only the one upstream call costs


async def test_a_waiter_goes_upstream_itself_when_the_holder_dies(stores):
    s, clock = stores
    store = await s.cache()
    event = dispatched("req_dead", "deadholder")
    from shared.cache import cache_key

    key = cache_key("deadholder", event.ctx.team, TARGET, event.request)
    await store.lock("deadholder", event.ctx.team, key, "a-dead-worker", clock() + 0.5)  # and never comes back
    upstream = CountingUpstream(latency_s=0.0)
    started = time.monotonic()
    result = await ResponseCache(store, CacheSettings()).serve(event, upstream.call(event), None)
    assert upstream.calls == 1 and result.cache.status == "miss"
    assert 0.3 < time.monotonic() - started < 5


def template(tenant: str, text: str = "Hi {{name}}") -> TemplateVersion:
    return TemplateVersion(tenant=tenant, id="greet", version=0, messages=[TemplateMessage(role="user", content=text)])


async def test_template_versions_are_numbered_once_each_under_concurrent_writers(stores):
    s, _ = stores
    prompts = await s.prompts()
    head, first = await prompts.create(template("tpl"), "greetings")
    assert (head.latest, head.active, first.version) == (1, 1, 1)
    with pytest.raises(TemplateExists):
        await prompts.create(template("tpl"))
    added = await asyncio.gather(*(prompts.add_version(template("tpl", f"v{i} {{{{name}}}}"), activate=False)
                                   for i in range(5)))
    assert sorted(v.version for _, v in added) == [2, 3, 4, 5, 6]
    head = await prompts.head("tpl", "greet")
    assert (head.latest, head.active) == (6, 1)
    assert (await prompts.activate("tpl", "greet", 4)).active == 4
    assert (await prompts.version("tpl", "greet", 4)).messages[0].content.endswith("{{name}}")
    await prompts.create(template("tpl-other"))
    assert [h.tenant for h in await prompts.list("tpl")] == ["tpl"]
    assert await prompts.list("nobody") == []
    with pytest.raises(LookupError):
        await prompts.add_version(template("nobody"), activate=True)
