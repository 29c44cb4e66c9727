"""Router service: reads admitted requests and failed attempts through one durable consumer."""

from __future__ import annotations

from services.bootstrap import Deps
from services.router.handlers import RouterDeps, on_attempt_failed, route
from shared.bus import Delivery, Subscription
from shared.events import AnyEvent, AttemptFailed, Event, RequestAdmitted
from shared.lifecycle import poison, with_deadline

DURABLE = "router"
SUBJECTS = ("sy.evt.admitted", "sy.evt.attempt_failed")


async def run(deps: Deps, arg: str | None = None) -> None:
    s = deps.settings.router
    rdeps = RouterDeps(settings=s, catalog=deps.catalog)
    sub = Subscription(DURABLE, SUBJECTS, s.consumer)
    table = {RequestAdmitted: route, AttemptFailed: on_attempt_failed}

    async def handle(event: AnyEvent, delivery: Delivery) -> list[Event]:
        return table[type(event)](event, rdeps)

    await deps.bus.ensure_consumer(sub)
    deps.ready["router"] = True
    await deps.bus.consume("router", sub, with_deadline(handle), on_poison=poison)
