"""Router service: reads admitted requests and failed attempts through one durable consumer per lane.

``router`` reads the interactive lane (``sy.evt.admitted``, ``sy.evt.attempt_failed``), ``router-batch``
the batch lane (the same subjects with ``.batch``: async jobs), each with its own in-flight window, so a
backlog of jobs never stands in front of an interactive request.

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

import asyncio
import contextlib
import logging
import uuid
from typing import Awaitable, Callable, Sequence

import msgspec

from services.runtime import Deps
from services.router.handlers import RouterDeps, on_attempt_failed, route
from shared.bus import Delivery, Subscription
from shared.errors import Defer
from shared.events import (
    ADMITTED,
    ATTEMPT_FAILED,
    BATCH,
    AnyEvent,
    AttemptDispatched,
    Event,
    RequestAdmitted,
    lane_subject,
)
from shared.lifecycle import poison, with_deadline
from shared.settings import ConsumerSettings
from shared.state.attempts import AttemptMarks
from shared.state.buckets import ATTEMPTS
from shared.telemetry import Metrics, Telemetry

log = logging.getLogger("switchyard.router")

DURABLE = "router"
SUBJECTS = (ADMITTED, ATTEMPT_FAILED)
BATCH_DURABLE = "router-batch"
BATCH_SUBJECTS = tuple(lane_subject(s, BATCH) for s in SUBJECTS)


class Router:
    """The router's handlers bound to one process's health store and metrics."""

    def __init__(self, rdeps: RouterDeps, metrics: Metrics, consumer: ConsumerSettings,
                 telemetry: Telemetry | None = None, marks: AttemptMarks | None = None,
                 publish: Callable[[Sequence[Event]], Awaitable[None]] | None = None) -> None:
        self.rdeps = rdeps
        self.metrics = metrics
        self.consumer = consumer
        self.telemetry = telemetry  # for the router's own span when it routes in policy's process
        # The attempt marks and the bus's publish: a failure is decided once, even when the server replays it.
        self.marks = marks
        self.publish = publish

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
        if event.after_end:
            return []  # a call made after the request's end: recorded and billed, nothing to decide
        nxt = event.dispatch.attempt + 1
        if self.marks is not None and await self.marks.get(event.request_id, nxt) is not None:
            return []  # decided already (the next attempt was claimed, or the request ended): a replayed failure
        # The last delivery may not wait any more: decide now rather than be dropped as poison.
        consumer = self.rdeps.settings.batch_consumer if event.ctx.job else self.consumer
        can_wait = delivery.num_delivered < consumer.max_deliver - 1
        try:
            out = self._counted(on_attempt_failed(event, self.rdeps, can_wait=can_wait))
        except Defer:
            self.metrics.router_attempts.labels("deferred").inc()
            raise
        if self.marks is None or self.publish is None or not any(getattr(type(e), "terminal", False) for e in out):
            return out
        # The request ends here: once its terminal is in the stream, no attempt after this one may run.
        await self.publish(out)
        await self.marks.ended(event.request_id, nxt)
        return []

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
    marks = AttemptMarks(await deps.bus.kv(ATTEMPTS))
    router = Router(rdeps, metrics, s.consumer, telemetry=deps.telemetry, marks=marks, publish=deps.bus.publish_all)
    subs = (Subscription(DURABLE, SUBJECTS, s.consumer), Subscription(BATCH_DURABLE, BATCH_SUBJECTS, s.batch_consumer))
    for sub in subs:
        await deps.bus.ensure_consumer(sub)
    if s.fuse_with_policy and deps.shape.fused("router"):
        deps.local.router = router
    deps.ready["router"] = True
    await asyncio.gather(*(deps.bus.consume(sub.durable, sub, with_deadline(router.handle), on_poison=poison)
                           for sub in subs))
