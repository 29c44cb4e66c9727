"""Policy service: admission on ``sy.evt.requested``; settlement on terminal events and billed attempts.

Two durable consumers, each shared by every policy replica: ``policy`` admits
or denies requested completions; ``policy-settle`` reads ``sy.evt.done.>``
(every terminal event, whichever gateway it goes to) and
``sy.evt.attempt_failed`` (attempts that were billed although they failed) to
settle or release budget reservations. All shared state is in KV buckets:

    sy_keys         API keys (shared.auth)
    sy_teams        team settings (teams.py)
    sy_budgets      budget counters per team / key (budgets.py)
    sy_ratelimits   GCRA state per team / key (ratelimit.py)
    sy_admissions   one record per admitted request (admissions.py)
"""

from __future__ import annotations

import asyncio
import importlib
import logging

from services.runtime import Deps
from services.policy.admissions import AdmissionStore
from services.policy.budgets import BudgetStore
from services.policy.handlers import PolicyDeps, admit_or_fail_closed, charge, settle
from services.policy.metrics import PolicyMetrics
from services.policy.ratelimit import RateLimiter
from services.policy.teams import TeamStore
from shared.bus import Bucket, Delivery, Subscription
from shared.events import AnyEvent, AttemptFailed, CompletionRequested, Event
from shared.lifecycle import poison, with_deadline

log = logging.getLogger("switchyard.policy")

DURABLE = "policy"
SETTLE_DURABLE = "policy-settle"
SETTLE_SUBJECTS = ("sy.evt.done.>", "sy.evt.attempt_failed")

TEAMS = Bucket("sy_teams", history=1, description="teams and their governance settings")
BUDGETS = Bucket("sy_budgets", history=1, description="budget counters and open reservations per team / key")
RATES = Bucket("sy_ratelimits", history=1, ttl_s=120, description="GCRA rate-limit state per team / key")
ADMISSIONS = Bucket("sy_admissions", history=1, ttl_s=86400, description="what admission took, per request")


def _optional(module: str):
    """A detector module, or None when it cannot be loaded (requests that need it are then denied: 503)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        log.error("%s unavailable (%r): requests that need it will be denied", module, exc)
        return None


async def policy_deps(deps: Deps) -> PolicyDeps:
    """The policy's stores on this process's bus (also used by the admin API)."""
    s, bus = deps.settings.policy, deps.bus
    return PolicyDeps(
        settings=s, catalog=deps.catalog, keyring=deps.keyring,
        teams=TeamStore(await bus.kv(TEAMS)),
        limiter=RateLimiter(await bus.kv(RATES), cas_timeout_s=s.cas_timeout_s),
        budgets=BudgetStore(await bus.kv(BUDGETS), cas_timeout_s=s.cas_timeout_s),
        admissions=AdmissionStore(await bus.kv(ADMISSIONS), cas_timeout_s=s.cas_timeout_s),
        pii=_optional("services.policy.pii"), risk=_optional("services.policy.risk"))


async def run(deps: Deps, arg: str | None = None) -> None:
    s = deps.settings.policy
    pdeps = await policy_deps(deps)
    metrics = PolicyMetrics(deps.telemetry.metrics.registry)
    admit_sub = Subscription(DURABLE, ("sy.evt.requested",), s.consumer)
    settle_sub = Subscription(SETTLE_DURABLE, SETTLE_SUBJECTS, s.settle_consumer)

    async def on_requested(event: CompletionRequested, delivery: Delivery) -> list[Event]:
        out = await admit_or_fail_closed(event, pdeps, delivery.num_delivered)
        metrics.observe(out)
        router = deps.local.router  # a router in this process: route now (stage fusion)
        return await router.fuse(out, deps.bus.publish_all) if router is not None else out

    async def on_outcome(event: AnyEvent, delivery: Delivery) -> list[Event]:
        if isinstance(event, AttemptFailed):
            out = await charge(event, pdeps)
        elif getattr(type(event), "terminal", False):
            out = await settle(event, pdeps)
        else:
            out = []
        metrics.observe(out)
        return out

    await deps.bus.ensure_consumer(admit_sub)
    await deps.bus.ensure_consumer(settle_sub)
    deps.ready["policy"] = True
    await asyncio.gather(
        deps.bus.consume("policy", admit_sub, with_deadline(on_requested), on_poison=poison),
        # No deadline guard and no poison handler here: terminal events and failed attempts are facts to
        # account for, never requests to end.
        deps.bus.consume("policy-settle", settle_sub, on_outcome),
    )
