"""Policy service: reads ``sy.evt.requested`` through its durable consumer and admits or denies."""

from __future__ import annotations

from services.bootstrap import Deps
from services.policy.handlers import PolicyDeps, admit
from shared.bus import Delivery, Subscription
from shared.events import CompletionRequested, Event
from shared.lifecycle import poison, with_deadline

DURABLE = "policy"


async def run(deps: Deps, arg: str | None = None) -> None:
    s = deps.settings.policy
    pdeps = PolicyDeps(settings=s, catalog=deps.catalog, keyring=deps.keyring)
    sub = Subscription(DURABLE, ("sy.evt.requested",), s.consumer)

    async def handle(event: CompletionRequested, delivery: Delivery) -> list[Event]:
        return admit(event, pdeps)

    await deps.bus.ensure_consumer(sub)
    deps.ready["policy"] = True
    await deps.bus.consume("policy", sub, with_deadline(handle), on_poison=poison)
