"""Fair draining of the batch lane: the next provider call goes to the tenant with the fewest calls running.

A worker reads one provider's batch lane (``sy.evt.attempt.<provider>.batch``)
in stream order. First-in-first-out, one tenant's 5,000 queued jobs would all
run before another tenant's 10 queued behind them. ``FairSlots`` decouples
reading from calling: the lane reads up to ``read_ahead`` jobs beyond the
``slots`` calls it makes at once, and each freed slot goes to the waiting job
of the tenant with the fewest calls running (the longest-waiting job of that
tenant; ties go to the tenant served longest ago). Jobs waiting here are still
in flight for JetStream (the bus keeps them alive with ``in_progress``).

The read-ahead only sees what is at the front of the stream, so while another
tenant has jobs queued in the lane (``queued``: read from the stream's
per-subject counts, the batch subjects carry the tenant) and none waiting here
yet, a tenant may hold
only ``tenant_waiting`` of the waiting places while more jobs wait in the
stream behind (the delivery says how many): its further jobs go back to
the stream (``Defer``: a nak with a delay, not a failure), which lets the lane
read past its backlog to the other tenants' jobs. A job goes back until about
its tenant's turn — its tenant's jobs waiting here and sent back before it,
times the calls' mean duration (measured), over the slots — so a backlog
returns about as fast as it is drained: few jobs come back more than once,
and slots do not idle while a backlog sits out a delay. The flooding tenant
loses nothing: whenever a slot is free and nobody else waits, its waiting
jobs take it, so alone it still uses every slot. Jobs sent back count as
deliveries, so the lane's consumer allows many (``max_deliver``) and never
sends one back on its last two: no job can starve or become poison by it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator

from services.workers.settings import BatchLaneSettings
from shared.errors import Defer


class FairSlots:
    """``slots`` provider calls at once, granted fairly across tenants, with a bounded wait per tenant."""

    def __init__(self, slots: int, s: BatchLaneSettings, max_deliver: int, rng: random.Random | None = None) -> None:
        self.slots = max(1, slots)
        self.tenant_waiting = s.tenant_waiting
        self.defer_s = s.defer_s
        self.max_defer_s = s.max_defer_s
        self.max_deliver = max_deliver
        self.running: dict[str, int] = {}
        self.queued: frozenset[str] = frozenset()  # the tenants with jobs in the lane's stream (kept up to date)
        self.hold_s = s.defer_s  # the calls' mean duration (exponentially weighted), first guessed
        self._out: dict[str, int] = {}  # per tenant: jobs sent back and not seen again yet
        self.busy = 0
        self._waiting: dict[str, deque[asyncio.Future]] = {}
        self._served: dict[str, int] = {}  # tenant → when it was last granted a slot (a counter, for ties)
        self._tick = itertools.count()
        self._rng = rng or random.Random()

    def contended(self, tenant: str) -> bool:
        """Whether another tenant has jobs queued in the stream and none read yet: only then is reading past
        ``tenant``'s backlog worth sending its jobs back (one waiting here is already in the fair turn)."""
        return any(t != tenant and t not in self._waiting for t in self.queued)

    def waiting(self, tenant: str) -> int:
        return len(self._waiting.get(tenant, ()))

    @asynccontextmanager
    async def slot(self, tenant: str, num_delivered: int, pending: int) -> AsyncIterator[None]:
        """Hold one call slot for ``tenant``: at once when one is free and nobody waits, else in fair turn.

        Raises ``Defer`` when ``tenant`` already holds its waiting places and more jobs wait in the stream."""
        out = self._out.get(tenant, 0)
        if num_delivered > 1 and out:  # (likely) one sent back earlier, come back
            out -= 1
            if out:
                self._out[tenant] = out
            else:
                del self._out[tenant]
        if self.busy >= self.slots or self._waiting:
            if (pending > 0 and self.waiting(tenant) >= self.tenant_waiting and self.contended(tenant)
                    and num_delivered < self.max_deliver - 2):
                # Back until about its turn: behind its tenant's jobs waiting here and those sent back before it.
                turn = (self.waiting(tenant) + out + 1) * self.hold_s / self.slots
                delay = min(self.max_defer_s, max(self.defer_s, turn)) * self._rng.uniform(0.8, 1.2)
                self._out[tenant] = out + 1
                raise Defer(delay, f"tenant {tenant} holds its share of the batch lane's waiting places")
            granted = asyncio.get_running_loop().create_future()
            queue = self._waiting.setdefault(tenant, deque())
            queue.append(granted)
            try:
                await granted
            except BaseException:
                if granted.done() and not granted.cancelled():
                    self._release(tenant)  # granted as it was cancelled: pass the slot on
                elif granted in queue:
                    queue.remove(granted)
                    if not queue and self._waiting.get(tenant) is queue:
                        del self._waiting[tenant]
                raise
        else:
            self._take(tenant)
        started = time.monotonic()
        try:
            yield
        finally:
            self.hold_s += 0.1 * (time.monotonic() - started - self.hold_s)
            self._release(tenant)

    def _take(self, tenant: str) -> None:
        self.busy += 1
        self.running[tenant] = self.running.get(tenant, 0) + 1
        self._served[tenant] = next(self._tick)

    def _release(self, tenant: str) -> None:
        self.busy -= 1
        left = self.running[tenant] - 1
        if left:
            self.running[tenant] = left
        else:
            del self.running[tenant]
            if tenant not in self._waiting:
                self._served.pop(tenant, None)  # idle: nothing of it to remember
        while self._waiting and self.busy < self.slots:
            # The tenant with the fewest calls running; among equals, the one served longest ago.
            nxt = min(self._waiting, key=lambda t: (self.running.get(t, 0), self._served.get(t, -1)))
            queue = self._waiting[nxt]
            granted = queue.popleft()
            if not queue:
                del self._waiting[nxt]
            if granted.done():
                continue  # its waiter was cancelled: nothing to grant
            self._take(nxt)
            granted.set_result(None)
