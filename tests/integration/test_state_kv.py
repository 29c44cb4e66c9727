"""The one compare-and-set helper against a real nats-server: contending writers, create-only, missing keys."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from shared.bus import Bucket, Bus
from shared.errors import ServiceUnavailable
from shared.settings import TelemetrySettings
from shared.state.kv import Codec, cas, create, create_or_read, kv_get, read
from shared.telemetry import Telemetry


class Count(msgspec.Struct):
    """A stored value for the tests."""

    n: int = 0


CODEC = Codec(Count)


@pytest.fixture(scope="module")
async def bus(nats_server):
    b = Bus(nats_server.client_settings(), Telemetry(TelemetrySettings()))  # the operator: test buckets
    await b.connect()
    yield b
    await b.close()


def bump(current: Count | None) -> tuple[Count, int]:
    n = (current.n if current else 0) + 1
    return Count(n), n


async def test_contending_writers_lose_no_update(bus):
    kv = await bus.kv(Bucket("t_state_cas"))
    writers, each = 8, 10

    async def writer() -> list[int]:
        return [await cas(kv, "counter", CODEC, bump, timeout_s=20) for _ in range(each)]

    results = await asyncio.gather(*(writer() for _ in range(writers)))
    seen = sorted(n for r in results for n in r)
    assert seen == list(range(1, writers * each + 1))  # every increment saw its own value, none was lost
    assert (await read(kv, "counter", CODEC)).n == writers * each


async def test_create_only_has_one_winner(bus):
    kv = await bus.kv(Bucket("t_state_create"))
    won = await asyncio.gather(*(create(kv, "once", CODEC, Count(i)) for i in range(6)))
    assert sorted(won) == [False] * 5 + [True]
    stored = await read(kv, "once", CODEC)
    assert won[stored.n] is True
    assert await create_or_read(kv, "once", CODEC, Count(99)) == (stored, False)


async def test_a_deleted_key_is_missing_and_can_be_created_again(bus):
    kv = await bus.kv(Bucket("t_state_deleted"))
    assert await cas(kv, "k", CODEC, bump) == 1
    await kv.delete("k")
    assert await kv_get(kv, "k") is None
    assert await cas(kv, "k", CODEC, bump) == 1  # starts over from "missing"


async def test_a_missing_bucket_is_unavailable_not_a_missing_key(bus):
    kv = await bus.kv(Bucket("t_state_gone"))
    await bus.js.delete_key_value("t_state_gone")
    with pytest.raises(ServiceUnavailable):
        await kv_get(kv, "k", "test store")
    with pytest.raises(ServiceUnavailable):
        await cas(kv, "k", CODEC, bump, what="test store")
