"""``Stores``: one object per shared store and process, opened on first use with the settings it was given."""

from __future__ import annotations

import asyncio

from shared.catalog import load_catalog
from shared.state.buckets import BUDGETS, RATES, TEAMS
from shared.state.settings import BreakerSettings, HealthSettings
from shared.state.stores import Stores


class BucketsOpened:
    """Stands in for the bus: records which buckets were opened, and hands out a placeholder per bucket."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    async def kv(self, bucket):
        self.opened.append(bucket.name)
        await asyncio.sleep(0)  # let a concurrent caller in, as a real round trip would
        return f"kv:{bucket.name}"


def stores(bus: BucketsOpened) -> Stores:
    return Stores(bus, load_catalog(None), cas_timeout_s=1.5, breaker=BreakerSettings(), health=HealthSettings(),
                  retry_budget_window_s=10.0)


async def test_every_caller_gets_the_same_store_with_the_configured_timeout():
    bus = BucketsOpened()
    s = stores(bus)
    assert bus.opened == []  # nothing is opened before it is used
    first = await asyncio.gather(s.teams(), s.teams(), s.budgets(), s.limiter())
    assert first[0] is first[1] is await s.teams()
    assert first[2] is await s.budgets() and first[3] is await s.limiter()
    assert {st.cas_timeout_s for st in first} == {1.5}
    assert [st.kv for st in first[1:]] == [f"kv:{TEAMS.name}", f"kv:{BUDGETS.name}", f"kv:{RATES.name}"]
