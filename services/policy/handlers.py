"""Admission and settlement: plain async functions of (event, deps) → events; the stores come in ``deps``.

``admit`` decides one ``CompletionRequested``. Checks run cheapest and
stateless first and take quota last, so a request refused for one reason
consumes nothing anywhere:

1. the key, re-read from KV: active, attributed to the event's tenant/team, not a viewer (401/403); a
   subject signed in with an OIDC token: its issuer still configured, its role not a viewer
2. request caps (422), prompt size (413), model known (404), context fits (400); output cap clamped
3. models allowed to the key and team (403)
4. data class (team default, raised by the client) → providers allowed to receive it; a model none
   of them serves is refused (403); ``switchyard.mock`` fault injection is refused (400) unless every
   provider the request may reach has ``fault_injection`` on in the catalog
5. risk score; the team's action ``block`` refuses at its threshold (400), ``flag`` admits and marks
6. PII; the team's action ``block`` refuses (400 ``pii_detected``), ``redact`` replaces with placeholders
7. rate limits, RPM and TPM: the key (its own, else the default quota), the team, the tenant (its own,
   else the default quota) (429 with ``x-ratelimit-*``)
8. budget reservation of the estimated maximum cost, team then key (429 ``budget_exceeded``); a
   refusal gives back what step 7 took
9. the admission record (``admissions.py``); a request that ended meanwhile gives everything back
10. the response-cache plan (``shared.cache.plan``) for the worker, on the final request: a cache hit
    has passed every check above and taken the same quota as a miss

Any check that cannot be evaluated — a KV store unreachable, a detector
raising — denies with 503: policy fails closed (``admit_or_fail_closed``
allows one redelivery first, for a blip).

``settle`` handles every terminal event: it settles the actual cost of an
admitted request (releasing the reservation), or releases it when the request
failed, was denied, cancelled or expired. ``charge`` notes attempts that were
billed although they failed (a stream cut or cancelled after output).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import msgspec

from services.policy.admissions import AdmissionRecord, AdmissionStore
from services.policy.sensitivity import allowed_providers, effective_class
from services.policy.settings import PolicySettings, QuotaSettings
from shared.auth import ROLES, KeyRecord, KeyRing
from shared.cache import plan as cache_plan
from shared.canonical import ChatRequest, estimate_prompt_tokens, measure_prompt
from shared.catalog import Catalog, ModelSpec, is_auto
from shared.errors import (
    ContextLengthExceeded,
    ErrorInfo,
    InvalidRequest,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    SwitchyardError,
    Unauthenticated,
    Unprocessable,
)
from shared.events import (
    AdmissionInfo,
    AttemptFailed,
    BudgetAlert,
    BudgetReleased,
    BudgetReserved,
    BudgetSettled,
    CompletionFailed,
    CompletionRequested,
    CompletionSucceeded,
    Event,
    RequestAdmitted,
    RequestContext,
    RequestDenied,
    Target,
    TerminalEvent,
    terminal_id,
)
from shared.ids import SAFE_KEY_ID, SAFE_NAME, SAFE_REQUEST_ID
from shared.oidc import OidcIssuer, subject_record
from shared.pricing import estimate_cost_usd, estimate_max_cost_usd, output_cap
from shared.state.budgets import BudgetRefused, BudgetStore, Scope, iso, to_nano, to_usd
from shared.state.ratelimit import RateLimiter, RateRefused, RateScope, headers
from shared.state.scopes import key_scope_key, team_scope_key, tenant_scope_key
from shared.state.teams import Effective, TeamStore, effective

log = logging.getLogger("switchyard.policy")

# Failed attempts that may have been billed: the worker reports their cost, and the router ends the request.
BILLED_OUTCOMES = frozenset({"stream_broken", "cancelled"})


class PiiScanner(Protocol):
    """The PII detector (``services.policy.pii``)."""

    def redact_request(self, request: ChatRequest) -> tuple[ChatRequest, dict[str, int]]: ...

    def scan_request(self, request: ChatRequest) -> dict[str, int]: ...


class RiskAssessor(Protocol):
    """The prompt-injection / jailbreak heuristic (``services.policy.risk``); ``assess`` returns an object with
    ``score`` in [0, 1] and ``signals``."""

    def assess(self, request: ChatRequest) -> Any: ...


@dataclass(frozen=True)
class PolicyDeps:
    """What admission and settlement read and write. A store left out cannot be consulted: requests that
    need it are denied (503)."""

    settings: PolicySettings
    catalog: Catalog
    keyring: KeyRing
    teams: TeamStore | None = None
    limiter: RateLimiter | None = None
    budgets: BudgetStore | None = None
    admissions: AdmissionStore | None = None
    pii: PiiScanner | None = None
    risk: RiskAssessor | None = None
    clock: Callable[[], float] = time.time
    issuers: Mapping[str, OidcIssuer] = field(default_factory=dict)  # OIDC issuers whose subjects may be admitted


class CheckFailed(ServiceUnavailable):
    """A check could not be evaluated and trying again will not help (a detector raised): deny now (503)."""

    code = "policy_check_failed"
    retryable = False


class Refused(Exception):
    """A denial whose error (with its response headers) is already built."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def budget_scopes(tenant: str, team: str, key: KeyRecord, eff: Effective) -> list[Scope]:
    """Budgets this request must fit in: the team's, then the key's own (only those with a limit)."""
    out = []
    if eff.daily_usd is not None or eff.monthly_usd is not None:
        out.append(Scope(key=team_scope_key(tenant, team), thresholds=eff.thresholds,
                         daily=None if eff.daily_usd is None else to_nano(eff.daily_usd),
                         monthly=None if eff.monthly_usd is None else to_nano(eff.monthly_usd)))
    lim = key.limits
    if lim is not None and (lim.daily_usd is not None or lim.monthly_usd is not None):
        out.append(Scope(key=key_scope_key(key.id), thresholds=eff.thresholds,
                         daily=None if lim.daily_usd is None else to_nano(lim.daily_usd),
                         monthly=None if lim.monthly_usd is None else to_nano(lim.monthly_usd)))
    return out


def rate_scopes(tenant: str, team: str, key: KeyRecord, eff: Effective,
                quotas: QuotaSettings | None = None) -> list[RateScope]:
    """Rate limits this request must fit in (only those with a limit): the key's — its own per dimension, else
    the default ``quotas`` — then the team's own, then the tenant's (its own in ``quotas.tenants``, else the
    default). The operator's key is held only to its own limits (``quotas.exempt_operator``)."""
    out = []
    lim = key.limits
    defaults = quotas if quotas is not None and not (key.operator and quotas.exempt_operator) else None
    rpm = (lim.rpm if lim is not None else None) or (defaults.key_rpm if defaults else None) or None
    tpm = (lim.tpm if lim is not None else None) or (defaults.key_tpm if defaults else None) or None
    if rpm or tpm:
        out.append(RateScope(key=key_scope_key(key.id), rpm=rpm, tpm=tpm))
    if eff.rpm or eff.tpm:
        out.append(RateScope(key=team_scope_key(tenant, team), rpm=eff.rpm, tpm=eff.tpm))
    if defaults is not None:
        own = defaults.tenants.get(tenant)
        t_rpm, t_tpm = (own.rpm, own.tpm) if own is not None else (defaults.tenant_rpm, defaults.tenant_tpm)
        if t_rpm or t_tpm:
            out.append(RateScope(key=tenant_scope_key(tenant), rpm=t_rpm or None, tpm=t_tpm or None))
    return out


# ---- stateless checks ------------------------------------------------------------------------

def check(request: ChatRequest, s: PolicySettings, catalog: Catalog) -> ChatRequest:
    """Validate a request against limits and the catalog; return it with its output cap clamped."""
    if len(request.messages) > s.max_messages:
        raise Unprocessable(f"too many messages: {len(request.messages)} > {s.max_messages}", param="messages")
    if request.tools and len(request.tools) > s.max_tools:
        raise Unprocessable(f"too many tools: {len(request.tools)} > {s.max_tools}", param="tools")
    if request.n is not None and request.n > s.max_n:
        raise Unprocessable(f"n may be at most {s.max_n}", param="n")
    for i, m in enumerate(request.messages):
        if m.role == "tool" and not m.tool_call_id:
            raise InvalidRequest("a tool message needs tool_call_id", param=f"messages[{i}].tool_call_id")
    # Everything sent upstream counts: messages of every role, tool definitions, tool calls, images ...
    size = measure_prompt(request)
    if size.chars > s.max_prompt_chars:
        raise PayloadTooLarge(f"the prompt (messages, tools, tool calls and response format) is longer than "
                              f"{s.max_prompt_chars} characters", param="messages")
    model = catalog.check_servable(request.model)
    prompt_tokens = size.tokens
    if prompt_tokens >= model.context_window:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.context_window} tokens; the messages are about "
            f"{prompt_tokens} tokens.", param="messages")
    cap = request.output_cap()
    if cap is not None and cap > model.max_output_tokens:
        field_ = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        request = msgspec.structs.replace(request, **{field_: model.max_output_tokens})
    return request


def check_fault_injection(request: ChatRequest, targets: list[Target], catalog: Catalog) -> None:
    """Refuse a client's ``switchyard.mock`` faults unless the operator enabled them on every provider the
    request may reach: an injected failure counts against a circuit breaker every tenant shares."""
    if not (request.switchyard or {}).get("mock"):
        return
    closed = sorted({t.provider for t in targets if not catalog.providers[t.provider].fault_injection})
    if closed:
        raise InvalidRequest(f"switchyard.mock (fault injection) is not enabled on {', '.join(closed)}; the "
                             f"operator turns it on per provider in the catalog (fault_injection: true)",
                             param="switchyard.mock", code="fault_injection_disabled")


def check_allowed_model(model: str, *lists: list[str] | None) -> list[str] | None:
    """Refuse a model the key or team may not use; for ``auto``, the models it may choose among (None: any)."""
    given = [set(allowed) for allowed in lists if allowed is not None]
    if not given:
        return None
    if is_auto(model):
        return sorted(set.intersection(*given))  # the router picks only among these
    if any(model not in allowed for allowed in given):
        raise PermissionDenied(f"This key may not use the model '{model}'.", param="model", code="model_not_allowed")
    return None


def output_tokens(request: ChatRequest, model: ModelSpec) -> int:
    """The most output tokens the request can produce on ``model`` (all ``n`` choices)."""
    return output_cap(model, request.output_cap()) * (request.n or 1)


def max_cost_usd(request: ChatRequest, models: list[ModelSpec], prompt_tokens: int, margin: float = 1.0) -> float:
    """The estimated maximum cost over every model the request may run on (a fallback may be dearer)."""
    worst = 0.0
    for m in models:
        worst = max(worst, estimate_max_cost_usd(m, prompt_tokens, request.output_cap(), request.n or 1))
    return worst * margin


def estimate(request: ChatRequest, models: list[ModelSpec], generates: bool = True,
             prompt_tokens: int | None = None) -> tuple[int, int]:
    """What admission takes for a request that may run on ``models``: the reservation (nano-USD, rounded up)
    and the tokens counted against TPM (prompt estimate plus the largest output cap; an embeddings request,
    ``generates=False``, has no output)."""
    unique = list({m.name: m for m in models}.values())
    if prompt_tokens is None:
        prompt_tokens = estimate_prompt_tokens(request)
    if not generates:
        cost = max(estimate_cost_usd(m, prompt_tokens, output_tokens=0) for m in unique)
        return to_nano(cost, up=True), prompt_tokens
    amount = to_nano(max_cost_usd(request, unique, prompt_tokens), up=True)
    return amount, prompt_tokens + max(output_tokens(request, m) for m in unique)


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} ×{n}" for kind, n in sorted(counts.items()))


def _clean_counts(counts: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in dict(counts).items() if int(v) > 0}


def assess_risk(risk: RiskAssessor | None, request: ChatRequest) -> tuple[float, list[str]]:
    if risk is None:
        raise CheckFailed("the prompt-risk check is not available; the request was not admitted")
    try:
        result = risk.assess(request)
        score, signals = float(result.score), [str(s) for s in result.signals]
    except Exception as exc:  # noqa: BLE001 - any detector failure fails closed
        log.error("risk assessment failed: %r", exc)
        raise CheckFailed("the prompt-risk check failed; the request was not admitted") from exc
    if not 0.0 <= score <= 1.0:
        raise CheckFailed("the prompt-risk check returned an invalid score; the request was not admitted")
    return score, signals


def redact(pii: PiiScanner | None, request: ChatRequest) -> tuple[ChatRequest, dict[str, int]]:
    if pii is None:
        raise CheckFailed("PII detection is not available; the request was not admitted")
    try:
        new, counts = pii.redact_request(request)
        return new, _clean_counts(counts)
    except Exception as exc:  # noqa: BLE001
        log.error("PII redaction failed: %r", exc)
        raise CheckFailed("the PII check failed; the request was not admitted") from exc


def scan(pii: PiiScanner | None, request: ChatRequest) -> dict[str, int]:
    if pii is None:
        raise CheckFailed("PII detection is not available; the request was not admitted")
    try:
        return _clean_counts(pii.scan_request(request))
    except Exception as exc:  # noqa: BLE001
        log.error("PII scan failed: %r", exc)
        raise CheckFailed("the PII check failed; the request was not admitted") from exc


# ---- admission -------------------------------------------------------------------------------

@dataclass
class Notes:
    """What admission learnt about one request, for the decision event (whichever way it goes)."""

    data_class: str | None = None
    allowed_providers: list[str] | None = None
    pii_action: str | None = None
    pii: dict[str, int] = field(default_factory=dict)
    risk_action: str | None = None
    risk_score: float | None = None
    risk_signals: list[str] = field(default_factory=list)
    flagged: bool = False
    reserved_usd: float = 0.0
    budgets: list[str] = field(default_factory=list)

    def info(self, decision: str, reason: str = "") -> AdmissionInfo:
        return AdmissionInfo(decision=decision, reason=reason, data_class=self.data_class,
                             allowed_providers=self.allowed_providers, pii_action=self.pii_action, pii=self.pii,
                             risk_action=self.risk_action, risk_score=self.risk_score,
                             risk_signals=self.risk_signals, flagged=self.flagged, reserved_usd=self.reserved_usd,
                             budgets=self.budgets)


def deny(event: CompletionRequested, error: ErrorInfo, notes: Notes | None = None) -> RequestDenied:
    return RequestDenied(event_id=terminal_id(event.request_id), request_id=event.request_id, ctx=event.ctx,
                         error=error, admission=(notes or Notes()).info("denied", error.code))


def _need(store: Any, what: str) -> Any:
    if store is None:
        raise ServiceUnavailable(f"the {what} is not configured")
    return store


async def admit(event: CompletionRequested, deps: PolicyDeps, delivery: int = 1) -> list[Event]:
    """Admit or deny one request (see the module docstring for the order of checks)."""
    notes = Notes()
    try:
        return await _admit(event, deps, notes, delivery)
    except Refused as exc:
        return [deny(event, exc.info, notes)]
    except SwitchyardError as exc:
        if exc.retryable:
            raise
        return [deny(event, exc.info(), notes)]


async def admit_or_fail_closed(event: CompletionRequested, deps: PolicyDeps, delivery: int) -> list[Event]:
    """``admit``; when a check cannot be evaluated, retry once more (a redelivery), then deny with 503."""
    try:
        return await admit(event, deps, delivery)
    except Exception as exc:  # noqa: BLE001 - every failure to decide is a denial in the end
        if delivery < deps.settings.fail_closed_after:
            if isinstance(exc, SwitchyardError):
                raise
            raise ServiceUnavailable(f"policy check failed: {exc!r}") from exc
        log.warning("denying %s: policy checks could not be evaluated (%r)", event.request_id, exc)
        reason = exc.message if isinstance(exc, ServiceUnavailable) else "a policy check failed"
        err = ServiceUnavailable(f"The request was not admitted because policy checks could not be evaluated "
                                 f"({reason}); try again shortly.", code="policy_unavailable", retry_after=1)
        return [deny(event, err.info())]


async def _no_record() -> None:
    return None


async def _caller(ctx: RequestContext, deps: PolicyDeps) -> KeyRecord | None:
    """The key record the request is checked against: the key as stored now, or for a subject signed in with an
    OIDC token (which never travels on the bus) what the gateway found in its claims and what its issuer's
    configuration grants — as long as this process still trusts that issuer."""
    if ctx.issuer is None:
        return await deps.keyring.fetch(ctx.key_id)
    issuer = deps.issuers.get(ctx.issuer)
    if issuer is None or ctx.role not in ROLES:
        return None
    return subject_record(issuer, ctx.key_id, ctx.tenant, ctx.team, ctx.role)


async def _admit(event: CompletionRequested, deps: PolicyDeps, notes: Notes, delivery: int = 1) -> list[Event]:
    s, catalog, ctx, rid = deps.settings, deps.catalog, event.ctx, event.request_id
    if not (SAFE_REQUEST_ID.match(rid) and SAFE_NAME.match(ctx.tenant) and SAFE_NAME.match(ctx.team)
            and SAFE_KEY_ID.match(ctx.key_id)):
        raise InvalidRequest("the request carries identifiers outside the safe alphabet")
    teams, admissions = _need(deps.teams, "team store"), _need(deps.admissions, "admission store")
    # A first delivery of a synchronous request cannot have an admission record yet (only a redelivery, or a
    # job cancelled while queued, can), so it skips that read.
    first = delivery <= 1 and not ctx.job
    key, team, record = await asyncio.gather(_caller(ctx, deps), teams.get(ctx.tenant, ctx.team),
                                             _no_record() if first else admissions.get(rid))
    if record is not None and record.state != "open":
        return []  # the request already ended (e.g. a job cancelled while queued): nothing to admit
    now = deps.clock()

    # 1. the key, as stored now (revoked a moment ago → refused here even if a watch lags), or the OIDC subject
    if key is None or not key.active(now) or key.tenant != ctx.tenant or key.team != ctx.team:
        if ctx.issuer is not None:
            raise Unauthenticated("The token's issuer is no longer trusted by this gateway.", code="invalid_token")
        raise Unauthenticated("Incorrect or missing API key. Pass it as 'Authorization: Bearer <key>'.")
    if key.role == "viewer":
        raise PermissionDenied("Viewer keys are read-only: they cannot create completions.")
    eff = effective(team, s)

    # 2-3. limits, model, what this key and team may use
    request = check(event.request, s, catalog)
    allowed_models = check_allowed_model(request.model, key.allowed_models, eff.allowed_models)

    # 4. data class → providers
    asked = (request.switchyard or {}).get("data_class")
    notes.data_class = data_class = effective_class(eff.data_class, ctx.data_class, asked)
    allowed = allowed_providers(catalog, data_class, key.allowed_providers, eff.allowed_providers)
    notes.allowed_providers = allowed
    targets = [t for t in catalog.targets(request.model) if (allowed is None or t.provider in allowed)
               and (allowed_models is None or t.model in allowed_models)]
    if not targets:
        raise PermissionDenied(f"No deployment of '{request.model}' may receive {data_class} data for this key; "
                               f"choose a model served by an allowed provider.", param="model",
                               code="data_class_not_allowed")
    check_fault_injection(request, targets, catalog)

    # 5. prompt risk
    notes.risk_action = eff.risk_action
    if eff.risk_action != "allow":
        notes.risk_score, notes.risk_signals = assess_risk(deps.risk, request)
        notes.flagged = notes.risk_score >= eff.risk_threshold
        if notes.flagged and eff.risk_action == "block":
            raise InvalidRequest(f"The prompt was blocked by policy: it looks like a prompt-injection or jailbreak "
                                 f"attempt (risk {notes.risk_score:.2f}: {', '.join(notes.risk_signals)}).",
                                 param="messages", code="prompt_risk_blocked")

    # 6. PII
    notes.pii_action = eff.pii_action
    if eff.pii_action == "redact":
        request, notes.pii = redact(deps.pii, request)
    elif eff.pii_action == "block":
        notes.pii = scan(deps.pii, request)
        if notes.pii:
            raise InvalidRequest(f"The prompt contains personal data or secrets ({_summary(notes.pii)}); this "
                                 f"team's policy blocks them.", param="messages", code="pii_detected")

    prompt_tokens = estimate_prompt_tokens(request)  # after redaction: placeholders change the count
    amount, tokens = estimate(request, [catalog.models[t.model] for t in targets], generates=ctx.api != "embeddings",
                              prompt_tokens=prompt_tokens)
    b_scopes = budget_scopes(ctx.tenant, ctx.team, key, eff)
    r_scopes = rate_scopes(ctx.tenant, ctx.team, key, eff, s.quotas)

    gauges: dict = {}
    if record is None:
        # Limits of the key or team's own (not only the default quotas) make a request one to record.
        governed = bool(b_scopes or rate_scopes(ctx.tenant, ctx.team, key, eff))
        gauges = await _take_quota(event, deps, r_scopes, b_scopes, amount, tokens, governed)
        if gauges is None:
            return []  # the request ended while it was being admitted; everything was given back
    else:
        amount, b_scopes = record.amount, record.scopes  # a redelivery: what the first delivery took stands

    notes.budgets = [b.key for b in b_scopes]
    notes.reserved_usd = to_usd(amount) if b_scopes else 0.0
    # The cache plan is decided on the final (redacted) request, after every check and quota: a hit is
    # admitted, limited and budgeted exactly like a miss (it settles at $0).
    cache = cache_plan(request, ctx.api, ctx.cache, mode=eff.cache_mode, ttl_s=eff.cache_ttl_s,
                       max_ttl_s=s.cache_max_ttl_s, similarity=eff.cache_similarity, enabled=s.cache_enabled)
    new_ctx = msgspec.structs.replace(ctx, data_class=data_class, store_text=eff.store_text,
                                      redactions=notes.pii if eff.pii_action == "redact" and notes.pii else None,
                                      rate_headers=headers(gauges) or None,
                                      holds_quota=bool(b_scopes),
                                      cache_plan=cache)
    out: list[Event] = []
    if b_scopes:
        out.append(BudgetReserved(event_id=f"{rid}.budget.reserved", request_id=rid, ctx=new_ctx,
                                  amount_usd=to_usd(amount), scopes=notes.budgets))
    out.append(RequestAdmitted(event_id=f"{rid}.admitted", request_id=rid, ctx=new_ctx, request=request,
                               embedding=event.embedding, allowed_providers=allowed, allowed_models=allowed_models,
                               estimated_prompt_tokens=prompt_tokens, admission=notes.info("admitted")))
    return out


async def _take_quota(event: CompletionRequested, deps: PolicyDeps, r_scopes: list[RateScope],
                      b_scopes: list[Scope], amount: int, tokens: int, governed: bool = True) -> dict | None:
    """Steps 7-9: rate limits, budget reservation, admission record — all or nothing (a request with no
    limits and no budget takes and records nothing).

    A request under the default quotas only (not ``governed`` by a limit or budget of its key or team) is not
    recorded either, just as one without any limit: every request is under the defaults, and a record each
    would cost a KV write and a day of storage per request. Rate quota is never given back once a request is
    admitted, so there is nothing to settle; a redelivery (rare) takes its default-quota unit again.

    Returns the rate-limit gauges, or None when the request turned out to have ended already.
    """
    s, rid, now = deps.settings, event.request_id, deps.clock()
    limiter = _need(deps.limiter, "rate-limit store") if r_scopes else deps.limiter
    budgets = _need(deps.budgets, "budget store") if b_scopes else deps.budgets
    for scope in r_scopes:
        if scope.tpm and tokens > scope.tpm:
            raise Unprocessable(f"This request may use up to {tokens} tokens (prompt plus max_tokens), more than the "
                                f"{scope.tpm} tokens per minute allowed to {scope.label}; lower max_tokens.",
                                param="max_tokens", code="tokens_exceed_rate_limit")
    if not r_scopes and not b_scopes:
        return {}  # nothing to take, nothing to record: a redelivery admits the same way again
    gauges: dict = {}
    if r_scopes:
        try:
            gauges = await limiter.acquire(r_scopes, tokens)
        except RateRefused as exc:
            info = RateLimited(str(exc), retry_after=max(0.001, exc.verdict.retry_after)).info()
            raise Refused(msgspec.structs.replace(info, headers=headers(exc.gauges))) from None
    if not governed:
        return gauges
    try:
        if b_scopes:
            await budgets.reserve(rid, b_scopes, amount, expires=event.ctx.deadline + s.reservation_grace_s)
        stored, created = await _need(deps.admissions, "admission store").open(
            rid, amount if b_scopes else 0, b_scopes)
    except BudgetRefused as exc:
        await _rollback(limiter, r_scopes, tokens)
        r = exc.refusal
        info = RateLimited(r.message(), code="budget_exceeded", retry_after=max(1.0, r.resets_at - now)).info()
        raise Refused(msgspec.structs.replace(info, type="insufficient_quota", headers={
            "x-switchyard-budget-scope": r.scope, "x-switchyard-budget-period": r.period,
            "x-switchyard-budget-reset": iso(r.resets_at)})) from None
    except BaseException:
        await _rollback(limiter, r_scopes, tokens)
        if b_scopes:
            await budgets.release(rid, [b.key for b in b_scopes], quiet=True)
        raise
    if created:
        return gauges
    await _rollback(limiter, r_scopes, tokens)  # another delivery took this request's rate quota already
    if stored.state == "open":
        return gauges
    if b_scopes:
        await budgets.release(rid, [b.key for b in b_scopes], quiet=True)
    return None


async def _rollback(limiter: RateLimiter | None, scopes: list[RateScope], tokens: int) -> None:
    if scopes and limiter is not None:
        await limiter.rollback(scopes, tokens, quiet=True)


# ---- settlement ------------------------------------------------------------------------------

def _cost_of(event: TerminalEvent) -> float:
    return event.cost_usd if isinstance(event, CompletionSucceeded) else 0.0


def _alerts(event: Event, alerts: list) -> list[Event]:
    return [BudgetAlert(event_id=f"alert.{a.scope}.{a.period_key}.{a.threshold:g}",
                        request_id=event.request_id, ctx=event.ctx, scope=a.scope, period=a.period,
                        period_key=a.period_key, threshold=a.threshold, spent_usd=to_usd(a.spent),
                        limit_usd=to_usd(a.limit)) for a in alerts]


async def settle(event: TerminalEvent, deps: PolicyDeps) -> list[Event]:
    """Settle (or release) the budget reservation of a request that has ended."""
    rid, s = event.request_id, deps.settings
    if not SAFE_REQUEST_ID.match(rid) or deps.clock() - event.ts > s.ignore_terminals_older_than_s:
        return []
    if not event.ctx.holds_quota:
        return []  # admitted without rate quota or budget: no record, nothing to settle or release
    admissions = _need(deps.admissions, "admission store")
    record = await admissions.get(rid)
    if record is None and isinstance(event, CompletionSucceeded):
        return []  # admitted without taking anything: nothing to settle
    if record is None:
        record = await admissions.tombstone(rid, event.status)
        if record is None:
            return await _release_orphan(event, deps)
    if record.state == "closed" or not record.scopes:
        return []
    if record.state == "open":
        _check_billed_attempt_seen(event, record)
        record = await admissions.begin_settling(
            rid, lambda r: to_nano(_cost_of(event)) + sum(r.charges.values()), event.status)
        if record is None or record.state == "closed":
            return []
    budgets = _need(deps.budgets, "budget store")
    alerts = await budgets.settle(rid, record.scopes, record.actual or 0, event.ts)
    await admissions.close(rid)
    scopes = [sc.key for sc in record.scopes]
    if isinstance(event, CompletionSucceeded) or record.actual:
        out: list[Event] = [BudgetSettled(event_id=f"{rid}.budget.settled", request_id=rid, ctx=event.ctx,
                                          amount_usd=to_usd(record.actual or 0), reserved_usd=to_usd(record.amount),
                                          scopes=scopes, outcome=event.status)]
    else:
        out = [BudgetReleased(event_id=f"{rid}.budget.released", request_id=rid, ctx=event.ctx,
                              reserved_usd=to_usd(record.amount), scopes=scopes, reason=event.status)]
    return out + _alerts(event, alerts)


def _check_billed_attempt_seen(event: TerminalEvent, record: AdmissionRecord) -> None:
    """A request that ended on a billed attempt settles only once that attempt's cost is noted.

    The worker's ``AttemptFailed`` precedes the router's terminal event in the stream, but the two
    can be handled concurrently; waiting (a redelivery) keeps the charge inside the settlement.
    """
    if isinstance(event, CompletionFailed) and event.history:
        last = event.history[-1]
        if last.outcome in BILLED_OUTCOMES and str(last.attempt) not in record.charges:
            raise ServiceUnavailable(f"settlement of {event.request_id} waits for billed attempt {last.attempt}")


async def _release_orphan(event: TerminalEvent, deps: PolicyDeps) -> list[Event]:
    """A request without an admission record may still hold a reservation if its admission died midway."""
    ctx, budgets = event.ctx, deps.budgets
    if budgets is None or not (SAFE_NAME.match(ctx.tenant) and SAFE_NAME.match(ctx.team)
                               and SAFE_KEY_ID.match(ctx.key_id)):
        return []
    keys = [team_scope_key(ctx.tenant, ctx.team), key_scope_key(ctx.key_id)]
    released = await budgets.release(event.request_id, keys)
    if not released:
        return []
    return [BudgetReleased(event_id=f"{event.request_id}.budget.released", request_id=event.request_id, ctx=ctx,
                           reserved_usd=to_usd(released), scopes=keys, reason=event.status)]


async def charge(event: AttemptFailed, deps: PolicyDeps) -> list[Event]:
    """Note a failed attempt that was billed, so its cost is part of the request's settlement."""
    if event.error.outcome not in BILLED_OUTCOMES and event.cost_usd <= 0:
        return []
    rid = event.request_id
    if not SAFE_REQUEST_ID.match(rid):
        return []
    admissions = _need(deps.admissions, "admission store")
    record = await admissions.get(rid)
    if record is None or not record.scopes:
        return []
    amount, attempt = to_nano(event.cost_usd), event.dispatch.attempt
    before, new = await admissions.add_charge(rid, attempt, amount)
    if before is None or not new or before.state == "open":
        return []  # the settlement will include it (or it was noted already)
    # Settlement began without this charge: spend it on its own.
    alerts = await _need(deps.budgets, "budget store").charge(before.scopes, amount, event.ts)
    settled = BudgetSettled(event_id=f"{rid}.budget.charged.{attempt}", request_id=rid, ctx=event.ctx,
                            amount_usd=to_usd(amount), reserved_usd=0.0, scopes=[s.key for s in before.scopes],
                            outcome="charged")
    return [settled, *_alerts(event, alerts)]
