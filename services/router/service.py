"""Router service: reads admitted requests and failed attempts through one durable consumer.

Each router process keeps a ``HealthStore``: a watched copy of the shared
breaker records and observations (JetStream KV), and its own retry-budget
counts, published for the other replicas. Handlers read it synchronously, so
one decision sees one consistent picture.
"""

from __future__ import annotations

import uuid

from services.bootstrap import Deps
from services.router.handlers import RouterDeps, on_attempt_failed, route
from services.router.health import HealthStore
from shared.bus import Delivery, Subscription
from shared.errors import Defer
from shared.events import AnyEvent, AttemptDispatched, Event, RequestAdmitted
from shared.lifecycle import poison, with_deadline

DURABLE = "router"
SUBJECTS = ("sy.evt.admitted", "sy.evt.attempt_failed")


async def run(deps: Deps, arg: str | None = None) -> None:
    s = deps.settings.router
    metrics = deps.telemetry.metrics
    health = await HealthStore.open(deps.bus, role="router", settings=s, catalog=deps.catalog, metrics=metrics)
    deps.on_stop.append(health.close)
    rdeps = RouterDeps(settings=s, catalog=deps.catalog, health=health, instance=f"router-{uuid.uuid4().hex[:8]}")
    sub = Subscription(DURABLE, SUBJECTS, s.consumer)

    async def handle(event: AnyEvent, delivery: Delivery) -> list[Event]:
        if isinstance(event, RequestAdmitted):
            out = route(event, rdeps)
        else:
            # The last delivery may not wait any more: decide now rather than be dropped as poison.
            can_wait = delivery.num_delivered < s.consumer.max_deliver - 1
            try:
                out = on_attempt_failed(event, rdeps, can_wait=can_wait)
            except Defer:
                metrics.router_attempts.labels("deferred").inc()
                raise
        for e in out:
            if isinstance(e, AttemptDispatched):
                if e.attempt == 1 and e.decision is not None:
                    metrics.routing_decisions.labels(e.decision.mode, e.decision.strategy).inc()
                metrics.router_attempts.labels(e.kind).inc()
        return out

    await deps.bus.ensure_consumer(sub)
    deps.ready["router"] = True
    await deps.bus.consume("router", sub, with_deadline(handle), on_poison=poison)

