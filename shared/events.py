"""Lifecycle events: the contract between services.

Every event is a frozen, tagged msgspec struct with the envelope
``event_id`` / ``request_id`` / ``ts`` / ``schema_version``. Event ids are
deterministic (request id + stage), and the bus publishes them as
``Nats-Msg-Id``, so a handler that runs twice for one message publishes
nothing new. New fields get defaults; existing fields never change type.

Subjects (all captured by one stream, ``sy.evt.>``), each spelled once below
as a constant or function that services and events use:

    sy.evt.requested            CompletionRequested        gateway → policy
    sy.evt.admitted             RequestAdmitted            policy  → router
    sy.evt.admitted.routed      RequestAdmitted            policy  → audit (already routed in-process)
    sy.evt.attempt.<provider>   AttemptDispatched          router  → worker.<provider>
    sy.evt.attempt_failed       AttemptFailed              worker  → router
    sy.evt.attempt_abandoned    AttemptAbandoned           worker  → audit
    sy.evt.cancel               CancelRequested            gateway → audit (jobs)
    sy.evt.done.<origin>        terminal events            → gateway <origin>, audit, policy (settle)
    sy.evt.budget.<what>        BudgetReserved/Settled/Released/Alert   policy → audit
    sy.evt.admin.<action>       AdminAction (keys, teams, breakers)     gateway → audit

Lanes: a request travels in the lane of its kind, ``interactive`` (synchronous and
streamed requests) or ``batch`` (async jobs, ``ctx.job``). The interactive lane
uses the subjects above; the batch lane the same subjects with ``.batch``
appended (``sy.evt.requested.batch``, ``sy.evt.admitted.batch``,
``sy.evt.attempt.<provider>.batch.<tenant>``, ``sy.evt.attempt_failed.batch``), each read
by its own durable consumers (``policy-batch``, ``router-batch``,
``worker-<provider>-batch``), so a backlog of jobs never stands in front of an
interactive request (``lane_subject``; docs/architecture.md#lanes).

Streaming chunks are not events: they go over core NATS on
``sy.chunk.<origin>.<request_id>`` (one wildcard subscription per gateway
instance, not one per request) and are never stored; a client that disconnects,
or a job that is cancelled, is signalled to the worker calling the provider for it
on ``sy.cancel.<request_id>`` (one wildcard subscription per worker process). The terminal event still goes through the stream, with the
number of chunks the gateway should have seen. The gateway reads traces and
the ledger from audit by core-NATS request/reply on ``sy.rpc.audit.trace`` and
``sy.rpc.audit.ledger`` (and the request list, statistics and audit trail on
``sy.rpc.audit.requests``, ``.stats`` and ``.events``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal, Union

import msgspec
from msgspec import Struct

from shared.canonical import ChatRequest, ChatResponse, EmbeddingRequest, StreamChunk, Usage
from shared.errors import ErrorInfo

SCHEMA_VERSION = 1
JOB_ORIGIN = "jobs"

# ---- subjects: every subject, consumer filter and RPC name, spelled once -----------------------------------

ALL_EVENTS = "sy.evt.>"  # what the stream captures, and audit's filter
STREAM_SUBJECTS = [ALL_EVENTS]
REQUESTED = "sy.evt.requested"
ADMITTED = "sy.evt.admitted"
ADMITTED_ROUTED = "sy.evt.admitted.routed"  # outside the router's filter: the request is already routed
ATTEMPT_FAILED = "sy.evt.attempt_failed"
ATTEMPT_ABANDONED = "sy.evt.attempt_abandoned"
CANCEL_REQUESTED = "sy.evt.cancel"
DONE_ALL = "sy.evt.done.>"  # terminal events of every origin
BUDGET_RESERVED = "sy.evt.budget.reserved"
BUDGET_SETTLED = "sy.evt.budget.settled"
BUDGET_RELEASED = "sy.evt.budget.released"
BUDGET_ALERT = "sy.evt.budget.alert"
RPC_AUDIT_TRACE = "sy.rpc.audit.trace"  # core-NATS request/reply, answered by audit (queue group)
RPC_AUDIT_LEDGER = "sy.rpc.audit.ledger"
RPC_AUDIT_REQUESTS = "sy.rpc.audit.requests"  # the request list (GET /v1/requests)
RPC_AUDIT_STATS = "sy.rpc.audit.stats"  # statistics (GET /v1/stats)
RPC_AUDIT_EVENTS = "sy.rpc.audit.events"  # the audit trail (GET /v1/audit/events)
ADMIN_ACTIONS = "sy.evt.admin.*"  # what the gateway's admin and breaker endpoints publish


def admin_subject(action: str) -> str:
    """Subject of one kind of administrative action (``sy.evt.admin.key_created``)."""
    return f"sy.evt.admin.{action}"


INTERACTIVE = "interactive"  # synchronous and streamed requests
BATCH = "batch"  # async jobs
LANES = (INTERACTIVE, BATCH)


def lane_of(ctx: "RequestContext") -> str:
    """The lane a request travels in: jobs in ``batch``, everything a client waits on in ``interactive``."""
    return BATCH if ctx.job else INTERACTIVE


def lane_subject(subject: str, lane: str) -> str:
    """``subject`` in ``lane``: the interactive lane keeps the subject, the batch lane appends ``.batch``."""
    return subject if lane == INTERACTIVE else f"{subject}.{lane}"


def in_every_lane(subject: str) -> tuple[str, ...]:
    """``subject`` in each lane (what a role that serves both lanes publishes or reads)."""
    return tuple(lane_subject(subject, lane) for lane in LANES)


def attempt_subject(provider: str, lane: str = INTERACTIVE, tenant: str | None = None) -> str:
    """Subject of attempts for ``provider``'s workers, in ``lane``.

    Batch attempts carry their tenant as a last token (``sy.evt.attempt.<provider>.batch.<tenant>``): the lane's
    consumer reads them all (``tenant`` None gives that filter), and how many each tenant has queued is in the
    stream's own per-subject counts, which is how a worker knows whether to drain the lane fairly.
    """
    base = lane_subject(f"sy.evt.attempt.{provider}", lane)
    return base if lane == INTERACTIVE else f"{base}.{tenant or '>'}"


def done_subject(origin: str) -> str:
    """Subject of terminal events for requests that came in through ``origin``."""
    return f"sy.evt.done.{origin}"


def chunk_subject(origin: str, request_id: str) -> str:
    """Core-NATS subject carrying a streaming request's chunks to its gateway (ephemeral, not in the stream)."""
    return f"sy.chunk.{origin}.{request_id}"


def cancel_subject(request_id: str) -> str:
    """Core-NATS subject on which a gateway tells the worker calling the provider that its client went away (a
    stream) or that the job was cancelled."""
    return f"sy.cancel.{request_id}"


class CachePlan(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the worker does with the response cache for one request (decided by policy at admission)."""

    mode: str  # use (look up, store a miss) / refresh (skip the lookup, store) / bypass (neither; ``reason`` says why)
    ttl_s: float = 0.0  # how long a stored answer is served (the team's TTL under the operator's ceiling)
    semantic: bool = False  # also look up similar prompts (the team's cache mode is ``semantic``)
    similarity: float = 0.0  # the cosine similarity a semantic hit needs
    reason: str = ""


class PromptRef(Struct, frozen=True, kw_only=True):
    """The prompt template a request was rendered from (never its variables or text)."""

    id: str
    version: int


class RequestContext(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who asked, where the answer goes, and by when: carried by every event of a request."""

    tenant: str
    team: str
    key_id: str
    origin: str  # a gateway instance id (sync waiters) or JOB_ORIGIN
    deadline: float  # epoch seconds
    received_at: float  # epoch seconds at the gateway
    job: bool = False
    stream: bool = False
    api: str = "chat.completions"
    # Set by policy at admission (the gateway leaves them empty); they travel with every later event.
    data_class: str | None = None  # public / internal / confidential / restricted
    store_text: bool = False  # the team lets audit keep completion text
    redactions: dict[str, int] | None = None  # PII kind → count replaced by placeholders (never the values)
    rate_headers: dict[str, str] | None = None  # x-ratelimit-* as of admission, for the response
    # False once policy admitted the request without reserving any budget: nothing to settle (rate quota is
    # never given back once a request is admitted).
    holds_quota: bool = True
    # Set by the gateway for a caller signed in with an OIDC token (None: an API key): the issuer that vouched for
    # it and the role its claims map to; ``key_id`` is then the subject's stable id (shared.oidc.subject_id).
    issuer: str | None = None
    role: str | None = None
    cache: str | None = None  # the client's x-switchyard-cache (use / refresh / off), set by the gateway
    cache_plan: CachePlan | None = None  # set by policy: None when the cache is not in play for this request
    prompt: PromptRef | None = None  # set by the gateway when the request referenced a prompt template

    def remaining(self, now: float | None = None) -> float:
        return self.deadline - (time.time() if now is None else now)


class Target(Struct, frozen=True, kw_only=True):
    """One concrete place a request can run: a deployment of a model at a provider."""

    deployment: str
    provider: str
    model: str
    upstream_model: str


class AttemptSummary(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one attempt came to, as carried forward for the final error."""

    attempt: int
    deployment: str
    provider: str
    model: str
    outcome: str
    message: str = ""
    latency_ms: float = 0.0
    kind: str = ""  # first / fallback / retry / last_resort
    breaker_state: str = ""  # the deployment's breaker when the attempt was decided
    retry_after: float | None = None  # what the provider asked for, when it did


# ---- routing decisions: why a request went where it went (carried to the response and the trace) ----

class CandidateView(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One candidate deployment as the router saw it: its estimates and scores, or why it was excluded."""

    deployment: str
    provider: str
    model: str
    excluded: str | None = None  # reason code: circuit_open, capability, context_window, max_cost, policy, ...
    detail: str = ""  # the exclusion in words
    rank: int | None = None  # position in the plan (1: chosen first)
    score: float | None = None  # weighted total, eligible candidates only
    scores: dict[str, float] = msgspec.field(default_factory=dict)  # cost/latency/quality/availability in [0, 1]
    est_cost_usd: float = 0.0
    latency_ms: float = 0.0
    latency_source: str = "prior"  # prior / observed
    quality: float = 0.0
    error_rate: float = 0.0
    breaker: str = "closed"
    in_flight: int = 0
    sampled: dict[str, float] | None = None  # the bandit's draws for this candidate


class Baseline(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The most expensive eligible candidate: what savings are measured against."""

    model: str
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    est_cost_usd: float = 0.0


class RoutingDecision(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Why the router chose what it chose: the same object on every attempt, the response and the trace."""

    mode: str  # model / alias / auto / route
    requested: str  # the model name the client sent
    strategy: str = "score"  # score / chain / bandit
    selected: str = ""  # deployment of the first attempt
    reason: str = ""
    preference: str | None = None
    weights: dict[str, float] = msgspec.field(default_factory=dict)
    task: str | None = None
    task_source: str | None = None  # hint / route / classifier / default
    task_signals: list[str] = msgspec.field(default_factory=list)  # classifier cues (fixed vocabulary, never text)
    constraints: dict[str, Any] = msgspec.field(default_factory=dict)
    route: str | None = None
    variant: str | None = None
    balancing: str | None = None
    seed: str = ""  # hex digest the draws below come from (request id + purpose)
    draws: dict[str, float] = msgspec.field(default_factory=dict)
    candidates: list[CandidateView] = msgspec.field(default_factory=list)
    estimated_cost_usd: float = 0.0
    baseline: Baseline | None = None
    last_resort: str | None = None  # the model appended as the last resort (an answer from it is degraded)
    decided_by: str = ""  # the router replica
    decided_at: float = 0.0


class Event(Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Envelope shared by every event."""

    event_id: str
    request_id: str
    ts: float = msgspec.field(default_factory=time.time)
    schema_version: int = SCHEMA_VERSION
    ctx: RequestContext

    terminal: ClassVar[bool] = False

    def subject(self) -> str:  # pragma: no cover - every concrete event overrides
        raise NotImplementedError


class CompletionRequested(Event, frozen=True, kw_only=True, tag=True):
    """A client asked for a completion (or embeddings); the gateway has it durably.

    For embeddings (``ctx.api == "embeddings"``) ``request`` carries each text input as a user
    message, so admission checks and redaction treat it like any prompt; ``embedding`` keeps the
    client's other parameters.
    """

    request: ChatRequest
    embedding: EmbeddingRequest | None = None

    def subject(self) -> str:
        return lane_subject(REQUESTED, lane_of(self.ctx))


class AdmissionInfo(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What policy decided about a request and why; counts only, never prompt text."""

    decision: str  # admitted / denied
    reason: str = ""  # the error code of a denial
    data_class: str | None = None
    allowed_providers: list[str] | None = None
    pii_action: str | None = None
    pii: dict[str, int] = msgspec.field(default_factory=dict)  # kind → count found (redacted or blocked)
    risk_action: str | None = None
    risk_score: float | None = None
    risk_signals: list[str] = msgspec.field(default_factory=list)
    flagged: bool = False
    reserved_usd: float = 0.0
    budgets: list[str] = msgspec.field(default_factory=list)  # budget scopes holding the reservation


class RequestAdmitted(Event, frozen=True, kw_only=True, tag=True):
    """Policy let the request through, with the constraints routing must honour."""

    request: ChatRequest
    embedding: EmbeddingRequest | None = None
    allowed_providers: list[str] | None = None
    estimated_prompt_tokens: int = 0
    admission: AdmissionInfo | None = None
    allowed_models: list[str] | None = None  # the key/team may use only these (honoured by ``auto`` routing)
    # Set when a router in the policy's own process routed the request at admission (stage fusion): its first
    # attempt (or its end) was durable before this event, which then goes where no router reads it.
    routed_by: str | None = None

    def subject(self) -> str:
        return ADMITTED_ROUTED if self.routed_by else lane_subject(ADMITTED, lane_of(self.ctx))


class AttemptDispatched(Event, frozen=True, kw_only=True, tag=True):
    """The router sent attempt ``attempt`` to ``target``; ``plan`` holds the candidates still left."""

    request: ChatRequest
    embedding: EmbeddingRequest | None = None
    attempt: int
    target: Target
    plan: list[Target] = msgspec.field(default_factory=list)
    history: list[AttemptSummary] = msgspec.field(default_factory=list)
    timeout_s: float = 60.0
    decision: RoutingDecision | None = None
    kind: str = "first"  # first / fallback / retry / last_resort
    reason: str = ""  # why this attempt (the fallback or retry and what it waited for)
    breaker_state: str = ""  # the target's breaker state when the router decided
    not_before: float | None = None  # a retry's earliest start (backoff / Retry-After), epoch seconds
    degraded: bool = False  # the attempt goes to the designated last-resort model

    def subject(self) -> str:
        return attempt_subject(self.target.provider, lane_of(self.ctx), self.ctx.tenant)


class AttemptFailed(Event, frozen=True, kw_only=True, tag=True):
    """An attempt ended without an answer; the router decides what comes next."""

    dispatch: AttemptDispatched
    error: ErrorInfo
    latency_ms: float = 0.0
    usage: Usage | None = None
    cost_usd: float = 0.0
    # Operator-only, scrubbed: the upstream status and error body excerpt. Audit keeps it; only an operator's
    # trace read shows it, and it never reaches the client's error.
    detail: str | None = None
    # The request had ended (a job cancelled while its provider call ran, or a terminal that got there first)
    # when this attempt's outcome came: recorded and billed like any attempt, and nothing follows from it.
    after_end: bool = False

    def subject(self) -> str:
        return lane_subject(ATTEMPT_FAILED, lane_of(self.ctx))


class AttemptAbandoned(Event, frozen=True, kw_only=True, tag=True):
    """A worker picked up an attempt whose earlier delivery never finished: its outcome is unknown."""

    attempt: int
    target: Target
    delivery: int

    def subject(self) -> str:
        return ATTEMPT_ABANDONED


class CancelRequested(Event, frozen=True, kw_only=True, tag=True):
    """The owner of a job asked to cancel it."""

    def subject(self) -> str:
        return CANCEL_REQUESTED


class Terminal(Event, frozen=True, kw_only=True, tag=True):
    """Base of the events that end a request. Exactly one reaches the stream per request."""

    terminal: ClassVar[bool] = True
    status: ClassVar[str] = "failed"

    def subject(self) -> str:
        return done_subject(self.ctx.origin)


class CacheInfo(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the response cache did for a request: answered it (hit), stored its answer (miss), or stayed out."""

    status: str  # hit / miss / bypass
    kind: str = "exact"  # exact / semantic (how a hit matched)
    reason: str = ""  # why bypass (or "refresh": the lookup was skipped on request)
    similarity: float | None = None  # a semantic hit's cosine similarity
    age_s: float | None = None  # how old the served answer is
    source: str = ""  # the request whose upstream answer a hit replays
    savings_usd: float = 0.0  # what the served answer cost upstream when it was made (a hit's saving)
    lookup_cost_usd: float = 0.0  # the embeddings call of a semantic lookup (included in the request's cost)
    coalesced: bool = False  # the answer came from an identical request in flight at the same time

    def public(self) -> dict[str, Any]:
        """Every field, defaults included (the response's ``switchyard.cache`` and the trace)."""
        return {f: getattr(self, f) for f in self.__struct_fields__}


class CompletionSucceeded(Terminal, frozen=True, kw_only=True, tag=True):
    """The request was answered."""

    status: ClassVar[str] = "succeeded"
    attempt: int
    target: Target
    response: ChatResponse
    cost_usd: float
    latency_ms: float  # time spent waiting on the provider
    ttft_ms: float | None = None
    history: list[AttemptSummary] = msgspec.field(default_factory=list)
    chunks: int = 0  # streamed requests: chunk messages sent before this event
    embeddings: list[list[float]] | None = None  # embeddings requests: the vectors, in input order
    decision: RoutingDecision | None = None  # the routing decision that led here
    degraded: bool = False  # answered by the last-resort model
    cache: CacheInfo | None = None  # set when the response cache was in play


class CompletionFailed(Terminal, frozen=True, kw_only=True, tag=True):
    """No candidate could answer, or the request could not be processed."""

    status: ClassVar[str] = "failed"
    error: ErrorInfo
    history: list[AttemptSummary] = msgspec.field(default_factory=list)
    decision: RoutingDecision | None = None


class RequestDenied(CompletionFailed, frozen=True, kw_only=True, tag=True):
    """Policy refused the request."""

    status: ClassVar[str] = "denied"
    admission: AdmissionInfo | None = None


class CompletionCancelled(CompletionFailed, frozen=True, kw_only=True, tag=True):
    """The request was cancelled before it finished."""

    status: ClassVar[str] = "cancelled"


class CompletionExpired(CompletionFailed, frozen=True, kw_only=True, tag=True):
    """The request's deadline passed before it finished."""

    status: ClassVar[str] = "expired"


# ---- budgets: every cent reserved, settled or released is an event ---------------------------

class BudgetReserved(Event, frozen=True, kw_only=True, tag=True):
    """Admission reserved the request's estimated maximum cost against these budget scopes."""

    amount_usd: float
    scopes: list[str]

    def subject(self) -> str:
        return BUDGET_RESERVED


class BudgetSettled(Event, frozen=True, kw_only=True, tag=True):
    """The request ended having cost ``amount_usd``; its reservation is replaced by that spend."""

    amount_usd: float
    reserved_usd: float
    scopes: list[str]
    outcome: str = ""  # the terminal status (or ``charged`` for a billed attempt seen after the end)

    def subject(self) -> str:
        return BUDGET_SETTLED


class BudgetReleased(Event, frozen=True, kw_only=True, tag=True):
    """The reservation was given back unspent (the request failed, was denied, cancelled or expired)."""

    reserved_usd: float
    scopes: list[str]
    reason: str

    def subject(self) -> str:
        return BUDGET_RELEASED


class BudgetAlert(Event, frozen=True, kw_only=True, tag=True):
    """A budget's spend crossed a soft threshold; sent once per budget, period and threshold."""

    scope: str
    period: str  # daily / monthly
    period_key: str  # e.g. 2025-01-31 / 2025-01
    threshold: float
    spent_usd: float
    limit_usd: float

    def subject(self) -> str:
        return BUDGET_ALERT


# ---- administrative actions: keys, teams and breakers changed through the API (the audit trail) ----------

ADMIN_ORIGIN = "admin"
ADMIN_ACTION_KINDS = frozenset({"key_created", "key_revoked", "key_rotated", "team_created", "team_changed",
                                "breaker", "cache_purged"})


class AdminAction(Event, frozen=True, kw_only=True, tag=True):
    """An admin or operator changed a key, a team or a breaker: who, what, on what (metadata only, never a key).

    Not a request: ``request_id`` is the action's own id, ``ctx`` names the tenant and team acted on and, as
    ``key_id``, the acting key; audit records it in the audit trail only.
    """

    action: str  # one of ADMIN_ACTION_KINDS
    subject_id: str  # the key id, team name or deployment acted on
    detail: dict[str, Any] = msgspec.field(default_factory=dict)

    def subject(self) -> str:
        return admin_subject(self.action)


def admin_action(action: str, *, tenant: str, team: str, actor: str, subject_id: str,
                 detail: dict[str, Any] | None = None, now: float | None = None) -> AdminAction:
    """A new ``AdminAction`` with a fresh id (its publish retries are de-duplicated by that id)."""
    if action not in ADMIN_ACTION_KINDS:
        raise ValueError(f"unknown admin action {action!r}")
    ts = time.time() if now is None else now
    action_id = f"adm_{uuid.uuid4().hex}"
    ctx = RequestContext(tenant=tenant, team=team, key_id=actor, origin=ADMIN_ORIGIN, deadline=ts, received_at=ts)
    return AdminAction(event_id=action_id, request_id=action_id, ts=ts, ctx=ctx, action=action,
                       subject_id=subject_id, detail=detail or {})


class ChunkMessage(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One streamed increment on ``sy.chunk.<origin>.<request_id>`` (ephemeral; not an event)."""

    attempt: int
    delivery: int
    seq: int
    chunk: StreamChunk
    model: str = ""  # the catalog model serving the attempt
    cache: str = ""  # hit / miss / bypass when the response cache is in play (the gateway's response header)
    # On the first chunk only: the response headers a streamed answer starts with (provider, rate limits,
    # redactions: what the gateway's own event does not know; ``openai_format.response_headers``).
    headers: dict[str, str] | None = None


chunk_encoder = msgspec.json.Encoder()
chunk_decoder = msgspec.json.Decoder(ChunkMessage)


AnyEvent = Union[
    CompletionRequested,
    RequestAdmitted,
    AttemptDispatched,
    AttemptFailed,
    AttemptAbandoned,
    CancelRequested,
    CompletionSucceeded,
    CompletionFailed,
    RequestDenied,
    CompletionCancelled,
    CompletionExpired,
    BudgetReserved,
    BudgetSettled,
    BudgetReleased,
    BudgetAlert,
    AdminAction,
]

TerminalEvent = Union[CompletionSucceeded, CompletionFailed, RequestDenied, CompletionCancelled, CompletionExpired]

encoder = msgspec.json.Encoder()
decoder = msgspec.json.Decoder(AnyEvent)


def terminal_id(request_id: str) -> str:
    """Every terminal event of a request shares this id, so the stream keeps only the first."""
    return f"{request_id}.done"


# ---- job records (JetStream KV, written by audit, read by any gateway) ----------------------

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled", "expired"]
TERMINAL_JOB_STATUSES = frozenset({"completed", "failed", "cancelled", "expired"})
JOB_STATUS_OF_TERMINAL = {
    "succeeded": "completed",
    "failed": "failed",
    "denied": "failed",
    "cancelled": "cancelled",
    "expired": "expired",
}


class JobRecord(Struct, kw_only=True, omit_defaults=True):
    """The pollable state of one async job."""

    id: str
    tenant: str
    team: str
    model: str
    status: JobStatus
    created_at: float
    key_id: str = ""
    deadline: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    result: dict | None = None  # the chat completion, OpenAI shape
    error: ErrorInfo | None = None
    size: int = 0  # bytes of the request as submitted, as counted against its tenant's queue cap (never shown)

    def public(self) -> dict:
        """The job as the API shows it."""
        body: dict = {
            "id": self.id,
            "object": "job",
            "model": self.model,
            "status": self.status,
            "created_at": int(self.created_at),
            "started_at": int(self.started_at) if self.started_at else None,
            "completed_at": int(self.completed_at) if self.completed_at else None,
            "result": self.result,
            "error": self.error.body()["error"] if self.error else None,
        }
        return body


job_encoder = encoder
job_decoder = msgspec.json.Decoder(JobRecord)
