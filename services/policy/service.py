"""Policy service: admission on ``sy.evt.requested``; settlement on terminal events and billed attempts.

Three durable consumers, each shared by every policy replica: ``policy`` admits
or denies requested completions of the interactive lane (synchronous and
streamed), ``policy-batch`` those of the batch lane (async jobs), each with its
own in-flight window, so a backlog of jobs never stands in front of an
interactive request; ``policy-settle`` reads ``sy.evt.done.>`` (every terminal
event, whichever gateway it goes to) and ``sy.evt.attempt_failed`` of both lanes
(attempts that were billed although they failed, or whose request had ended) to
settle or release budget reservations. Admission is shared fairly between
tenants in each lane (``fairness.py``): while requests wait in the stream, one
tenant holds at most its share of this process's in-flight window. All shared
state is in KV buckets (declared in ``shared.state.buckets``):

    sy_keys         API keys (shared.auth)
    sy_teams        team settings (shared.state.teams)
    sy_budgets      budget counters per team / key (shared.state.budgets)
    sy_ratelimits   GCRA state per team / key / tenant (shared.state.ratelimit)
    sy_admissions   one record per admitted request (admissions.py, policy's own)
"""

from __future__ import annotations

import asyncio
import importlib
import logging

from services.runtime import Deps
from services.policy.admissions import AdmissionStore
from services.policy.fairness import FairShare
from services.policy.handlers import PolicyDeps, admit_or_fail_closed, charge, settle
from services.policy.metrics import BudgetGauges, PolicyMetrics
from shared.bus import Delivery, Subscription
from shared.collectors import every
from shared.events import (
    ATTEMPT_FAILED,
    BATCH,
    DONE_ALL,
    REQUESTED,
    AnyEvent,
    AttemptFailed,
    CompletionRequested,
    Event,
    in_every_lane,
    lane_subject,
)
from shared.lifecycle import poison, with_deadline
from shared.state.buckets import ADMISSIONS

log = logging.getLogger("switchyard.policy")

DURABLE = "policy"
BATCH_DURABLE = "policy-batch"
SETTLE_DURABLE = "policy-settle"
SETTLE_SUBJECTS = (DONE_ALL, *in_every_lane(ATTEMPT_FAILED))


def _optional(module: str):
    """A detector module, or None when it cannot be loaded (requests that need it are then denied: 503)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        log.error("%s unavailable (%r): requests that need it will be denied", module, exc)
        return None


async def policy_deps(deps: Deps) -> PolicyDeps:
    """What admission and settlement use: the process's shared stores (the admin API reads the same ones) and
    policy's own admission records."""
    s, stores = deps.settings.policy, deps.stores
    return PolicyDeps(
        settings=s, catalog=deps.catalog, keyring=deps.keyring,
        teams=await stores.teams(), limiter=await stores.limiter(), budgets=await stores.budgets(),
        admissions=AdmissionStore(await deps.bus.kv(ADMISSIONS), cas_timeout_s=s.cas_timeout_s),
        pii=_optional("services.policy.pii"), risk=_optional("services.policy.risk"),
        issuers=deps.settings.oidc.by_issuer())


async def run(deps: Deps, arg: str | None = None) -> None:
    s = deps.settings.policy
    pdeps = await policy_deps(deps)
    metrics = PolicyMetrics(deps.telemetry.metrics.registry, deps.telemetry.metrics.tenants)
    gauges = BudgetGauges(deps.telemetry.metrics.registry, metrics.budget_teams, pdeps.teams, pdeps.budgets, s)
    deps.bus.start(every(deps.settings.telemetry.collect_interval_s, gauges.collect, "budgets", deps.telemetry.metrics))
    admit_sub = Subscription(DURABLE, (REQUESTED,), s.consumer)
    batch_sub = Subscription(BATCH_DURABLE, (lane_subject(REQUESTED, BATCH),), s.batch_consumer, yields=True)
    settle_sub = Subscription(SETTLE_DURABLE, SETTLE_SUBJECTS, s.settle_consumer)

    def admitter(fair: FairShare):
        """Admission in one lane: one tenant's flood holds at most its share of that lane's window here; the
        rest waits in the stream."""

        async def on_requested(event: CompletionRequested, delivery: Delivery) -> list[Event]:
            rid = event.request_id
            with fair.slot(event.ctx.tenant, rid, delivery.num_delivered, delivery.pending):
                out = await admit_or_fail_closed(event, pdeps, fair.deliveries(rid, delivery.num_delivered))
            metrics.observe(out)
            router = deps.local.router  # a router in this process: route now (stage fusion)
            return await router.fuse(out, deps.bus.publish_all) if router is not None else out

        return on_requested

    lanes = [(sub, admitter(FairShare(s.fairness, window=sub.settings.concurrency,
                                      max_deliver=sub.settings.max_deliver)))
             for sub in (admit_sub, batch_sub)]

    async def on_outcome(event: AnyEvent, delivery: Delivery) -> list[Event]:
        if isinstance(event, AttemptFailed):
            out = await charge(event, pdeps)
        elif getattr(type(event), "terminal", False):
            out = await settle(event, pdeps)
        else:
            out = []
        metrics.observe(out)
        return out

    for sub in (admit_sub, batch_sub, settle_sub):
        await deps.bus.ensure_consumer(sub)
    deps.ready["policy"] = True
    await asyncio.gather(
        *(deps.bus.consume(sub.durable, sub, with_deadline(handler), on_poison=poison) for sub, handler in lanes),
        # No deadline guard and no poison handler here: terminal events and failed attempts are facts to
        # account for, never requests to end.
        deps.bus.consume("policy-settle", settle_sub, on_outcome),
    )
