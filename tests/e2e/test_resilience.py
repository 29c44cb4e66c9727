"""Resilience end to end, against a fault-injecting fake OpenAI upstream (real HTTP) and a real nats-server:
429 + Retry-After, ejection and probing back by the shared circuit breaker, two router replicas agreeing on
breaker state, operator force-open/closed, and retry amplification under a 50% 5xx rate.

This module runs its own nats-server and Switchyard (with two router replicas), so its breakers, budgets
and consumers are its own.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from services.router.settings import RouterSettings
from shared.state.health import HealthStore
from shared.state.settings import HealthSettings
from shared.bus import Bus
from shared.natsd import NatsServer
from shared.bus.permissions import Access
from shared.settings import TelemetrySettings
from shared.telemetry import Telemetry
from tests.fakes.providers import Fault, FakeProviders
from tests.support.api import finished, wait_trace
from tests.support.system import ADMIN_KEY, MEMBER_KEY, RunningSystem, make_settings, start_replica, start_system
from tests.support.wait import eventually

CATALOG = """
# Every openai-type provider here is the same fake upstream; the fake tells them apart by model.
providers:
  - name: upstream
    type: openai
    base_url: {base}
    api_key: test-key
    timeout_s: 10
    breaker: {{minimum_calls: 4, window_size: 4, open_wait_s: 1.5, half_open_probes: 2}}
  - name: upstream-rl
    type: openai
    base_url: {base}
    api_key: test-key
    breaker: {{enabled: false}}
  - name: upstream-amp
    type: openai
    base_url: {base}
    api_key: test-key
    # 50% failures must not eject it: this provider shows what the retry budget alone does
    breaker: {{failure_rate_threshold: 0.9, minimum_calls: 20, window_size: 40}}
models:
  - name: up-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{{provider: upstream, upstream_model: up-1}}]
  - name: rl-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{{provider: upstream-rl, upstream_model: rl-1}}]
  - name: amp-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{{provider: upstream-amp, upstream_model: amp-1}}]
aliases:
  up-chain: [up-1, mock-1]
"""


class Arrivals:
    """ASGI wrapper around the fake upstream: when each request arrived, and for which model."""

    def __init__(self, app) -> None:
        self.app = app
        self.log: list[tuple[float, str]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        arrived = time.time()
        chunks: list[bytes] = []

        async def replay():
            msg = await receive()
            chunks.append(msg.get("body", b""))
            return msg

        async def record_then_send(message):
            if message["type"] == "http.response.start":
                import json

                try:
                    self.log.append((arrived, json.loads(b"".join(chunks) or b"{}").get("model", "")))
                except ValueError:
                    self.log.append((arrived, ""))
            await send(message)

        await self.app(scope, replay, record_then_send)

    def of(self, model: str) -> list[float]:
        return [t for t, m in self.log if m == model]


@pytest.fixture(scope="module")
def fake():
    providers = FakeProviders()
    providers.app = arrivals = Arrivals(providers.app)
    providers.arrivals = arrivals
    with providers:
        yield providers


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats-resilience")).start()
    yield server
    server.stop()


def router_settings() -> RouterSettings:
    return RouterSettings(health=HealthSettings(flush_interval_s=0.05))


@pytest.fixture(scope="module")
async def resilient(nats, fake, tmp_path_factory):
    """Switchyard without a router in its process, plus two router-only processes (replicas)."""
    data = tmp_path_factory.mktemp("data-resilience")
    catalog = Path(data) / "catalog.yaml"
    catalog.write_text(CATALOG.format(base=fake.base_url("openai")))
    settings = make_settings(nats, data, catalog_path=str(catalog), router=router_settings())
    system = await start_system(settings, "audit,policy,worker,gateway")
    replicas = [await start_replica(settings, "router") for _ in range(2)]
    assert all(r.deps.is_ready() for r in replicas)
    yield system
    for r in replicas:
        await r.stop()
    await system.close()


@pytest.fixture(autouse=True)
def clean_fake(fake):
    fake.reset()
    fake.arrivals.log.clear()
    yield


async def complete(system: RunningSystem, model: str, text: str = "hello", key: str = ADMIN_KEY,
                   **extra) -> httpx.Response:
    return await system.http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                  json={"model": model, "messages": [{"role": "user", "content": text}], **extra})


async def status_of(system: RunningSystem, deployment: str) -> dict:
    r = await system.http.get("/v1/providers/status")
    assert r.status_code == 200, r.text
    return next(row for row in r.json()["data"] if row["deployment"] == deployment)


async def wait_state(system: RunningSystem, deployment: str, state: str, timeout: float = 10) -> dict:
    seen: dict = {}

    async def reached() -> dict | None:
        seen.update(await status_of(system, deployment))
        return dict(seen) if seen["breaker"]["state"] == state else None
    return await eventually(reached, timeout=timeout, interval=0.05,
                            message=lambda: f"{deployment} stayed {seen['breaker']['state']}, not {state}: {seen}")


# ---- 429 + Retry-After ---------------------------------------------------------------------------

async def test_rate_limited_with_retry_after_is_retried_no_sooner(resilient, fake):
    fake.fail("openai", Fault(status=429, retry_after=2))
    started = time.monotonic()
    r = await complete(resilient, "rl-1")
    assert r.status_code == 200, r.text
    assert time.monotonic() - started >= 2.0
    first, second = fake.arrivals.of("rl-1")
    assert second - first >= 2.0, f"the retry came {second - first:.3f}s after the 429"
    trace = await wait_trace(resilient, r.headers["x-request-id"], finished)
    a1, a2 = trace["attempts"]
    assert (a1["outcome"], a2["outcome"]) == ("rate_limited", "success")
    assert a2["kind"] == "retry" and "Retry-After 2s" in a2["reason"]
    assert a2["not_before"] - a1["ts"] >= 2.0
    assert trace["outcomes"] == {"rl-1": "rate_limited", "rl-1#2": "success"}
    body = r.json()["switchyard"]
    assert [p["outcome"] for p in body["path"]] == ["rate_limited", "success"]


async def test_retry_after_beyond_the_deadline_fails_fast_with_429(resilient, fake):
    fake.fail("openai", Fault(status=429, retry_after=5))
    started = time.monotonic()
    r = await resilient.http.post("/v1/chat/completions", headers={"x-switchyard-timeout": "3"},
                                  json={"model": "rl-1", "messages": [{"role": "user", "content": "x"}]})
    assert time.monotonic() - started < 2.0  # no hanging until the deadline
    assert r.status_code == 429 and r.headers["retry-after"] == "5"
    assert len(fake.arrivals.of("rl-1")) == 1


# ---- ejection, probing, restoration ---------------------------------------------------------------

async def test_failing_provider_is_ejected_then_probed_and_restored(resilient, fake):
    dep = "upstream/up-1"
    fake.always("openai", Fault(status=503))
    for _ in range(4):  # each: up-1 fails, mock-1 answers (fallback)
        r = await complete(resilient, "up-chain")
        assert r.status_code == 200 and r.json()["model"] == "mock-1"
    row = await wait_state(resilient, dep, "open")
    assert row["breaker"]["reason"].startswith("failure rate 100%")
    calls = len(fake.arrivals.of("up-1"))
    assert calls == 4

    # While open: zero calls reach it; requests go straight to the fallback, and say why.
    for _ in range(5):
        r = await complete(resilient, "up-chain")
        assert r.status_code == 200
        ext = r.json()["switchyard"]
        assert ext["attempts"] == 1 and ext["model"] == "mock-1"
        excluded = {c["deployment"]: c["excluded"] for c in ext["candidates"]}
        assert excluded[dep] == "circuit_open"
    assert len(fake.arrivals.of("up-1")) == calls

    # Healed: after the open wait, probes go through; two good probes close the breaker.
    fake.always("openai", None)
    await wait_state(resilient, dep, "half_open", timeout=5)
    probe_ids = []
    for _ in range(2):
        r = await complete(resilient, "up-chain")
        assert r.status_code == 200 and r.json()["model"] == "up-1"
        probe_ids.append(r.headers["x-request-id"])
    row = await wait_state(resilient, dep, "closed")
    assert row["breaker"]["reason"] == "2 of 2 probes succeeded"
    trace = await wait_trace(resilient, probe_ids[0], finished)
    assert trace["attempts"][0]["breaker_state"] == "half_open"  # the state when the router decided
    r = await complete(resilient, "up-chain")
    assert r.json()["model"] == "up-1"


async def test_provider_auth_failure_trips_the_deployment_and_falls_back(resilient, fake):
    dep = "upstream/up-1"
    await resilient.http.post("/v1/providers/breaker", json={"deployment": dep, "action": "reset"})
    fake.fail("openai", Fault(status=401))
    r = await complete(resilient, "up-chain")
    assert r.status_code == 200 and r.json()["model"] == "mock-1"
    assert [p["outcome"] for p in r.json()["switchyard"]["path"]] == ["auth", "success"]
    row = await wait_state(resilient, dep, "open")
    assert "401/403" in row["breaker"]["reason"]
    await resilient.http.post("/v1/providers/breaker", json={"deployment": dep, "action": "reset"})


# ---- two router replicas, one breaker ---------------------------------------------------------------

async def test_two_router_replicas_see_the_same_breaker_state(resilient, fake):
    dep = "upstream/up-1"
    r = await resilient.http.post("/v1/providers/breaker", json={"deployment": dep, "action": "force_open"})
    assert r.status_code == 200 and r.json()["data"][0]["breaker"]["state"] == "forced_open"

    # Both replicas read the breaker from KV: every decision, whichever replica made it, excludes up-1.
    async def one(i: int) -> dict:
        r = await complete(resilient, "up-chain", text=f"replica check {i}")
        assert r.status_code == 200
        return r.json()["switchyard"]

    seen = await asyncio.gather(*(one(i) for i in range(40)))
    assert len({s["decided_by"] for s in seen}) == 2, "both router replicas should have taken requests"
    for s in seen:
        assert s["model"] == "mock-1"
        assert {c["deployment"]: c["excluded"] for c in s["candidates"]}[dep] == "forced_open"
    assert fake.arrivals.of("up-1") == []

    # And two independent readers of the shared state agree with each other.
    readers = []
    for _ in range(2):
        bus = await Bus(resilient.deps.settings.nats, Telemetry(TelemetrySettings()), access=Access("gateway")).connect()
        rs = router_settings()
        readers.append((bus, await HealthStore.open(bus, role="test", breaker=rs.breaker, health=rs.health,
                                                    retry_budget_window_s=rs.retry_budget_window_s)))
    try:
        now = time.time()
        assert {h.view().state(dep, now) for _, h in readers} == {"forced_open"}
        await readers[0][1].operate(dep, "reset")
        await eventually(lambda: readers[1][1].view().state(dep, time.time()) == "closed", timeout=2)
        assert readers[1][1].view().state(dep, time.time()) == "closed"
    finally:
        for bus, h in readers:
            await h.close()
            await bus.close()

    r = await complete(resilient, "up-chain")
    assert r.json()["model"] == "up-1"


async def test_operating_breakers_needs_an_admin_key(resilient):
    r = await resilient.http.post("/v1/providers/breaker", headers={"authorization": f"Bearer {MEMBER_KEY}"},
                                  json={"deployment": "upstream/up-1", "action": "force_open"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    r = await resilient.http.post("/v1/providers/breaker", json={"deployment": "nope/x", "action": "reset"})
    assert r.status_code == 404
    r = await resilient.http.post("/v1/providers/breaker", json={"deployment": "upstream/up-1", "action": "explode"})
    assert r.status_code == 400
    # any key may read the status
    r = await resilient.http.get("/v1/providers/status", headers={"authorization": f"Bearer {MEMBER_KEY}"})
    assert r.status_code == 200


async def test_forced_open_everywhere_fails_fast_with_503_and_retry_after(resilient):
    for dep in ("upstream/up-1", "mock/mock-1"):
        await resilient.http.post("/v1/providers/breaker", json={"deployment": dep, "action": "force_open"})
    try:
        started = time.monotonic()
        r = await complete(resilient, "up-chain")
        assert time.monotonic() - started < 1.0
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "no_healthy_candidates"
    finally:
        for dep in ("upstream/up-1", "mock/mock-1"):
            await resilient.http.post("/v1/providers/breaker", json={"deployment": dep, "action": "reset"})


# ---- retry amplification ------------------------------------------------------------------------------

async def test_retry_amplification_at_half_failures_stays_bounded(resilient, fake):
    requests = 100
    for _ in range(2 * requests):  # upstream calls alternate: fail, succeed, fail, succeed ...
        fake.fail("openai", Fault(status=503))
        fake.fail("openai", Fault())
    gate = asyncio.Semaphore(10)

    async def one(i: int) -> int:
        async with gate:
            r = await complete(resilient, "amp-1", text=f"amplification {i}")
            return r.status_code

    codes = await asyncio.gather(*(one(i) for i in range(requests)))
    calls = len(fake.arrivals.of("amp-1"))
    amplification = calls / requests
    ok = codes.count(200)
    print(f"upstream calls {calls} for {requests} requests: amplification {amplification:.2f}; {ok} succeeded")
    assert amplification <= 1.3
    assert calls > requests  # some failures were retried ...
    assert ok > requests / 2  # ... and the retries helped
    assert set(codes) <= {200, 502}
