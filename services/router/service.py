"""Router service: reads admitted requests and failed attempts through one durable consumer.

Each router process keeps a ``HealthStore``: a watched copy of the shared
breaker records and observations (JetStream KV), and its own retry-budget
counts, published for the other replicas. Handlers read it synchronously, so
one decision sees one consistent picture.

Stage fusion: a process that runs the router next to policy (``--target
all``, or ``policy,router``: the target table says policy fuses the router)
registers its ``Router`` in ``deps.local``, and
policy routes each admitted request right there (``Router.fuse``) instead of
sending it through the stream to this consumer: one durable hop less on every
request. The first attempt (or the request's end) is published and
acknowledged by the stream *before* the ``RequestAdmitted`` that says it was
routed, and that event goes to ``sy.evt.admitted.routed``, which no router
reads. Every event still reaches the stream and audit; a redelivery publishes
the same event ids, so the stream keeps one of each whichever way (fused or
not) each delivery went.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Awaitable, Callable, Sequence

import msgspec

from services.runtime import Deps
from services.router.handlers import RouterDeps, on_attempt_failed, route
from shared.bus import Delivery, Subscription
from shared.errors import Defer
from shared.events import ADMITTED, ATTEMPT_FAILED, AnyEvent, AttemptDispatched, Event, RequestAdmitted
from shared.lifecycle import poison, with_deadline
from shared.settings import ConsumerSettings
from shared.telemetry import Metrics, Telemetry

log = logging.getLogger("switchyard.router")

DURABLE = "router"
SUBJECTS = (ADMITTED, ATTEMPT_FAILED)


class Router:
    """The router's handlers bound to one process's health store and metrics."""

    def __init__(self, rdeps: RouterDeps, metrics: Metrics, consumer: ConsumerSettings,
                 telemetry: Telemetry | None = None) -> None:
        self.rdeps = rdeps
        self.metrics = metrics
        self.consumer = consumer
        self.telemetry = telemetry  # for the router's own span when it routes in policy's process

    def _counted(self, out: list[Event]) -> list[Event]:
        for e in out:
            if isinstance(e, AttemptDispatched):
                if e.attempt == 1 and e.decision is not None:
                    self.metrics.routing_decisions.labels(e.decision.mode, e.decision.strategy).inc()
                self.metrics.router_attempts.labels(e.kind).inc()
                if e.history:  # re-dispatched after a failure: counted against the deployment that failed
                    failed = e.history[-1]
                    self.metrics.fallbacks.labels(e.kind, failed.deployment, failed.provider, failed.model).inc()
        return out

    async def handle(self, event: AnyEvent, delivery: Delivery) -> list[Event]:
        """The consumer's handler: route an admitted request, or decide after a failed attempt."""
        if isinstance(event, RequestAdmitted):
            if event.routed_by:
                return []  # routed at admission already (stage fusion)
            return self._counted(route(event, self.rdeps))
        # The last delivery may not wait any more: decide now rather than be dropped as poison.
        can_wait = delivery.num_delivered < self.consumer.max_deliver - 1
        try:
            return self._counted(on_attempt_failed(event, self.rdeps, can_wait=can_wait))
        except Defer:
            self.metrics.router_attempts.labels("deferred").inc()
            raise

    async def fuse(self, out: Sequence[Event], publish: Callable[[Sequence[Event]], Awaitable[None]]) -> list[Event]:
        """Route the ``RequestAdmitted`` among admission's ``out`` now; returns ``out`` with it marked routed.

        The routing result is published (PubAck awaited) before this returns, so a stored "routed" admission
        always has its first attempt in the stream. A routing error leaves the event unrouted: the router
        consumer then decides it as usual.
        """
        admitted = next((e for e in out if isinstance(e, RequestAdmitted)), None)
        if admitted is None or admitted.routed_by:
            return list(out)
        # The router's own span (when it has a tracer), so the trace shows the routing stage in either shape.
        span = (self.telemetry.span("router RequestAdmitted", None, **{"switchyard.request_id": admitted.request_id,
                                                                       "switchyard.fused": True})
                if self.telemetry is not None else contextlib.nullcontext())
        with span:
            try:
                routed = self._counted(route(admitted, self.rdeps))
            except Exception as exc:  # noqa: BLE001 - the consumer path decides instead
                log.warning("in-process routing of %s failed, leaving it to the router consumer: %r",
                            admitted.request_id, exc)
                return list(out)
            await publish(routed)
        marked = msgspec.structs.replace(admitted, routed_by=self.rdeps.instance)
        return [marked if e is admitted else e for e in out]


async def run(deps: Deps, arg: str | None = None) -> None:
    s = deps.settings.router
    metrics = deps.telemetry.metrics
    health = await deps.stores.open_health("router")
    deps.on_stop.append(health.close)
    rdeps = RouterDeps(settings=s, catalog=deps.catalog, health=health, instance=f"router-{uuid.uuid4().hex[:8]}")
    router = Router(rdeps, metrics, s.consumer, telemetry=deps.telemetry)
    sub = Subscription(DURABLE, SUBJECTS, s.consumer)
    await deps.bus.ensure_consumer(sub)
    if s.fuse_with_policy and deps.shape.fused("router"):
        deps.local.router = router
    deps.ready["router"] = True
    await deps.bus.consume("router", sub, with_deadline(router.handle), on_poison=poison)
