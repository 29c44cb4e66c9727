"""Finding 3: one tenant cannot evict another's accepted work.

The attacks:

- a stream at its limit: with discard-old it dropped the oldest accepted events; now it refuses the new one
  and keeps every accepted event (the bus alone, ``max_msgs`` 5);
- a tenant floods a small stream with jobs while a slow provider holds them: another tenant's job accepted
  before is not lost, every flooding job the gateway accepted (202) completes, and the rest are refused
  with 503, ``Retry-After`` and a message saying they were not accepted; the stream's fill is on /metrics;
- a tenant queues past its caps (jobs, bytes): 429 with ``Retry-After``, not accepted, while another tenant
  still gets in; the count goes back as the jobs end.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator

import httpx
import msgspec
import nats
import pytest

from services.gateway.settings import GatewaySettings
from shared.bus import Bus
from shared.errors import ServiceUnavailable
from shared.natsd import NatsServer, free_port
from shared.settings import TelemetrySettings
from shared.state.queues import QueueRecord
from shared.telemetry import Telemetry
from tests.support.api import poll_job
from tests.support.events import requested
from tests.support.system import MEMBER_KEY, OTHER_TENANT_KEY, RunningSystem, make_settings, start_system
from tests.support.wait import eventually

CATALOG = """
providers:
  - name: mock-queue
    type: mock
    max_in_flight: {in_flight}
    options: {{latency_ms: {latency_ms}}}
models:
  - name: queue-1
    input_per_mtok: 0.1
    output_per_mtok: 0.1
    deployments: [{{provider: mock-queue, upstream_model: queue-1}}]
"""
PAD = "x" * 6000  # what makes a flooding job weigh on the stream


@contextlib.asynccontextmanager
async def running(tmp: Path, *, in_flight: int, latency_ms: int,
                  **overrides) -> AsyncIterator[tuple[NatsServer, RunningSystem]]:
    """Switchyard on a nats-server of its own, with one slow provider (``queue-1``)."""
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG.format(in_flight=in_flight, latency_ms=latency_ms))
    server = NatsServer(tmp / "nats").start()
    nats_overrides = overrides.pop("nats", {})
    settings = make_settings(server, tmp / "data", catalog_path=str(catalog), **overrides)
    for name, value in nats_overrides.items():
        setattr(settings.nats, name, value)
    system = await start_system(settings)
    try:
        yield server, system
    finally:
        await system.close()
        server.stop()


def job(text: str = "q") -> dict:
    return {"model": "queue-1", "messages": [{"role": "user", "content": text}]}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def queued_of(server: NatsServer, tenant: str) -> tuple[int, int]:
    """(jobs, bytes) the tenant's queue record counts now."""
    nc = await nats.connect(**server.connect_options())
    try:
        kv = await nc.jetstream().key_value("sy_queues")
        try:
            entry = await kv.get(f"q.{tenant}")
        except nats.js.errors.KeyNotFoundError:
            return 0, 0
        return msgspec.json.decode(entry.value, type=QueueRecord).totals()
    finally:
        await nc.close()


async def test_a_full_stream_refuses_new_events_and_keeps_every_accepted_one(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    bus = Bus(server.client_settings(max_msgs=5, stream="SY_FULL"), Telemetry(TelemetrySettings()))
    try:
        await bus.connect()
        await bus.ensure_stream()
        for i in range(5):
            await bus.publish(requested(rid=f"req_kept{i}"))
        with pytest.raises(ServiceUnavailable) as refused:
            await bus.publish(requested(rid="req_one_too_many"))
        assert refused.value.code == "stream_full" and refused.value.retry_after
        assert "not accepted" in refused.value.message
        state = (await bus.js.stream_info("SY_FULL")).state
        assert (state.messages, state.first_seq, state.last_seq) == (5, 1, 5)  # nothing accepted was dropped
    finally:
        await bus.close()
        server.stop()


@pytest.fixture(scope="module")
async def flooded(tmp_path_factory) -> AsyncIterator[tuple[NatsServer, RunningSystem]]:
    # A small stream that stops taking new requests at a third full (the rest: room for accepted work to move
    # on), read every 20 ms; a provider that holds four jobs at a time for 300 ms each.
    async with running(Path(tmp_path_factory.mktemp("flood")), in_flight=4, latency_ms=300,
                       nats={"max_bytes": 512 * 1024, "admit_below": 0.3, "capacity_poll_s": 0.02,
                             "sweep_s": 0.1}) as stack:
        yield stack


async def test_a_tenant_flooding_the_stream_evicts_nobody_and_is_told_not_accepted(flooded):
    server, system = flooded
    http = system.http
    victim = await http.post("/v1/jobs", headers=bearer(OTHER_TENANT_KEY), json=job("the other tenant's job"))
    assert victim.status_code == 202, victim.text

    accepted, refused = [], None
    for i in range(400):
        r = await http.post("/v1/jobs", headers=bearer(MEMBER_KEY), json=job(f"flood {i} {PAD}"))
        if r.status_code == 202:
            accepted.append(r.json()["id"])
            continue
        refused = r
        break
    assert refused is not None, "the stream never filled"
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "stream_full" and "not accepted" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 120
    assert len(accepted) >= 5

    metrics = (await http.get("/metrics")).text
    assert 'switchyard_requests_not_accepted_total{reason="stream_full"}' in metrics
    assert "switchyard_stream_fill_ratio" in metrics

    # Nothing accepted is lost: the other tenant's job and every flooding job that got its 202 complete.
    assert (await poll_job(system, victim.json()["id"], key=OTHER_TENANT_KEY, timeout=60))["status"] == "completed"
    for job_id in accepted:
        assert (await poll_job(system, job_id, key=MEMBER_KEY, timeout=60))["status"] == "completed"
    # Drained, the stream takes work again, and the flood left no count behind against the tenant.
    again = await eventually(lambda: _accepted(http), timeout=20, message="the stream did not take work again")
    assert (await poll_job(system, again, key=MEMBER_KEY, timeout=30))["status"] == "completed"
    assert await eventually(lambda: _drained(server, "default"), timeout=10) == (0, 0)


async def _accepted(http: httpx.AsyncClient) -> str | None:
    r = await http.post("/v1/jobs", headers=bearer(MEMBER_KEY), json=job("after the flood"))
    return r.json()["id"] if r.status_code == 202 else None


async def _drained(server: NatsServer, tenant: str) -> tuple[int, int] | None:
    counts = await queued_of(server, tenant)
    return counts if counts == (0, 0) else None


@pytest.fixture(scope="module")
async def capped(tmp_path_factory) -> AsyncIterator[tuple[NatsServer, RunningSystem]]:
    async with running(Path(tmp_path_factory.mktemp("caps")), in_flight=1, latency_ms=400,
                       gateway=GatewaySettings(port=free_port(), max_queued_jobs=3, max_queued_bytes=12_000)) as stack:
        yield stack


async def test_a_tenant_past_its_queue_caps_gets_429_and_others_still_get_in(capped):
    server, system = capped
    http = system.http
    big = await http.post("/v1/jobs", headers=bearer(MEMBER_KEY), json=job("b" * 13_000))
    assert big.status_code == 429, big.text  # past the bytes cap on its own
    assert big.json()["error"]["code"] == "job_queue_full" and "not accepted" in big.json()["error"]["message"]

    ids = []
    for i in range(3):
        r = await http.post("/v1/jobs", headers=bearer(MEMBER_KEY), json=job(f"capped {i}"))
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    over = await http.post("/v1/jobs", headers=bearer(MEMBER_KEY), json=job("one too many"))
    assert over.status_code == 429, over.text
    assert over.json()["error"]["code"] == "job_queue_full"
    assert 1 <= int(over.headers["retry-after"]) <= 120
    other = await http.post("/v1/jobs", headers=bearer(OTHER_TENANT_KEY), json=job("another tenant"))
    assert other.status_code == 202, other.text  # the caps are per tenant

    # A cancelled job and finished ones give their place back.
    assert (await http.post(f"/v1/jobs/{ids[-1]}/cancel", headers=bearer(MEMBER_KEY))).status_code == 200
    for job_id in ids[:-1]:
        assert (await poll_job(system, job_id, key=MEMBER_KEY, timeout=30))["status"] == "completed"
    assert await eventually(lambda: _drained(server, "default"), timeout=10) == (0, 0)
    r = await http.post("/v1/jobs", headers=bearer(MEMBER_KEY), json=job("room again"))
    assert r.status_code == 202, r.text
    assert (await poll_job(system, r.json()["id"], key=MEMBER_KEY, timeout=30))["status"] == "completed"
    assert (await poll_job(system, other.json()["id"], key=OTHER_TENANT_KEY, timeout=30))["status"] == "completed"
