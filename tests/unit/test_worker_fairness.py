"""The batch lane's fair call slots (services/workers/fairness.py), without a bus: who gets the next slot, when a
job is sent back, and that a waiter cancelled at any point leaks no slot."""

from __future__ import annotations

import asyncio
import random

import pytest

from services.workers.fairness import FairSlots
from services.workers.settings import BatchLaneSettings
from shared.errors import Defer


def slots(n: int = 2, **kw) -> FairSlots:
    return FairSlots(n, BatchLaneSettings(**kw), max_deliver=1000, rng=random.Random(7))


async def test_a_freed_slot_goes_to_the_tenant_with_the_fewest_calls_running():
    fair = slots(2, tenant_waiting=1000)
    order: list[str] = []

    async def job(tenant: str) -> None:
        async with fair.slot(tenant, 1, 0):
            order.append(tenant)
            await asyncio.sleep(0.005)

    flood = [asyncio.ensure_future(job("a")) for _ in range(20)]
    await asyncio.sleep(0)  # the flood holds both slots and waits in line
    few = [asyncio.ensure_future(job("b")) for _ in range(3)]
    await asyncio.gather(*flood, *few)
    # b's three jobs queued behind 18 of a's: each takes the next slot a call of a's frees.
    assert [i for i, t in enumerate(order) if t == "b"] == [2, 4, 6], order
    assert fair.busy == 0 and not fair.running


async def test_a_backlog_is_sent_back_only_while_another_tenant_waits_unseen_in_the_stream():
    fair = slots(1, tenant_waiting=2)
    hold = asyncio.Event()

    async def job(tenant: str, pending: int) -> None:
        async with fair.slot(tenant, 1, pending):
            await hold.wait()

    running = [asyncio.ensure_future(job("a", 100)) for _ in range(3)]  # one call, two waiting
    await asyncio.sleep(0)
    # Alone in the lane: a's next job waits here too (nobody to read past it for).
    alone = asyncio.ensure_future(job("a", 100))
    await asyncio.sleep(0)
    assert not alone.done() and fair.waiting("a") == 3
    # b has jobs queued in the stream, none read yet: a's further jobs go back so the lane reads on.
    fair.queued = frozenset({"a", "b"})
    with pytest.raises(Defer) as sent_back:
        async with fair.slot("a", 1, 100):
            pass
    assert sent_back.value.delay_s >= fair.defer_s
    # Nothing more behind it in the stream: no point sending it back.
    last = asyncio.ensure_future(job("a", 0))
    await asyncio.sleep(0)
    assert not last.done()
    # Once one of b's jobs waits here, b is in the fair turn: a is not sent back any more.
    b = asyncio.ensure_future(job("b", 100))
    await asyncio.sleep(0)
    late = asyncio.ensure_future(job("a", 100))
    await asyncio.sleep(0)
    assert not late.done()
    hold.set()
    await asyncio.gather(*running, alone, last, b, late)
    assert fair.busy == 0


async def test_never_sent_back_on_its_last_deliveries():
    fair = FairSlots(1, BatchLaneSettings(tenant_waiting=1), max_deliver=5)
    fair.queued = frozenset({"a", "b"})
    hold = asyncio.Event()

    async def job(delivery: int) -> None:
        async with fair.slot("a", delivery, 10):
            await hold.wait()

    first = [asyncio.ensure_future(job(1)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Defer):
        async with fair.slot("a", 2, 10):
            pass
    kept = asyncio.ensure_future(job(3))  # max_deliver - 2: waits instead
    await asyncio.sleep(0)
    assert not kept.done()
    hold.set()
    await asyncio.gather(*first, kept)


async def test_cancelled_waiters_leak_no_slot():
    fair = slots(1, tenant_waiting=100)
    hold = asyncio.Event()

    async def job(tenant: str) -> None:
        async with fair.slot(tenant, 1, 0):
            await hold.wait()

    holder = asyncio.ensure_future(job("a"))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(job(t)) for t in ("a", "b", "c")]
    await asyncio.sleep(0)
    waiters[1].cancel()  # cancelled while waiting
    hold.set()
    await asyncio.sleep(0)  # the holder frees its slot: granted to a waiter...
    waiters[0].cancel()  # ...which may be cancelled right then
    await asyncio.gather(holder, *waiters, return_exceptions=True)
    assert fair.busy == 0 and not fair.running and not fair.waiting("a")
    async with fair.slot("d", 1, 0):  # and the slot is there for the next
        assert fair.busy == 1
