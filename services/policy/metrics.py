"""Policy's Prometheus metrics, registered on the process registry (bounded labels: never a key or id; tenants
and teams only through the process's ``TenantLabels``, capped)."""

from __future__ import annotations

import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.events import (
    BudgetAlert,
    BudgetReleased,
    BudgetReserved,
    BudgetSettled,
    Event,
    RequestAdmitted,
    RequestDenied,
)
from shared.state.budgets import BudgetStore, Scope, to_nano, view
from shared.state.scopes import team_scope_key
from shared.state.teams import TeamDefaults, TeamStore, effective
from shared.telemetry import OTHER, TenantLabels, memoize_all_labels

BUDGET_EXCEEDED = "budget_exceeded"  # the error code of a budget refusal (services/policy/handlers.py)


class PolicyMetrics:
    """Counters derived from the events policy emits."""

    def __init__(self, registry: CollectorRegistry, tenants: TenantLabels | None = None) -> None:
        self.tenants = tenants or TenantLabels(100, 500)
        self.tenant_requests = Counter("switchyard_tenant_requests", "Admission decisions per tenant and team "
                                       "(tenants and teams past the cap: 'other')", ["tenant", "team", "decision"],
                                       registry=registry)
        self.budget_denials = Counter("switchyard_budget_denials", "Requests refused because a budget of the team or "
                                      "its key could not cover them", ["tenant", "team"], registry=registry)
        self.budget_teams: dict[tuple[str, str], None] = {}  # teams seen reserving budget, in order (BudgetGauges)
        self.admissions = Counter("switchyard_admissions", "Admission decisions, by decision and reason (error code)",
                                  ["decision", "reason"], registry=registry)
        self.budget_events = Counter("switchyard_budget_events", "Budget reservations, settlements and releases",
                                     ["kind"], registry=registry)
        self.budget_alerts = Counter("switchyard_budget_alerts",
                                     "Soft budget alerts (once per budget, period and threshold)",
                                     ["scope_kind", "period", "threshold"], registry=registry)
        self.pii = Counter("switchyard_pii_entities", "PII entities found in prompts, by kind and the team's action",
                           ["kind", "action"], registry=registry)
        self.risk_flagged = Counter("switchyard_risk_flagged", "Requests whose prompt-risk score reached the "
                                    "team's threshold, by action", ["action"], registry=registry)
        memoize_all_labels(self)

    def observe(self, events: Iterable[Event]) -> None:
        for e in events:
            if isinstance(e, (RequestAdmitted, RequestDenied)):
                a = e.admission
                decision = "admitted" if isinstance(e, RequestAdmitted) else "denied"
                self.admissions.labels(decision, "" if decision == "admitted" else e.error.code).inc()
                labels = self.tenants(e.ctx.tenant, e.ctx.team)
                self.tenant_requests.labels(*labels, decision).inc()
                if decision == "denied" and e.error.code == BUDGET_EXCEEDED:
                    self.budget_denials.labels(*labels).inc()
                if a is not None:
                    for kind, n in a.pii.items():
                        self.pii.labels(kind, a.pii_action or "").inc(n)
                    if a.flagged:
                        self.risk_flagged.labels(a.risk_action or "").inc()
            elif isinstance(e, BudgetReserved):
                self.budget_events.labels("reserved").inc()
                tenant, team = self.tenants(e.ctx.tenant, e.ctx.team)
                if OTHER not in (tenant, team) and (tenant, team) not in self.budget_teams:
                    self.budget_teams[(tenant, team)] = None  # a folded team has no gauge of its own
                    self.budget_denials.labels(tenant, team)  # at 0 from the start: increase() sees the first
            elif isinstance(e, BudgetSettled):
                self.budget_events.labels("settled").inc()
            elif isinstance(e, BudgetReleased):
                self.budget_events.labels("released").inc()
            elif isinstance(e, BudgetAlert):
                self.budget_alerts.labels(e.scope.split(".", 1)[0], e.period, f"{e.threshold:g}").inc()


class BudgetGauges:
    """Each team's budget use (spent, limit, spent/limit per period), read from the budget counters every
    collect interval for the teams this process saw reserve budget (capped like every tenant label)."""

    def __init__(self, registry: CollectorRegistry, seen: dict[tuple[str, str], None], teams: TeamStore,
                 budgets: BudgetStore, defaults: TeamDefaults, clock: Callable[[], float] = time.time) -> None:
        self.seen, self.teams, self.budgets, self.defaults, self.clock = seen, teams, budgets, defaults, clock
        labels = ["tenant", "team", "period"]
        self.utilization = Gauge("switchyard_budget_utilization_ratio", "Spent share of a team's budget in the "
                                 "current period (spent / limit; 1: exhausted)", labels, registry=registry)
        self.spent = Gauge("switchyard_budget_spent_usd", "A team's spend in the current period", labels,
                           registry=registry)
        self.limit = Gauge("switchyard_budget_limit_usd", "A team's budget for the period", labels, registry=registry)

    async def collect(self) -> None:
        now = self.clock()
        for tenant, team in list(self.seen):
            eff = effective(await self.teams.get(tenant, team), self.defaults)
            if eff.daily_usd is None and eff.monthly_usd is None:
                continue
            scope = Scope(key=team_scope_key(tenant, team),
                          daily=None if eff.daily_usd is None else to_nano(eff.daily_usd),
                          monthly=None if eff.monthly_usd is None else to_nano(eff.monthly_usd))
            periods = view(await self.budgets.counter(scope.key), scope, now)["periods"]
            for period, p in periods.items():
                if p["limit_usd"] is None:
                    continue
                self.spent.labels(tenant, team, period).set(p["spent_usd"])
                self.limit.labels(tenant, team, period).set(p["limit_usd"])
                self.utilization.labels(tenant, team, period).set(
                    p["spent_usd"] / p["limit_usd"] if p["limit_usd"] > 0 else 1.0)
