"""``Stores``: the shared KV stores of one process, built once from settings and handed to every service.

Policy admits with these objects and the gateway's admin API reads the same
ones, with the same compare-and-set timeout. A bucket is opened on first use,
so a process that never touches a store never opens its bucket. Health is
different: every role of a process (router, worker, gateway) keeps its own
watched ``HealthStore`` with its own writer id, opened by ``open_health``.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from shared.catalog import Catalog
from shared.state.budgets import BudgetStore
from shared.state.buckets import BUDGETS, CACHE, PROMPTS, QUEUES, RATES, TEAMS
from shared.state.cache import CacheStore
from shared.state.health import HealthStore
from shared.state.prompts import PromptStore
from shared.state.queues import TenantQueues
from shared.state.ratelimit import RateLimiter
from shared.state.settings import BreakerSettings, HealthSettings
from shared.state.teams import TeamStore

if TYPE_CHECKING:
    from shared.bus import Bucket, Bus

S = TypeVar("S")


class Stores:
    """Teams, budgets, rate limits, the response cache and prompt templates (one object each per process) and the
    health stores' settings."""

    def __init__(self, bus: "Bus", catalog: Catalog, *, cas_timeout_s: float, breaker: BreakerSettings,
                 health: HealthSettings, retry_budget_window_s: float, metrics=None,
                 clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self.catalog = catalog
        self.cas_timeout_s = cas_timeout_s
        self.breaker = breaker
        self.health = health
        self.retry_budget_window_s = retry_budget_window_s
        self.metrics = metrics
        self.clock = clock
        self._opened: dict[str, Any] = {}

    async def _store(self, bucket: Bucket, make: Callable[..., S]) -> S:
        store = self._opened.get(bucket.name)
        if store is None:
            kv = await self.bus.kv(bucket)
            # Another caller may have opened it while this one waited: keep the first, so all share one.
            store = self._opened.setdefault(bucket.name, make(kv, clock=self.clock, cas_timeout_s=self.cas_timeout_s))
        return store

    async def teams(self) -> TeamStore:
        return await self._store(TEAMS, TeamStore)

    async def budgets(self) -> BudgetStore:
        return await self._store(BUDGETS, BudgetStore)

    async def limiter(self) -> RateLimiter:
        return await self._store(RATES, RateLimiter)

    async def cache(self) -> CacheStore:
        async def purge(keys: str) -> None:  # the team's records leave the stream, not just its index
            await self.bus.js.purge_stream(f"KV_{CACHE.name}", subject=f"$KV.{CACHE.name}.{keys}")

        return await self._store(CACHE, functools.partial(CacheStore, purge=purge))

    async def queues(self) -> TenantQueues:
        """Per-tenant queued-job counts (the gateway admits against them; whoever ends a job gives it back)."""
        return await self._store(QUEUES, TenantQueues)

    async def prompts(self) -> PromptStore:
        return await self._store(PROMPTS, PromptStore)

    async def open_health(self, role: str) -> HealthStore:
        """A new watched health store for ``role`` (its writer id names it in KV); the caller closes it."""
        return await HealthStore.open(self.bus, role=role, breaker=self.breaker, health=self.health,
                                      retry_budget_window_s=self.retry_budget_window_s, catalog=self.catalog,
                                      metrics=self.metrics, cas_timeout_s=self.cas_timeout_s)
