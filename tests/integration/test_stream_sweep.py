"""The stream sweep against a real nats-server: it removes only what every reader has acknowledged.

Each consumer here bears a role's durable name (shared/bus/permissions.py), reads as that service does and
acknowledges when the test says so; the sweep (shared/bus/retention.py) runs in between, stream-wide or, with
no lag allowed, subject by subject. Whatever a reader has not acknowledged must still reach it afterwards,
including events published an instant before a sweep (the server acknowledges a publish before it tells the
consumers about it) and the other filter of a consumer with two.
"""

from __future__ import annotations

import pytest

from shared.bus import Bus, Subscription
from shared.bus.retention import Sweeper
from shared.events import ADMITTED, ALL_EVENTS, ATTEMPT_FAILED, REQUESTED
from shared.natsd import NatsServer
from shared.settings import TelemetrySettings
from shared.telemetry import Telemetry
from tests.support.events import admitted, requested

STREAM = "SY_SWEEP"


@pytest.fixture
async def bus(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    b = Bus(server.client_settings(stream=STREAM), Telemetry(TelemetrySettings()))
    await b.connect()
    await b.ensure_stream()
    yield b
    await b.close()
    server.stop()


async def reader(bus: Bus, durable: str, *subjects: str):
    await bus.ensure_consumer(Subscription(durable, subjects))
    return await bus.js.pull_subscribe_bind(durable, STREAM)


async def take(sub, n: int, ack: bool = True) -> list:
    msgs = await sub.fetch(n, timeout=2)
    if ack:
        for m in msgs:
            await m.ack()
    return msgs


async def stored(bus: Bus) -> int:
    return (await bus.js.stream_info(STREAM)).state.messages


@pytest.mark.parametrize("subject_lag", [1000, 0], ids=["stream-wide", "per-subject"])
async def test_only_what_every_reader_acknowledged_leaves_the_stream(bus, subject_lag):
    audit = await reader(bus, "audit", ALL_EVENTS)
    policy = await reader(bus, "policy", REQUESTED)
    router = await reader(bus, "router", ADMITTED, ATTEMPT_FAILED)
    sweeper = Sweeper(bus, subject_lag=subject_lag)
    for i in range(20):
        await bus.publish(requested(rid=f"req_s{i}"))
    await take(audit, 20)
    await sweeper.sweep()
    assert await stored(bus) == 20  # policy has read none of them

    await take(policy, 10)
    await sweeper.sweep()
    assert await stored(bus) == 10
    assert len(await take(policy, 10)) == 10  # the ten it had not acknowledged are all still there
    await sweeper.sweep()
    assert await stored(bus) == 0

    # The router reads two subjects: a purge of one must not carry it past the other's unread events.
    for i in range(5):
        await bus.publish(admitted(rid=f"req_a{i}"))
    await take(audit, 5)
    await take(router, 5)
    for i in range(3):  # the router's other subject, unread (the payload is not decoded here)
        await bus.replies.publish(ATTEMPT_FAILED, b"{}", {"Nats-Msg-Id": f"failed-{i}"}, 2)
    await take(audit, 3)
    for i in range(5):
        await bus.publish(admitted(rid=f"req_b{i}"))
    await take(audit, 5)
    await sweeper.sweep()
    got = await take(router, 20)
    assert [m.subject for m in got] == [ATTEMPT_FAILED] * 3 + [ADMITTED] * 5


async def test_an_event_published_just_before_a_sweep_is_kept_for_its_readers(bus):
    audit = await reader(bus, "audit", ALL_EVENTS)
    policy = await reader(bus, "policy", REQUESTED)
    sweeper = Sweeper(bus)
    for i in range(30):
        await bus.publish(requested(rid=f"req_r{i}"))
        await sweeper.sweep()
    assert len(await take(policy, 50)) == 30
    assert len(await take(audit, 50)) == 30
    await sweeper.sweep()
    assert await stored(bus) == 0


async def test_work_for_a_reader_without_a_consumer_yet_stays(bus):
    audit = await reader(bus, "audit", ALL_EVENTS)
    for i in range(4):
        await bus.publish(requested(rid=f"req_w{i}"))
    await take(audit, 4)
    await Sweeper(bus, subject_lag=0).sweep()
    assert await stored(bus) == 4  # policy, which reads requests, has not started
    policy = await reader(bus, "policy", REQUESTED)
    assert len(await take(policy, 10)) == 4
