"""Policy's Prometheus metrics, registered on the process registry (bounded labels: never a key, team or id)."""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter

from shared.events import (
    BudgetAlert,
    BudgetReleased,
    BudgetReserved,
    BudgetSettled,
    Event,
    RequestAdmitted,
    RequestDenied,
)


class PolicyMetrics:
    """Counters derived from the events policy emits."""

    def __init__(self, registry: CollectorRegistry) -> None:
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

    def observe(self, events: Iterable[Event]) -> None:
        for e in events:
            if isinstance(e, (RequestAdmitted, RequestDenied)):
                a = e.admission
                decision = "admitted" if isinstance(e, RequestAdmitted) else "denied"
                self.admissions.labels(decision, "" if decision == "admitted" else e.error.code).inc()
                if a is not None:
                    for kind, n in a.pii.items():
                        self.pii.labels(kind, a.pii_action or "").inc(n)
                    if a.flagged:
                        self.risk_flagged.labels(a.risk_action or "").inc()
            elif isinstance(e, BudgetReserved):
                self.budget_events.labels("reserved").inc()
            elif isinstance(e, BudgetSettled):
                self.budget_events.labels("settled").inc()
            elif isinstance(e, BudgetReleased):
                self.budget_events.labels("released").inc()
            elif isinstance(e, BudgetAlert):
                self.budget_alerts.labels(e.scope.split(".", 1)[0], e.period, f"{e.threshold:g}").inc()
