"""The audit trail: which lifecycle events are audit events, and the one record each becomes.

Pure functions of the events (no clients): the audit store keeps these
records (``GET /v1/audit/events``) and the audit export ships the very same
records (``services.audit.export``), so a SIEM sees what the API shows.

    RequestAdmitted          admitted          policy's decision: data class, PII kinds and counts, risk, reservation
    RequestDenied            denied            the reason code and message, with the same admission metadata
    terminal (not denied)    completed         outcome, served model and provider, attempts, tokens, cost, latency
    CancelRequested          cancel_requested  who asked
    Budget*                  budget_reserved / budget_settled / budget_released / budget_alert
    AdminAction              key_created / key_revoked / key_rotated / team_created / team_changed /
                             breaker / cache_purged (published by the gateway's admin and breaker endpoints)

Metadata only: names, ids, counts, amounts and reason codes. Prompt and
completion text never enter a record (no field of the events that carry text
is read), nor does any key: an ``AdminAction`` carries key ids only.
Attempts, dispatches and the request itself are not audit events: they are in
the request's trace.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec
from msgspec import Struct

from shared.events import (
    AdminAction,
    AnyEvent,
    BudgetAlert,
    BudgetReleased,
    BudgetReserved,
    BudgetSettled,
    CancelRequested,
    CompletionFailed,
    CompletionSucceeded,
    RequestAdmitted,
    RequestDenied,
    Terminal,
)

_encoder = msgspec.json.Encoder()
_BUDGET = {BudgetReserved: "budget_reserved", BudgetSettled: "budget_settled", BudgetReleased: "budget_released",
           BudgetAlert: "budget_alert"}
_ENVELOPE = frozenset({"event_id", "request_id", "ts", "schema_version", "ctx"})


class TrailRow(Struct, frozen=True, kw_only=True):
    """One audit event as the store keeps it (``detail`` as JSON)."""

    id: str
    ts: float
    type: str
    tenant: str
    team: str | None
    key_id: str | None
    request_id: str | None
    actor: str | None
    detail: str


def trail_row(event: AnyEvent) -> TrailRow | None:
    """The audit record of ``event``, or None when it is not an audit event."""
    found = _record(event)
    if found is None:
        return None
    kind, detail = found
    ctx = event.ctx
    if isinstance(event, AdminAction):
        key_id = event.subject_id if kind.startswith("key_") else None
        return TrailRow(id=event.event_id, ts=event.ts, type=kind, tenant=ctx.tenant, team=ctx.team or None,
                        key_id=key_id, request_id=None, actor=ctx.key_id, detail=_encoder.encode(detail).decode())
    return TrailRow(id=event.event_id, ts=event.ts, type=kind, tenant=ctx.tenant, team=ctx.team,
                    key_id=ctx.key_id, request_id=event.request_id, actor=ctx.key_id,
                    detail=_encoder.encode(detail).decode())


def trail_rows(events: Iterable[AnyEvent]) -> list[TrailRow]:
    """The batch's audit records, one per event id, in (ts, id) order."""
    rows: dict[str, TrailRow] = {}
    for event in events:
        row = trail_row(event)
        if row is not None:
            rows.setdefault(row.id, row)
    return sorted(rows.values(), key=lambda r: (r.ts, r.id))


def public(row: TrailRow | Any) -> dict[str, Any]:
    """A record as the API and the export show it (a ``TrailRow`` or a store row mapping)."""
    get = (lambda k: getattr(row, k)) if isinstance(row, TrailRow) else (lambda k: row[k])
    return {"id": get("id"), "ts": get("ts"), "type": get("type"), "tenant": get("tenant"), "team": get("team"),
            "key_id": get("key_id"), "request_id": get("request_id"), "actor": get("actor"),
            "detail": msgspec.json.decode(get("detail"))}


def _record(event: AnyEvent) -> tuple[str, dict[str, Any]] | None:
    ctx = event.ctx
    if isinstance(event, AdminAction):
        return event.action, {"subject": event.subject_id, **event.detail}
    if isinstance(event, RequestAdmitted):
        return "admitted", {"model": event.request.model, "api": ctx.api, "job": ctx.job,
                            **(msgspec.to_builtins(event.admission) if event.admission else {})}
    if isinstance(event, RequestDenied):
        e = event.error
        return "denied", {"api": ctx.api, "job": ctx.job,
                          **(msgspec.to_builtins(event.admission) if event.admission else {}),
                          "reason": e.code, "status": e.status, "error_type": e.type, "message": e.message}
    if isinstance(event, Terminal):
        detail: dict[str, Any] = {"outcome": event.status, "api": ctx.api, "job": ctx.job,
                                  "latency_ms": round((event.ts - ctx.received_at) * 1000, 3)}
        if isinstance(event, CompletionSucceeded):
            u = event.response.usage
            detail.update(model=event.target.model, provider=event.target.provider, attempts=event.attempt,
                          prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                          cost_usd=event.cost_usd, degraded=event.degraded)
        elif isinstance(event, CompletionFailed):
            detail.update(attempts=len(event.history), reason=event.error.code, error_type=event.error.type)
        return "completed", detail
    if isinstance(event, CancelRequested):
        return "cancel_requested", {"job": ctx.job}
    kind = _BUDGET.get(type(event))
    if kind is not None:
        return kind, {f: getattr(event, f) for f in event.__struct_fields__ if f not in _ENVELOPE}
    return None

