"""Routing logic: which deployment runs an attempt, and what happens when one fails.

``route`` (a ``RequestAdmitted``) decides the whole plan at once:

1. hints (``services.router.hints``) and the task (hinted, else the local
   classifier);
2. the first matching declarative route (``services.router.rules``), and
   its split arm drawn from the request id;
3. the candidate deployments: the model asked for, an alias's or route's
   chain, or every model for ``auto``; each assessed against the hard
   constraints and the shared health (``services.router.scoring``), the
   survivors scored (or sampled by the bandit) and ordered — chains in
   declared order, scored modes best first — with the deployments of one
   model ordered by the load balancer;
4. an optional last-resort model appended (an answer from it is degraded).

The first candidate gets attempt 1; the rest travel with the attempt as its
``plan`` and the whole ``RoutingDecision`` (every candidate's scores and
exclusions, the seed and draws) travels with every attempt, so any router
replica answers a failed attempt from the event alone.

``on_attempt_failed`` (an ``AttemptFailed``): the request's own errors and
cut streams end it; otherwise the next plan entry whose breaker admits a
call gets the next attempt at once (fallback). When the plan is used up, a
deployment that failed with a retryable error (5xx, timeout, 429) is tried
again (retry) — at most ``max_retries_per_deployment`` times, after
exponential backoff with seeded jitter or the provider's ``Retry-After``
(when no longer than ``max_retry_delay_s``), only if the wait still leaves
``min_attempt_timeout_s`` before the deadline, and only within the retry
budget: retries to a deployment over ``retry_budget_window_s`` may not exceed
``retry_budget_ratio`` × its first attempts + ``retry_budget_min`` (counted
by every router replica, shared through KV). The wait is not spent in the
handler: it raises ``Defer`` and the bus redelivers the failure when it is
over. Otherwise the request fails with every attempt's reason.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from services.router import balancing, bandit, draws
from services.router.classifier import classify
from services.router.hints import Hints, parse_hints
from services.router.rules import match_route, pick_variant, sticky_key, variant_name
from services.router.scoring import (
    Candidate,
    Need,
    assess,
    model_latency_prior,
    order_key,
    required_capabilities,
    score,
    weights_for,
)
from services.router.settings import RouterSettings
from shared.canonical import ChatRequest, estimate_prompt_tokens
from shared.catalog import Catalog, ModelSpec, auto_preference, is_auto
from shared.errors import Defer, ErrorInfo, InvalidRequest, ServiceUnavailable, Unprocessable
from shared.events import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSummary,
    Baseline,
    CompletionCancelled,
    CompletionFailed,
    Event,
    RequestAdmitted,
    RoutingDecision,
    Target,
    terminal_id,
)
from shared.lifecycle import expired
from shared.state.health import HealthView, add_dispatch

BREAKER_REASONS = frozenset({"circuit_open", "forced_open", "half_open_busy", "breaker_unavailable"})
CLIENT_REASONS = frozenset({"capability", "context_window", "max_cost", "max_latency", "provider_not_allowed",
                            "provider_denied"})
NO_FALLBACK = frozenset({"bad_request", "stream_broken"})
RETRYABLE = frozenset({"failed", "timeout", "rate_limited"})
MIN_DEFER_S = 0.002  # a wait shorter than this is not worth a redelivery


class HealthSource(Protocol):
    """Where routing reads shared health and counts its dispatches (``HealthStore`` in a service)."""

    def view(self) -> HealthView: ...

    def note_dispatch(self, deployment: str, kind: str, now: float) -> None: ...


class StaticHealth:
    """A fixed health picture whose retry-budget counts stay in memory: for tests and tools."""

    def __init__(self, view: HealthView | None = None, window_s: float = 10.0) -> None:
        self._view = view or HealthView()
        self._window_s = window_s
        if not isinstance(self._view.budgets, dict):
            self._view.budgets = dict(self._view.budgets)

    def view(self) -> HealthView:
        return self._view

    def note_dispatch(self, deployment: str, kind: str, now: float) -> None:
        add_dispatch(self._view.budgets, "static", deployment, kind, now, self._window_s)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RouterDeps:
    """What routing reads: settings, the catalog, shared health, and which replica this is."""

    settings: RouterSettings
    catalog: Catalog
    health: HealthSource = field(default_factory=StaticHealth)
    instance: str = "router"


@dataclass
class Plan:
    """The outcome of planning one request: the decision, the ordered targets, or why there are none."""

    decision: RoutingDecision
    targets: list[Target]
    error: ErrorInfo | None = None


# ---- planning ---------------------------------------------------------------------------------

def _task(request: ChatRequest, api: str, hints: Hints, needed: bool) -> tuple[str | None, str | None, tuple[str, ...]]:
    """The hinted task, else the classifier's — only when something depends on it (scoring, a route's match)."""
    if hints.task:
        return hints.task, "hint", ()
    if api == "embeddings":
        return "embeddings", "api", ()
    if not needed:
        return None, None, ()
    found = classify(request)
    return found.task, "classifier", found.signals


def plan_request(event: RequestAdmitted, deps: RouterDeps, now: float) -> Plan:
    """Decide where a request may run, in order; raises ``InvalidRequest`` for a malformed hint."""
    s, cat = deps.settings, deps.catalog
    req, ctx, rid, name = event.request, event.ctx, event.request_id, event.request.model
    hints = parse_hints(req.switchyard)
    # An explicitly named model or alias needs no task unless a route matches on it.
    needed = is_auto(name) or name in cat.virtual or any(r.match.task is not None for r in cat.routes)
    task, task_source, signals = _task(req, ctx.api, hints, needed)

    route = match_route(cat, name, ctx, task, req, hints.headers or {}) if cat.routes else None
    variant, split_draw = pick_variant(route, sticky_key(route, rid, ctx, req)) if route else (None, None)
    if route is not None:
        mode = "route"
        chain = list(variant.models if variant is not None and variant.models else route.models)
        # A chain is tried in order; a route without one scores whatever the requested name may reach.
        models = [*chain, *(m for m in route.fallback if m not in chain)] if chain else cat.names_for(name)
        scored = not chain
    elif is_auto(name) or name in cat.virtual:
        mode, models, scored = "auto", cat.names_for(name), True
    elif name in cat.aliases:
        mode, models, scored = "alias", list(cat.aliases[name]), False
    else:
        mode, models, scored = "model", [name], False
    models = list(dict.fromkeys(m for m in models if m in cat.models))

    preference = (hints.preference or (variant.preference if variant is not None else None)
                  or (route.preference if route is not None else None) or auto_preference(name)
                  or s.default_preference)
    weights = weights_for(preference, hints.weights)
    wanted = hints.strategy or (route.strategy if route is not None else None) or s.strategy
    strategy = wanted if scored else "chain"

    caps = set(hints.capabilities)
    if mode == "model":
        caps |= {"embeddings"} if ctx.api == "embeddings" else set()  # the client chose the model itself
        # ... but the catalog says which models read images: one that does not would fail upstream (or, the
        # mock, answer as if it had seen them), so the request is refused here with a 400.
        caps |= required_capabilities(req, ctx.api, ctx.stream) & {"vision"}
    else:
        caps |= required_capabilities(req, ctx.api, ctx.stream)
    cap = req.output_cap()
    need = Need(
        prompt_tokens=event.estimated_prompt_tokens or estimate_prompt_tokens(req),
        output_tokens=cap or s.default_output_tokens, output_cap=cap, choices=req.n or 1,
        capabilities=frozenset(caps),
        max_cost_usd=hints.max_cost_usd, max_latency_ms=hints.max_latency_ms,
        allowed_providers=hints.allowed_providers, denied_providers=hints.denied_providers,
        policy_providers=frozenset(event.allowed_providers) if event.allowed_providers is not None else None,
        policy_models=frozenset(event.allowed_models) if event.allowed_models is not None and mode != "model"
        else None,
        task=task)

    view = deps.health.view()
    last_resort = (route.last_resort if route is not None and route.last_resort else None) or cat.last_resort
    if last_resort is not None and not scored and last_resort in models:
        last_resort = None  # declared in the chain: an ordinary member
    cands: list[Candidate] = []
    for m in models:
        deployments = cat.deployments_of(m)
        prior = model_latency_prior(deployments, cat.models[m], view, now) if len(deployments) > 1 else None
        for t in deployments:
            spec = cat.deployment_spec(t)
            c = assess(t, cat.models[m], need, view, now, weight=spec.weight if spec else 1.0, api=ctx.api,
                       prior_ms=prior)
            if scored and m == last_resort:
                c.exclude("last_resort", "kept as the last resort")
            cands.append(c)

    made: dict[str, float] = {}
    if split_draw is not None:
        made[f"route.{route.name}"] = round(split_draw, 6)
    if strategy == "bandit":
        made |= bandit.sample(cands, weights, view, task, rid)
    else:
        score(cands, weights)

    by_model: dict[str, list[Candidate]] = {}
    for c in cands:
        if c.eligible:
            by_model.setdefault(c.model.name, []).append(c)
    if scored:
        model_order = sorted(by_model, key=lambda m: min(order_key(c) for c in by_model[m]))
    else:
        model_order = [m for m in models if m in by_model]
    ordered: list[Candidate] = []
    for m in model_order:
        seq, d = balancing.order(by_model[m], s.balancing, rid, f"balance.{m}")
        made |= d
        ordered.extend(seq)
    used_last_resort = None
    if last_resort is not None and all(c.model.name != last_resort for c in ordered):
        spare = [assess(t, cat.models[last_resort], need, view, now, api=ctx.api)
                 for t in cat.deployments_of(last_resort)]
        ok = [c for c in spare if c.eligible]
        if ok:
            seq, d = balancing.order(ok, s.balancing, rid, f"balance.{last_resort}")
            made |= d
            # The last resort ends every plan, so the attempt limit must leave room for it.
            ordered = [*ordered[: s.max_attempts - 1], seq[0]]
            used_last_resort = last_resort
        cands = [c for c in cands if c.model.name != last_resort] + spare
    ordered = ordered[: s.max_attempts]
    for i, c in enumerate(ordered, 1):
        c.rank = i

    pool = [c for c in cands if c.eligible and c.model.name != used_last_resort]
    top = max(pool, key=lambda c: (c.est_cost_usd, c.target.deployment)) if pool else None
    baseline = Baseline(model=top.model.name, input_per_mtok=top.model.input_per_mtok,
                        output_per_mtok=top.model.output_per_mtok,
                        cached_input_per_mtok=top.model.cached_input_per_mtok,
                        est_cost_usd=round(top.est_cost_usd, 10)) if top is not None else None
    constraints = hints.constraints()
    if need.capabilities:
        constraints["capabilities"] = sorted(need.capabilities)
    if need.policy_providers is not None:
        constraints["policy_providers"] = sorted(need.policy_providers)
    if cap is not None:
        constraints["output_cap"] = cap
    first = ordered[0] if ordered else None
    decision = RoutingDecision(
        mode=mode, requested=name, strategy=strategy, selected=first.target.deployment if first else "",
        reason=_reason(mode, name, strategy, "custom" if hints.weights else preference, task, task_source, route,
                       variant, ordered, cands, used_last_resort, s.balancing),
        preference=preference if scored else None, weights=weights.as_dict() if scored else {},
        task=task, task_source=task_source, task_signals=list(signals), constraints=constraints,
        route=route.name if route is not None else None, variant=variant_name(route, variant) if route else None,
        balancing=s.balancing, seed=draws.seed_hex(rid) if made else "",
        draws={k: round(v, 6) for k, v in made.items()},
        candidates=[c.view() for c in cands], estimated_cost_usd=round(first.est_cost_usd, 10) if first else 0.0,
        baseline=baseline, last_resort=used_last_resort, decided_by=deps.instance, decided_at=now)
    error = None if ordered else _no_candidates(event, cands, view, now)
    return Plan(decision=decision, targets=[c.target for c in ordered], error=error)


def _reason(mode: str, name: str, strategy: str, preference: str, task: str, task_source: str, route, variant,
            ordered: list[Candidate], cands: list[Candidate], last_resort: str | None, balancing_: str) -> str:
    if not ordered:
        return "no candidate may serve this request"
    first = ordered[0]
    # A model of the other kind (an embeddings model for a chat request) was never a candidate worth counting.
    kind = "embeddings" in first.model.capabilities
    excluded = Counter(c.excluded for c in cands if c.excluded and c.excluded != "last_resort"
                       and ("embeddings" in c.model.capabilities) == kind)
    out = f"{first.target.deployment} ({first.model.name})"
    if last_resort is not None and first.model.name == last_resort:
        out += f": every other candidate is unavailable, so the last resort {last_resort} (degraded)"
    elif mode == "model":
        siblings = sum(c.model.name == first.model.name for c in ordered)
        out += ": the requested model" + (f", {balancing_} over its {siblings} deployments" if siblings > 1 else "")
    elif strategy == "chain":
        where = f"route {route.name}" + (f" variant {variant_name(route, variant)}" if variant else "") \
            if route is not None else f"alias {name}"
        out += f": first available in the chain of {where}"
    else:
        how = "Thompson sampling" if strategy == "bandit" else f"{preference} weights"
        scope = f"route {route.name}" if route is not None else name
        out += (f": best of {sum(c.eligible for c in cands)} eligible by {how} for task {task} ({task_source}), "
                f"score {first.score:.3f} via {scope}")
    if excluded:
        out += "; excluded " + ", ".join(f"{n} {r}" for r, n in sorted(excluded.items()))
    return out


def _no_candidates(event: RequestAdmitted, cands: list[Candidate], view: HealthView, now: float) -> ErrorInfo:
    name = event.request.model
    if event.ctx.api == "embeddings" and all(c.excluded == "capability" for c in cands):
        return InvalidRequest(f"the model '{name}' does not offer embeddings", param="model").info()
    if cands and all(c.excluded == "capability" for c in cands):
        # What the request asks for (images, tools, JSON) no model it names can do: a bad request, as OpenAI's
        # "image input is not supported by this model" is, not a constraint that may hold another time.
        why = "; ".join(dict.fromkeys(c.detail for c in cands if c.detail))
        return InvalidRequest(f"the model '{name}' does not support this request: {why}", param="model").info()
    reasons = {c.excluded for c in cands}
    listed = "; ".join(f"{c.target.deployment}: {c.excluded} ({c.detail})" for c in cands[:12])
    if reasons & BREAKER_REASONS:
        wait = min((view.open_for(c.target.deployment, now) for c in cands if c.excluded in BREAKER_REASONS),
                   default=1.0)
        err = ServiceUnavailable(f"every deployment of '{name}' is unavailable right now: {listed}")
        return ErrorInfo(status=503, type=err.type, code="no_healthy_candidates", message=err.message,
                         retry_after=float(max(1, math.ceil(wait))))
    if cands and reasons <= CLIENT_REASONS:
        err = Unprocessable(f"no deployment of '{name}' meets this request's constraints: {listed}", param="model")
        return ErrorInfo(status=err.status, type=err.type, code="no_candidates", message=err.message,
                         param="model")
    err = ServiceUnavailable(f"no deployment of '{name}' may serve this request" + (f": {listed}" if cands else ""))
    return ErrorInfo(status=err.status, type=err.type, code="no_candidates", message=err.message, retry_after=5)


# ---- dispatching ------------------------------------------------------------------------------

def attempt_timeout(target: Target, remaining_s: float, catalog: Catalog, settings: RouterSettings | None = None,
                    more: bool = False) -> float:
    """The provider's timeout, never more than the request has left; with fallbacks left, a share is kept back."""
    budget = remaining_s
    if more and settings is not None:
        budget = max(settings.min_attempt_timeout_s, remaining_s * (1 - settings.fallback_reserve))
    return max(0.001, min(catalog.providers[target.provider].timeout_s, budget, remaining_s))


def fit_request(request: ChatRequest, model: ModelSpec, cap: int | None) -> ChatRequest:
    """The request with its output cap held to what ``model`` can produce (the client's cap otherwise)."""
    if cap is None:
        return request
    want = min(cap, model.max_output_tokens)
    field_ = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
    return request if getattr(request, field_) == want else msgspec.structs.replace(request, **{field_: want})


def dispatch(source: RequestAdmitted | AttemptDispatched, target: Target, plan: list[Target], attempt: int,
             history: list, deps: RouterDeps, now: float, *, decision: RoutingDecision | None, kind: str,
             reason: str = "", not_before: float | None = None) -> AttemptDispatched:
    rid = source.request_id
    view = deps.health.view()
    cap = decision.constraints.get("output_cap") if decision is not None else source.request.output_cap()
    degraded = decision is not None and decision.last_resort == target.model
    deps.health.note_dispatch(target.deployment, "retry" if kind == "retry" else "first", now)
    return AttemptDispatched(
        event_id=f"{rid}.attempt.{attempt}", request_id=rid, ctx=source.ctx,
        request=fit_request(source.request, deps.catalog.models[target.model], cap),
        embedding=source.embedding, attempt=attempt, target=target, plan=plan, history=history,
        timeout_s=attempt_timeout(target, source.ctx.deadline - max(now, not_before or now), deps.catalog,
                                  deps.settings, more=bool(plan)),
        decision=decision, kind="last_resort" if degraded and kind != "retry" else kind, reason=reason,
        breaker_state=view.state(target.deployment, now), not_before=not_before, degraded=degraded)


def route(event: RequestAdmitted, deps: RouterDeps, now: float | None = None) -> list[Event]:
    """First attempt of an admitted request (or its end, when nothing may serve it)."""
    now = time.time() if now is None else now
    end = dict(event_id=terminal_id(event.request_id), request_id=event.request_id, ctx=event.ctx)
    try:
        plan = plan_request(event, deps, now)
    except InvalidRequest as exc:
        return [CompletionFailed(**end, error=exc.info())]
    if plan.error is not None:
        return [CompletionFailed(**end, error=plan.error, decision=plan.decision)]
    first, rest = plan.targets[0], plan.targets[1:]
    return [dispatch(event, first, rest, 1, [], deps, now, decision=plan.decision, kind="first",
                     reason=plan.decision.reason)]


# ---- after a failed attempt ---------------------------------------------------------------------

def summarize(event: AttemptFailed) -> AttemptSummary:
    d = event.dispatch
    return AttemptSummary(attempt=d.attempt, deployment=d.target.deployment, provider=d.target.provider,
                          model=d.target.model, outcome=event.error.outcome, message=event.error.message,
                          latency_ms=round(event.latency_ms, 3), kind=d.kind, breaker_state=d.breaker_state,
                          retry_after=event.error.retry_after)


def final_error(last: ErrorInfo, history: list[AttemptSummary], note: str = "") -> ErrorInfo:
    """The client-facing error when every candidate failed, naming each attempt's reason."""
    reasons = "; ".join(f"#{h.attempt} {h.deployment}: {h.outcome} ({h.message})" for h in history)
    message = f"every candidate failed: {reasons}" + (f" ({note})" if note else "")
    if history and all(h.outcome == "rate_limited" for h in history):
        waits = [h.retry_after for h in history if h.retry_after is not None]
        return ErrorInfo(status=429, type="rate_limit_error", code="rate_limit_exceeded", message=message,
                         retry_after=min(waits) if waits else last.retry_after, outcome=last.outcome)
    if history and all(h.outcome == "circuit_open" for h in history):
        return ErrorInfo(status=503, type="service_unavailable", code="no_healthy_candidates", message=message,
                         retry_after=1.0, outcome=last.outcome)
    return ErrorInfo(status=502, type="upstream_error", code="all_candidates_failed", message=message,
                     retry_after=last.retry_after, outcome=last.outcome)


def backoff_s(request_id: str, retry: int, settings: RouterSettings) -> float:
    """Exponential backoff with seeded "equal jitter": half fixed, half drawn from the request id."""
    ceiling = min(settings.backoff_cap_s, settings.backoff_base_s * 2 ** (retry - 1))
    return ceiling / 2 + ceiling / 2 * draws.uniform(request_id, f"backoff.{retry}")


def target_of(catalog: Catalog, summary: AttemptSummary) -> Target | None:
    return next((t for t in catalog.deployments_of(summary.model) if t.deployment == summary.deployment), None)


def budget_allows(view: HealthView, deployment: str, now: float, s: RouterSettings) -> bool:
    firsts, retries = view.budget(deployment, now, s.retry_budget_window_s)
    return retries + 1 <= s.retry_budget_ratio * firsts + s.retry_budget_min


def on_attempt_failed(event: AttemptFailed, deps: RouterDeps, now: float | None = None,
                      can_wait: bool = True) -> list[Event]:
    """Fall back to the next candidate, retry one after its backoff (deferred), or end the request."""
    now = time.time() if now is None else now
    s = deps.settings
    d = event.dispatch
    history = [*d.history, summarize(event)]
    end = dict(event_id=terminal_id(event.request_id), request_id=event.request_id, ctx=d.ctx, history=history,
               decision=d.decision)
    if event.after_end:
        return []  # the request has its terminal already: a call made meanwhile is only recorded and billed
    if event.error.outcome == "cancelled":
        return [CompletionCancelled(**end, error=event.error)]
    if event.error.outcome in NO_FALLBACK:
        # The request itself is at fault (another provider would refuse it too), or the client already
        # holds part of a streamed answer from this attempt.
        return [CompletionFailed(**end, error=event.error)]
    if d.attempt >= s.max_attempts:
        return [CompletionFailed(**end, error=final_error(event.error, history, "attempt limit reached"))]
    if d.ctx.deadline - now < s.min_attempt_timeout_s:
        return [expired(event, now)]
    view = deps.health.view()
    cause = f"#{d.attempt} {d.target.deployment} {event.error.outcome}"

    # Fallback: the next planned candidate whose breaker lets a call through.
    plan = list(d.plan)
    while plan:
        target = plan.pop(0)
        if view.admits(target.deployment, now)[0]:
            return [dispatch(d, target, plan, d.attempt + 1, history, deps, now, decision=d.decision,
                             kind="fallback", reason=f"fallback after {cause}")]

    # Retry: a deployment that failed with a retryable error, in the order they were first tried.
    notes: list[str] = []
    for dep in dict.fromkeys(h.deployment for h in history):
        last = next(h for h in reversed(history) if h.deployment == dep)
        if last.outcome not in RETRYABLE:
            continue
        retries = sum(1 for h in history if h.deployment == dep and h.kind == "retry")
        if retries >= s.max_retries_per_deployment:
            notes.append(f"{dep}: {retries} retries made")
            continue
        target = target_of(deps.catalog, last)
        if target is None or not view.admits(dep, now)[0]:
            notes.append(f"{dep}: breaker {view.state(dep, now)}")
            continue
        asked = last.retry_after if last.outcome == "rate_limited" and last.retry_after is not None else None
        delay = asked if asked is not None else backoff_s(event.request_id, retries + 1, s)
        if delay > s.max_retry_delay_s:
            notes.append(f"{dep}: Retry-After {delay:g}s is too long")
            continue
        not_before = event.ts + delay
        if not_before + s.min_attempt_timeout_s > d.ctx.deadline:
            notes.append(f"{dep}: a retry after {delay:.2f}s would pass the deadline")
            continue
        if not budget_allows(view, dep, now, s):
            notes.append(f"{dep}: retry budget exhausted")
            continue
        wait = not_before - now
        if wait > MIN_DEFER_S and can_wait:
            raise Defer(wait, f"retry of {dep} in {wait:.3f}s")
        how = f"Retry-After {asked:g}s" if asked is not None else f"backoff {delay:.3f}s"
        return [dispatch(d, target, [], d.attempt + 1, history, deps, now, decision=d.decision, kind="retry",
                         reason=f"retry {retries + 1} of {dep} after {cause} ({how})", not_before=not_before)]
    return [CompletionFailed(**end, error=final_error(event.error, history, "; ".join(notes)))]
