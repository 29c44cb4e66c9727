"""Audit logic: a batch of lifecycle events in, rows for the store and job-record changes out.

No clients here: ``build_rows`` and ``job_updates`` are pure functions of the
events, so the service only decodes, calls them and hands the results to the
store and to ``shared.state.jobs.advance_job``.

Delivery is at-least-once and a batch may arrive in any order, so every
function folds the batch into at most one row per key, choosing between
competing events by ``(ts, event_id)`` rather than by position. The same
events in any order, any number of times, give the same rows; the store's
upserts repeat the merge rules below in SQL so that separate batches (or
replicas) converge too.

Requests (key ``request_id``). Every event carries the request context, so any
event may create the row. Status climbs stages and never falls back:
``requested`` (0) → ``admitted`` (1) → ``in_progress`` (2) → terminal (3:
succeeded, failed, denied, cancelled, expired). A row moves only to a higher
stage, so the first terminal status to be stored is final; inside one batch
the earliest terminal event wins. Cost and usage totals are not carried by
these rows: the store sums them from the attempt rows in the same transaction,
which cannot double count.

Attempts (key ``(request_id, attempt, delivery)``):

- ``delivery = 0`` is *the* record of attempt ``n``: created ``dispatched`` by
  ``AttemptDispatched``, resolved once by ``AttemptFailed`` (outcome taken from
  ``error.outcome``) or ``CompletionSucceeded`` (``success``). A resolved
  outcome is never replaced. Its ``ts`` is the earliest event seen for it,
  i.e. the dispatch time once that event has been recorded.
- ``delivery = d >= 1`` records that delivery ``d`` of attempt ``n`` was
  ``interrupted`` (``AttemptAbandoned``: a worker died mid-call, outcome
  unknown). A redelivered attempt therefore shows its interrupted deliveries
  and then its final record; traces list the final record last.

Ledger (key ``(request_id, attempt)``): one row per billed attempt — every
``CompletionSucceeded`` (its ``cost_usd``) and every ``AttemptFailed`` with
``cost_usd > 0`` (a provider that charged for a call that then failed). A
response-cache hit is a ``CompletionSucceeded`` too: its row has ``cache =
hit``, ``cost_usd`` 0 (no upstream call) and the ``savings_usd``.

Prompt text is never read into a row. Completion text goes on the request row
only when ``store_text`` is on (``AuditSettings.store_text``, default off), or
when policy admitted the request for a team that turned it on (``ctx.store_text``).

Admissions (key ``request_id``): the policy decision carried by
``RequestAdmitted`` / ``RequestDenied`` — decision, reason, data class, PII
kinds and counts (never values), risk score and signals, reservation. The
first decision stored stands (policy decides once per request).

Budget events (key ``event_id``): every ``BudgetReserved`` / ``BudgetSettled``
/ ``BudgetReleased`` / ``BudgetAlert``, inserted once, so a request's trace
explains every cent that was reserved, spent or given back.

Routing (key ``request_id``): the router's decision (``RoutingDecision``: mode,
task, every candidate's scores and exclusions, seed and draws) from the first
event carrying it; inserted once. Attempt routing (key ``(request_id,
attempt)``): from each ``AttemptDispatched``, why that attempt was made
(first / fallback / retry / last_resort and its reason), the target's breaker
state at decision time, a retry's ``not_before`` and ``degraded``; inserted
once (every delivery of a dispatch carries the same values).

Audit trail (key ``id``, the event id): the records of ``services.audit.trail``
(admissions, denials, request ends, budget events, admin actions), inserted
once. An ``AdminAction`` (a key, team or breaker change) is not a request and
makes no other row. Request rows also carry what the request list and
statistics read: ``api`` and ``pii`` (kinds and counts) from the start, and the
served model, provider, latency, TTFT, ``degraded`` and routing savings
(``shared.pricing.savings_usd`` against the decision's baseline, as the
response reports it) from the terminal event.

Jobs: for events of async jobs (``ctx.job``), ``job_updates`` gives one
``JobUpdate`` per job — a callable for ``advance_job`` that proposes the
furthest state the batch shows (queued → in_progress → terminal) and never
regresses a stored record. The job id is the request id.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import msgspec
from msgspec import Struct

from shared.openai_format import message_text, render_completion
from shared.canonical import Usage
from shared.errors import ErrorInfo
from shared.events import (
    JOB_STATUS_OF_TERMINAL,
    AnyEvent,
    AdminAction,
    AttemptAbandoned,
    AttemptDispatched,
    AttemptFailed,
    BudgetAlert,
    BudgetReleased,
    BudgetReserved,
    BudgetSettled,
    CompletionFailed,
    CompletionRequested,
    CompletionSucceeded,
    JobRecord,
    RequestAdmitted,
    RequestDenied,
    Target,
    Terminal,
)
from shared.pricing import savings_usd
from shared.state.jobs import moves_forward
from services.audit.trail import TrailRow, trail_rows

STAGE = {"requested": 0, "admitted": 1, "in_progress": 2,
         "succeeded": 3, "failed": 3, "denied": 3, "cancelled": 3, "expired": 3}
TERMINAL_STAGE = 3
DISPATCHED = "dispatched"
SUCCESS = "success"
INTERRUPTED = "interrupted"
FINAL_DELIVERY = 0

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


class RequestRow(Struct, frozen=True, kw_only=True):
    """One request as the audit store keeps it (totals are summed by the store)."""

    request_id: str
    tenant: str
    team: str
    key_id: str
    model: str | None  # as the client asked; unknown until an event carrying the request is seen
    status: str
    created_at: float
    job: bool = False
    completed_at: float | None = None
    error_status: int | None = None
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    trace_id: str | None = None
    completion_text: str | None = None  # only with store_text
    prompt_id: str | None = None  # the prompt template the request was rendered from (never its text)
    prompt_version: int | None = None
    # For the request list and statistics (GET /v1/requests, /v1/stats): known once the request ended, except
    # ``api`` (from the start) and ``pii`` (from admission).
    api: str | None = None
    served_model: str | None = None
    provider: str | None = None
    latency_ms: float | None = None  # received → terminal event
    ttft_ms: float | None = None
    degraded: bool | None = None  # answered by a fallback, a retry or the last resort
    pii: str | None = None  # PII kind → count found at admission, as JSON (never the values)
    savings_usd: float | None = None  # routing's saving against the most expensive eligible alternative

    @property
    def stage(self) -> int:
        return STAGE[self.status]


class AttemptRow(Struct, frozen=True, kw_only=True):
    """One attempt's record (delivery 0) or one interrupted delivery of it (delivery >= 1)."""

    request_id: str
    attempt: int
    delivery: int
    provider: str
    model: str
    deployment: str
    outcome: str
    ts: float
    latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    ttft_ms: float | None = None  # streamed attempts: time to the first chunk
    cache: str | None = None  # what the response cache did (CacheInfo as JSON), on a success
    detail: str | None = None  # a failure's operator-only account (scrubbed by the worker)


class LedgerRow(Struct, frozen=True, kw_only=True):
    """One billed attempt."""

    request_id: str
    attempt: int
    tenant: str
    team: str
    key_id: str
    provider: str
    model: str
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    ts: float
    cache: str | None = None  # hit / miss / bypass when the response cache was in play
    savings_usd: float | None = None  # a hit: what the answer it replays cost upstream


class AdmissionRow(Struct, frozen=True, kw_only=True):
    """Policy's decision on one request (counts and scores only; never prompt text)."""

    request_id: str
    decision: str
    reason: str
    data_class: str | None
    details: str  # the decision as JSON (AdmissionInfo)
    ts: float


class BudgetRow(Struct, frozen=True, kw_only=True):
    """One budget event of a request."""

    event_id: str
    request_id: str
    kind: str  # reserved / settled / released / alert
    amount_usd: float
    details: str  # the rest of the event as JSON (scopes, reason, threshold, ...)
    ts: float


class RoutingRow(Struct, frozen=True, kw_only=True):
    """The routing decision of one request (never prompt text: names, numbers and reason codes)."""

    request_id: str
    decision: str  # the RoutingDecision as JSON
    ts: float


class AttemptRouteRow(Struct, frozen=True, kw_only=True):
    """Why one attempt went where it went, and the target's breaker state when the router decided."""

    request_id: str
    attempt: int
    kind: str
    breaker_state: str
    reason: str
    not_before: float | None
    degraded: bool
    ts: float


class AuditBatch(Struct, frozen=True, kw_only=True):
    """Everything one batch of events writes, at most one row per key, sorted by key."""

    requests: list[RequestRow]
    attempts: list[AttemptRow]
    ledger: list[LedgerRow]
    admissions: list[AdmissionRow] = msgspec.field(default_factory=list)
    budget: list[BudgetRow] = msgspec.field(default_factory=list)
    routing: list[RoutingRow] = msgspec.field(default_factory=list)
    attempt_routes: list[AttemptRouteRow] = msgspec.field(default_factory=list)
    trail: list[TrailRow] = msgspec.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requests or self.attempts or self.ledger or self.admissions or self.budget
                    or self.routing or self.attempt_routes or self.trail)


class JobUpdate(Struct, frozen=True, kw_only=True):
    """The furthest state a batch shows for one job; call it as ``advance_job``'s ``change``."""

    job_id: str
    proposed: JobRecord

    def __call__(self, current: JobRecord | None) -> JobRecord | None:
        if current is None:
            return self.proposed
        if not moves_forward(current, self.proposed):
            return None
        # What is already stored was seen first, so its identity and earlier times stand.
        started = [t for t in (current.started_at, self.proposed.started_at) if t is not None]
        return msgspec.structs.replace(
            self.proposed,
            tenant=current.tenant,
            team=current.team,
            model=current.model or self.proposed.model,
            created_at=current.created_at,
            started_at=min(started) if started else None,
            # What its tenant's queue cap counted it by (the gateway's record): given back when it ends.
            key_id=current.key_id or self.proposed.key_id,
            deadline=current.deadline or self.proposed.deadline,
            size=current.size or self.proposed.size,
        )


# ---- rows --------------------------------------------------------------------------------

def build_rows(events: Iterable[AnyEvent], *, store_text: bool = False,
               trace_ids: Mapping[str, str] | None = None) -> AuditBatch:
    """Fold a batch of events into request, attempt and ledger rows (order- and repeat-insensitive).

    ``trace_ids`` maps request ids to W3C trace ids seen in the messages' headers.
    """
    ordered = sorted(events, key=_order)
    trace_ids = trace_ids or {}
    requests: dict[str, RequestRow] = {}
    attempts: dict[tuple[str, int, int], AttemptRow] = {}
    ledger: dict[tuple[str, int], LedgerRow] = {}
    admissions: dict[str, AdmissionRow] = {}
    budget: dict[str, BudgetRow] = {}

    routing: dict[str, RoutingRow] = {}
    attempt_routes: dict[tuple[str, int], AttemptRouteRow] = {}

    for event in ordered:
        if isinstance(event, AdminAction):
            continue  # not a request: the audit trail only
        if event.request_id not in routing:  # the first decision seen stands: encode no other
            routed = _routing_row(event)
            if routed is not None:
                routing[routed.request_id] = routed
        why = _attempt_route_row(event)
        if why is not None:
            attempt_routes.setdefault((why.request_id, why.attempt), why)
        decided = _admission_row(event)
        if decided is not None:
            admissions.setdefault(decided.request_id, decided)  # (ts, id) order: the first decision stands
        spent = _budget_row(event)
        if spent is not None:
            budget.setdefault(spent.event_id, spent)
        row = _request_row(event, store_text, trace_ids.get(event.request_id))
        requests[event.request_id] = _merge_request(requests.get(event.request_id), row)

        attempt = _attempt_row(event)
        if attempt is not None:
            key = (attempt.request_id, attempt.attempt, attempt.delivery)
            attempts[key] = _merge_attempt(attempts.get(key), attempt)

        billed = _ledger_row(event)
        if billed is not None:
            # Events are in (ts, id) order, so the first one kept is the earliest charge.
            ledger.setdefault((billed.request_id, billed.attempt), billed)

    return AuditBatch(
        requests=[requests[k] for k in sorted(requests)],
        attempts=[attempts[k] for k in sorted(attempts)],
        ledger=[ledger[k] for k in sorted(ledger)],
        admissions=[admissions[k] for k in sorted(admissions)],
        budget=[budget[k] for k in sorted(budget)],
        routing=[routing[k] for k in sorted(routing)],
        attempt_routes=[attempt_routes[k] for k in sorted(attempt_routes)],
        trail=trail_rows(ordered),
    )


def _order(event: AnyEvent) -> tuple[float, str, str]:
    # The tag breaks ties between different events that share an id (all terminals of a request do).
    return (event.ts, event.event_id, type(event).__name__)


def _requested_model(event: AnyEvent) -> str | None:
    if isinstance(event, (CompletionRequested, RequestAdmitted, AttemptDispatched)):
        return event.request.model
    if isinstance(event, AttemptFailed):
        return event.dispatch.request.model
    return None


def _status_of(event: AnyEvent) -> str:
    if isinstance(event, Terminal):
        return event.status
    if isinstance(event, RequestAdmitted):
        return "admitted"
    if isinstance(event, (AttemptDispatched, AttemptFailed, AttemptAbandoned)):
        return "in_progress"
    # CompletionRequested, and CancelRequested: a cancel request changes nothing until a terminal says so.
    return "requested"


def _request_row(event: AnyEvent, store_text: bool, trace_id: str | None) -> RequestRow:
    ctx = event.ctx
    row = RequestRow(
        request_id=event.request_id, tenant=ctx.tenant, team=ctx.team, key_id=ctx.key_id,
        model=_requested_model(event), status=_status_of(event), created_at=ctx.received_at,
        job=ctx.job, trace_id=trace_id,
        prompt_id=ctx.prompt.id if ctx.prompt else None, prompt_version=ctx.prompt.version if ctx.prompt else None,
        api=ctx.api, pii=_pii_of(event),
    )
    if isinstance(event, Terminal):
        row = msgspec.structs.replace(row, latency_ms=round((event.ts - ctx.received_at) * 1000, 3), degraded=False)
    if isinstance(event, CompletionFailed):
        e = event.error
        return msgspec.structs.replace(row, completed_at=event.ts, error_status=e.status, error_type=e.type,
                                       error_code=e.code, error_message=e.message)
    if isinstance(event, CompletionSucceeded):
        text = completion_text(event) if store_text or ctx.store_text else None
        return msgspec.structs.replace(
            row, completed_at=event.ts, completion_text=text, served_model=event.target.model,
            provider=event.target.provider, ttft_ms=event.ttft_ms,
            degraded=event.degraded or event.attempt > 1 or bool(event.history), savings_usd=_savings(event))
    return row


def _pii_of(event: AnyEvent) -> str | None:
    """PII kinds and counts policy found (admission), else what it redacted (carried by every later event)."""
    info = event.admission if isinstance(event, (RequestAdmitted, RequestDenied)) else None
    found = info.pii if info is not None and info.pii else event.ctx.redactions
    return _details_encoder.encode(found).decode() if found else None


def _savings(event: CompletionSucceeded) -> float:
    """The response's routing saving: against the baseline's prices, for this usage (0 on a cache hit or when the
    baseline is the model that answered), by ``shared.pricing``."""
    d = event.decision
    if d is None or d.baseline is None or d.baseline.model == event.target.model:
        return 0.0
    if event.cache is not None and event.cache.status == "hit":
        return 0.0
    return savings_usd(d.baseline, event.response.usage, event.cost_usd)


def _merge_request(old: RequestRow | None, new: RequestRow) -> RequestRow:
    """The store's upsert rule, for rows of one batch; ``new`` never comes before ``old``."""
    if old is None:
        return new
    merged = new if new.stage > old.stage else old
    return msgspec.structs.replace(
        merged,
        tenant=old.tenant, team=old.team, key_id=old.key_id, created_at=old.created_at, job=old.job,
        model=old.model or new.model,
        trace_id=old.trace_id or new.trace_id,
        prompt_id=old.prompt_id or new.prompt_id,
        prompt_version=old.prompt_version or new.prompt_version,
        api=old.api or new.api,
        pii=old.pii or new.pii,
    )


def _attempt_row(event: AnyEvent) -> AttemptRow | None:
    if isinstance(event, AttemptDispatched):
        return _attempt_base(event.request_id, event.attempt, FINAL_DELIVERY, event.target, DISPATCHED, event.ts)
    if isinstance(event, AttemptFailed):
        usage = event.usage
        base = _attempt_base(event.request_id, event.dispatch.attempt, FINAL_DELIVERY, event.dispatch.target,
                             event.error.outcome, event.ts)
        return msgspec.structs.replace(
            base, latency_ms=event.latency_ms, cost_usd=event.cost_usd,
            error_code=event.error.code, error_message=event.error.message, detail=event.detail,
            **({} if usage is None else _tokens(usage)))
    if isinstance(event, CompletionSucceeded):
        base = _attempt_base(event.request_id, event.attempt, FINAL_DELIVERY, event.target, SUCCESS, event.ts)
        return msgspec.structs.replace(base, latency_ms=event.latency_ms, cost_usd=event.cost_usd,
                                       ttft_ms=event.ttft_ms, **_tokens(event.response.usage),
                                       cache=_details_encoder.encode(event.cache.public()).decode() if event.cache else None)
    if isinstance(event, AttemptAbandoned):
        # Delivery numbers start at 1; 0 is reserved for the attempt's own record.
        delivery = max(event.delivery, 1)
        return _attempt_base(event.request_id, event.attempt, delivery, event.target, INTERRUPTED, event.ts)
    return None


def _attempt_base(request_id: str, attempt: int, delivery: int, target: Target, outcome: str,
                  ts: float) -> AttemptRow:
    return AttemptRow(request_id=request_id, attempt=attempt, delivery=delivery, provider=target.provider,
                      model=target.model, deployment=target.deployment, outcome=outcome, ts=ts)


def _tokens(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "cached_tokens": usage.cached_tokens, "reasoning_tokens": usage.reasoning_tokens}


def _merge_attempt(old: AttemptRow | None, new: AttemptRow) -> AttemptRow:
    """The store's upsert rule: the first resolved outcome stands; ``ts`` is the earliest seen."""
    if old is None:
        return new
    resolves = old.outcome == DISPATCHED and new.outcome != DISPATCHED
    kept = new if resolves else old
    return msgspec.structs.replace(kept, ts=min(old.ts, new.ts))


def _ledger_row(event: AnyEvent) -> LedgerRow | None:
    if isinstance(event, CompletionSucceeded):
        attempt, target, usage, cost = event.attempt, event.target, event.response.usage, event.cost_usd
    elif isinstance(event, AttemptFailed) and event.cost_usd > 0:
        # Billed on cost, not on the presence of usage: a charge must never be left out of the ledger.
        attempt, target, usage, cost = event.dispatch.attempt, event.dispatch.target, event.usage, event.cost_usd
    else:
        return None
    ctx = event.ctx
    tokens = _tokens(usage) if usage is not None else {
        "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0}
    cache = event.cache if isinstance(event, CompletionSucceeded) else None
    return LedgerRow(request_id=event.request_id, attempt=attempt, tenant=ctx.tenant, team=ctx.team,
                     key_id=ctx.key_id, provider=target.provider, model=target.model,
                     deployment=target.deployment, cost_usd=cost, ts=event.ts, **tokens,
                     cache=cache.status if cache else None,
                     savings_usd=cache.savings_usd if cache and cache.status == "hit" else None)


_details_encoder = msgspec.json.Encoder()


def _admission_row(event: AnyEvent) -> AdmissionRow | None:
    if not isinstance(event, (RequestAdmitted, RequestDenied)) or event.admission is None:
        return None
    info = event.admission
    reason = event.error.code if isinstance(event, RequestDenied) else ""
    return AdmissionRow(request_id=event.request_id, decision=info.decision, reason=reason,
                        data_class=info.data_class, details=_details_encoder.encode(info).decode(), ts=event.ts)


_BUDGET_KINDS = {BudgetReserved: "reserved", BudgetSettled: "settled", BudgetReleased: "released",
                 BudgetAlert: "alert"}
_ENVELOPE = frozenset({"event_id", "request_id", "ts", "schema_version", "ctx"})


def _budget_row(event: AnyEvent) -> BudgetRow | None:
    kind = _BUDGET_KINDS.get(type(event))
    if kind is None:
        return None
    if isinstance(event, BudgetReleased):
        amount = event.reserved_usd
    elif isinstance(event, BudgetAlert):
        amount = event.spent_usd
    else:
        amount = event.amount_usd
    details = {f: getattr(event, f) for f in event.__struct_fields__ if f not in _ENVELOPE}
    return BudgetRow(event_id=event.event_id, request_id=event.request_id, kind=kind, amount_usd=amount,
                     details=_details_encoder.encode(details).decode(), ts=event.ts)


def _routing_row(event: AnyEvent) -> RoutingRow | None:
    decision = getattr(event, "decision", None) if isinstance(event, (AttemptDispatched, CompletionFailed,
                                                                     CompletionSucceeded)) else None
    if decision is None:
        return None
    return RoutingRow(request_id=event.request_id, decision=_details_encoder.encode(decision).decode(), ts=event.ts)


def _attempt_route_row(event: AnyEvent) -> AttemptRouteRow | None:
    if not isinstance(event, AttemptDispatched):
        return None
    return AttemptRouteRow(request_id=event.request_id, attempt=event.attempt, kind=event.kind,
                           breaker_state=event.breaker_state, reason=event.reason, not_before=event.not_before,
                           degraded=event.degraded, ts=event.ts)


# ---- jobs --------------------------------------------------------------------------------

def job_updates(events: Iterable[AnyEvent]) -> list[JobUpdate]:
    """One ``JobUpdate`` per async job the batch touches (events without ``ctx.job`` are ignored)."""
    by_job: dict[str, list[AnyEvent]] = {}
    for event in sorted(events, key=_order):
        if event.ctx.job:
            by_job.setdefault(event.request_id, []).append(event)
    updates = []
    for job_id in sorted(by_job):
        proposed = _job_record(job_id, by_job[job_id])
        if proposed is not None:
            updates.append(JobUpdate(job_id=job_id, proposed=proposed))
    return updates


def _job_record(job_id: str, events: list[AnyEvent]) -> JobRecord | None:
    """The furthest job state shown by one job's events (already in (ts, id) order)."""
    first = events[0]
    model = next((m for m in map(_requested_model, events) if m), None)
    started_at = next((e.ts for e in events if isinstance(
        e, (RequestAdmitted, AttemptDispatched, AttemptFailed, AttemptAbandoned))), None)
    terminal = next((e for e in events if isinstance(e, Terminal)), None)
    record = JobRecord(id=job_id, tenant=first.ctx.tenant, team=first.ctx.team, model=model or "",
                       status="queued", created_at=first.ctx.received_at, started_at=started_at,
                       key_id=first.ctx.key_id, deadline=first.ctx.deadline)
    if terminal is not None:
        if isinstance(terminal, CompletionSucceeded):
            return msgspec.structs.replace(record, model=model or terminal.target.model, status="completed",
                                           completed_at=terminal.ts, result=render_completion(terminal))
        return msgspec.structs.replace(record, status=JOB_STATUS_OF_TERMINAL[terminal.status],
                                       completed_at=terminal.ts, error=_error_of(terminal))
    if started_at is not None:
        return msgspec.structs.replace(record, status="in_progress")
    if any(isinstance(e, CompletionRequested) for e in events):
        return record
    return None  # only a CancelRequested: nothing to say until the terminal event comes


def _error_of(event: Terminal) -> ErrorInfo | None:
    return event.error if isinstance(event, CompletionFailed) else None


# ---- rendering ---------------------------------------------------------------------------

def completion_text(event: CompletionSucceeded) -> str | None:
    """The answer's text (first choice), for operators who turned ``store_text`` on."""
    if not event.response.choices:
        return None
    return message_text(event.response.choices[0].message)


# ---- trace context -----------------------------------------------------------------------

def trace_id_from_headers(headers: Mapping[str, str] | None) -> str | None:
    """The W3C trace id in a message's ``traceparent`` header, if it carries a valid one."""
    if not headers:
        return None
    value = headers.get("traceparent") or headers.get("Traceparent")
    match = _TRACEPARENT.match(value.strip().lower()) if value else None
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)
