"""Fair admission across tenants: a tenant's flood may hold only its share of a policy process's in-flight window.

Policy reads ``sy.evt.requested`` through one durable consumer, in stream
order, with up to ``consumer.concurrency`` messages in flight per process.
Without a limit per tenant, 800 jobs from one tenant fill that window and
every other tenant's request waits behind all of them. ``FairShare`` counts
the admissions each tenant has in flight in this process; while requests
wait in the stream behind the one just delivered (the delivery says how
many), a request whose tenant already holds its share (``tenant_share`` of
the window, at least ``min_in_flight``) is sent back to the stream for a
moment (``Defer``: a nak with a delay, not a failure). Its slot is free at
once, so the consumer reads on and reaches the other tenants' requests queued
behind the flood; the flooding tenant keeps its share and loses nothing.
With nothing waiting behind, nobody is held back by a tenant's many requests
in flight, and nothing is deferred. Whose requests wait behind cannot be
known without reading them, so a lone tenant with a backlog is held to its
share too: its backlog drains a little later (the deferral delays), never
slower than its share of the window allows.

A request is sent back at most ``max_defers`` times (counted by its delivery
number, whichever replica deferred it), then admitted whatever its tenant
holds: no request starves, and deferring can never exhaust the deliveries
that would turn a request into poison.

Deferrals are not failures: ``deliveries`` gives the number of deliveries that
were not deferrals by this process, which is what admission's "first
delivery" and fail-closed retry logic should count (a request deferred here
and then hit by a KV blip still gets its retry). Deferrals by another replica
count as deliveries, which can only make admission read more and deny sooner.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

from services.policy.settings import FairnessSettings
from shared.errors import Defer

# Requests remembered as deferred by this process, so their deliveries can be told from failures.
REMEMBERED = 65536


class FairShare:
    """In-flight admissions per tenant in this process, and the decision to send a request back."""

    def __init__(self, s: FairnessSettings, window: int, max_deliver: int,
                 rng: random.Random | None = None) -> None:
        self.enabled = s.enabled
        self.cap = max(s.min_in_flight, int(window * s.tenant_share))
        self.defer_s = s.defer_s
        # Never defer the last deliveries: a message out of deliveries becomes poison (a failed request).
        self.max_defers = min(s.max_defers, max_deliver - 2)
        self.window = window
        self.in_flight: dict[str, int] = {}
        self._deferred: OrderedDict[str, int] = OrderedDict()
        self._rng = rng or random.Random()

    @property
    def active(self) -> bool:
        """Whether a tenant can ever be over its share (a cap at least the window never binds)."""
        return self.enabled and self.cap < self.window and self.max_defers > 0

    def deliveries(self, request_id: str, num_delivered: int) -> int:
        """``num_delivered`` without the deliveries this process deferred (at least 1)."""
        return max(1, num_delivered - self._deferred.get(request_id, 0))

    @contextmanager
    def slot(self, tenant: str, request_id: str, num_delivered: int, pending: int = 0) -> Iterator[None]:
        """Hold one of ``tenant``'s in-flight slots while admitting; raises ``Defer`` when it has none free and
        ``pending`` requests wait in the stream behind this one."""
        held = self.in_flight.get(tenant, 0)
        if self.active and pending > 0 and held >= self.cap and num_delivered <= self.max_defers:
            self._remember(request_id)
            # Later deliveries wait longer; jitter spreads a flood's returns so they do not come back as one.
            delay = self.defer_s * num_delivered * self._rng.uniform(0.5, 1.5)
            raise Defer(delay, f"tenant {tenant} holds its share of admission ({held} in flight)")
        self.in_flight[tenant] = held + 1
        try:
            yield
        finally:
            left = self.in_flight[tenant] - 1
            if left:
                self.in_flight[tenant] = left
            else:
                del self.in_flight[tenant]
        self._deferred.pop(request_id, None)  # decided: nothing more to count (a retry keeps the count)

    def _remember(self, request_id: str) -> None:
        self._deferred[request_id] = self._deferred.get(request_id, 0) + 1
        self._deferred.move_to_end(request_id)
        while len(self._deferred) > REMEMBERED:
            self._deferred.popitem(last=False)
