"""Routing as plain functions, table-driven: scoring and preferences, constraints, rules and splits, load
balancing, the bandit, fallback, retries with backoff / Retry-After / budget, last resort, and the explanation."""

from __future__ import annotations

import time
from collections import Counter

import msgspec
import pytest

from services.router.handlers import RouterDeps, StaticHealth, on_attempt_failed, route
from services.router.scoring import PREFERENCE_WEIGHTS
from services.router.settings import RouterSettings
from shared.canonical import ChatRequest, ContentPart, Message, Usage, ChatResponse, Choice
from shared.catalog import load_catalog
from shared.errors import Defer, UpstreamAuthFailed, UpstreamRateLimited, UpstreamRejected, UpstreamUnavailable
from shared.events import (
    AttemptDispatched,
    AttemptFailed,
    CompletionFailed,
    CompletionSucceeded,
    RequestAdmitted,
)
from shared.openai_format import switchyard_object
from shared.state import breakers as b
from shared.state.health import BudgetRecord, HealthView, ObsRecord, TaskStats
from tests.support.catalogs import ROUTER_CATALOG
from tests.support.events import admitted, chat, ctx

CATALOG = load_catalog(ROUTER_CATALOG)
NOW = 1_700_000_000.0


def deps(view: HealthView | None = None, **settings) -> RouterDeps:
    return RouterDeps(settings=RouterSettings(**settings), catalog=CATALOG, health=StaticHealth(view))


def first(event: RequestAdmitted, d: RouterDeps | None = None, now: float | None = None) -> AttemptDispatched:
    [out] = route(event, d or deps(), now=now or time.time())
    assert isinstance(out, AttemptDispatched), out
    return out


def candidates(d: AttemptDispatched) -> dict[str, object]:
    return {c.deployment: c for c in d.decision.candidates}


def open_view(*deployments: str, until: float | None = None) -> HealthView:
    far = (until or time.time() + 60)
    return HealthView(breakers={dep: b.BreakerRecord(state=b.OPEN, gen=1, since=far - 60, until=far)
                                for dep in deployments})


def failed(dispatch: AttemptDispatched, exc, ts: float | None = None) -> AttemptFailed:
    return AttemptFailed(event_id=f"{dispatch.request_id}.attempt.{dispatch.attempt}.failed",
                         request_id=dispatch.request_id, ctx=dispatch.ctx, dispatch=dispatch, error=exc.info(),
                         ts=ts or time.time())


def _no_plan(d: AttemptDispatched) -> AttemptDispatched:
    return msgspec.structs.replace(d, plan=[])


# ---- scoring and preferences ----------------------------------------------------------------------

@pytest.mark.parametrize("model, winner", [
    ("auto:cheap", "tiny-ctx"),      # cost weighs 0.60: the cheapest
    ("auto:fast", "fast-1"),         # latency weighs 0.60: the fastest prior
    ("auto:best", "best-1"),         # quality weighs 0.70: the best for the task
    ("auto:balanced", "mid-1"),      # the compromise
    ("auto", "mid-1"),               # the default preference is balanced
])
def test_each_preference_picks_what_its_weights_say(model, winner):
    d = first(admitted(chat(model, text="hello there")))
    assert d.target.model == winner
    assert d.decision.mode == "auto" and d.decision.strategy == "score"
    pref = model.partition(":")[2] or "balanced"
    assert d.decision.preference == pref
    assert d.decision.weights == PREFERENCE_WEIGHTS[pref].as_dict()
    # the winner has the top score, and every score is the weighted sum of its components
    scored = [c for c in d.decision.candidates if c.score is not None]
    assert max(scored, key=lambda c: c.score).model == winner
    w = d.decision.weights
    for c in scored:
        assert c.score == pytest.approx(sum(w[k] * c.scores[k] for k in w), abs=1e-5)
        assert all(0.0 <= v <= 1.0 for v in c.scores.values())


def test_same_inputs_give_the_same_choice_and_the_same_explanation():
    a = first(admitted(chat("auto", text="compare these two designs"), rid="req_x"), now=NOW)
    b_ = first(admitted(chat("auto", text="compare these two designs"), rid="req_x"), now=NOW)
    assert a.target == b_.target and a.plan == b_.plan
    assert a.decision.candidates == b_.decision.candidates and a.decision.draws == b_.decision.draws


def test_custom_weights_and_task_quality():
    # all weight on quality for the code task: best-1 (0.98 for code)
    d = first(admitted(chat("auto", text="x", switchyard={"weights": {"quality": 1}, "task": "code"})))
    assert d.target.model == "best-1" and d.decision.task == "code" and d.decision.task_source == "hint"
    assert d.decision.weights == {"cost": 0.0, "latency": 0.0, "quality": 1.0, "availability": 0.0}
    # summarize: cheap-1's quality is 0.70 for it, and its own default 0.50 otherwise
    d = first(admitted(chat("auto", text="Summarize the following report in three bullets")))
    assert d.decision.task == "summarize" and d.decision.task_source == "classifier"
    assert candidates(d)["alpha/cheap-1"].quality == 0.70


@pytest.mark.parametrize("hints, request_kw, excluded, reason", [
    ({"max_cost_usd": 0.0005}, {}, "gamma/best-1", "max_cost"),
    ({"max_latency_ms": 1000}, {}, "alpha/cheap-1", "max_latency"),
    ({"capabilities": ["vision"]}, {}, "beta/fast-1", "capability"),
    ({"denied_providers": ["gamma"]}, {}, "gamma/best-1", "provider_denied"),
    ({"allowed_providers": ["alpha"]}, {}, "beta/fast-1", "provider_not_allowed"),
    ({}, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "alpha/cheap-1", "capability"),
    ({}, {"max_tokens": 200}, "gamma/tiny-ctx", "context_window"),
])
def test_constraints_exclude_with_a_reason(hints, request_kw, excluded, reason):
    d = first(admitted(chat("auto", text="word " * 300, switchyard=hints, **request_kw)))
    c = candidates(d)[excluded]
    assert c.excluded == reason and c.detail and c.score is None and c.rank is None
    assert d.target.deployment != excluded and excluded not in [t.deployment for t in d.plan]


def test_image_input_needs_vision_and_embeddings_models_never_chat():
    img = ChatRequest(model="auto", messages=[Message(role="user", content=[
        ContentPart(type="text", text="what is this"), ContentPart(type="image_url", image_url={"url": "x"})])])
    d = first(admitted(img))
    assert d.target.model == "best-1"  # the only one with vision
    assert candidates(d)["alpha/embed-1"].excluded == "capability"


def test_policy_constraints_providers_and_models():
    d = first(admitted(chat("auto"), allowed_providers=["alpha"]))
    assert {t.provider for t in [d.target, *d.plan]} <= {"alpha", "local"} or d.target.provider == "alpha"
    assert candidates(d)["beta/fast-1"].excluded == "policy"
    d = first(admitted(chat("auto"), allowed_models=["cheap-1"]))
    assert d.target.model == "cheap-1" and candidates(d)["alpha/mid-1"].excluded == "policy"


def test_nothing_eligible_fails_with_the_reasons():
    [out] = route(admitted(chat("auto", switchyard={"max_cost_usd": 1e-9})), deps())
    assert isinstance(out, CompletionFailed) and out.error.status == 422 and out.error.code == "no_candidates"
    assert "max_cost" in out.error.message and out.decision is not None
    [out] = route(admitted(chat("best-1"), allowed_providers=["alpha"]), deps())
    assert out.error.status == 503 and out.error.code == "no_candidates"


@pytest.mark.parametrize("hints, param", [
    ({"max_cost_usd": "lots"}, "switchyard.max_cost_usd"),
    ({"preference": "random"}, "switchyard.preference"),
    ({"capabilities": ["telepathy"]}, "switchyard.capabilities"),
    ({"weights": {"speed": 1}}, "switchyard.weights"),
])
def test_malformed_hints_are_the_clients_error(hints, param):
    [out] = route(admitted(chat("auto", switchyard=hints)), deps())
    assert isinstance(out, CompletionFailed) and out.error.status == 400 and out.error.param == param


def test_hints_from_headers_and_body_wins():
    sw = {"headers": {"x-switchyard-preference": "fast", "x-switchyard-max-cost-usd": "0.5"}}
    d = first(admitted(chat("auto", switchyard=sw)))
    assert d.decision.preference == "fast" and d.decision.constraints["max_cost_usd"] == 0.5
    d = first(admitted(chat("auto", switchyard={**sw, "preference": "best"})))
    assert d.decision.preference == "best"


# ---- explicit models, aliases, load balancing -----------------------------------------------------

def test_explicit_model_and_alias_chain_order():
    d = first(admitted(chat("cheap-1")))
    assert d.decision.mode == "model" and d.target.model == "cheap-1"
    assert [t.model for t in d.plan] == ["spare-1"]  # the last resort ends every plan
    d = first(admitted(chat("chain")))
    assert d.decision.mode == "alias" and d.decision.strategy == "chain"
    assert [d.target.model, *(t.model for t in d.plan)] == ["fast-1", "cheap-1", "spare-1"]


def test_p2c_prefers_the_less_loaded_of_its_two_draws():
    busy = HealthView(obs={"alpha/multi-1": {"w": ObsRecord(deployment="alpha/multi-1", writer="w", ts=time.time(),
                                                              in_flight=50)}})
    d = first(admitted(chat("multi-1")), deps(busy))
    assert d.target.deployment == "beta/multi-1"  # two deployments: p2c always compares both
    assert d.decision.balancing == "p2c" and any(k.startswith("balance.multi-1.p2c") for k in d.decision.draws)
    assert [t.deployment for t in d.plan][:1] == ["alpha/multi-1"]


@pytest.mark.parametrize("strategy", ["weighted", "least_in_flight", "p2c"])
def test_balancing_follows_weights_when_idle_and_is_seeded_by_request_id(strategy):
    picks = Counter(first(admitted(chat("multi-1"), rid=f"req_{i}"), deps(balancing=strategy)).target.deployment
                    for i in range(400))
    again = Counter(first(admitted(chat("multi-1"), rid=f"req_{i}"), deps(balancing=strategy)).target.deployment
                    for i in range(400))
    assert picks == again  # reproducible
    assert 0.65 < picks["alpha/multi-1"] / 400 < 0.85  # idle and alike: weight 3 : 1


# ---- rules and splits -------------------------------------------------------------------------------

def test_route_split_is_seeded_by_request_id_and_recorded():
    arms = Counter()
    for i in range(1000):
        d = first(admitted(chat("auto"), rid=f"req_{i}", team="canary-team"))
        assert d.decision.mode == "route" and d.decision.route == "canary"
        assert "route.canary" in d.decision.draws and d.decision.seed
        arms[d.decision.variant] += 1
        assert d.target.model == {"stable": "fast-1", "canary": "best-1"}[d.decision.variant]
    assert 0.06 < arms["canary"] / 1000 < 0.14
    again = first(admitted(chat("auto"), rid="req_7", team="canary-team"))
    assert again.decision.variant == first(admitted(chat("auto"), rid="req_7", team="canary-team")).decision.variant


def test_sticky_split_keeps_a_user_in_one_arm():
    seen = {first(admitted(chat("auto", user="u-42"), rid=f"req_{i}", team="ab-team")).decision.variant
            for i in range(50)}
    assert len(seen) == 1


def test_route_on_virtual_model_with_fallback_chain_and_route_matching_metadata_and_headers():
    d = first(admitted(chat("support-bot")))
    assert d.decision.route == "support" and [d.target.model, *(t.model for t in d.plan)] == [
        "mid-1", "cheap-1", "spare-1"]
    req = chat("auto", metadata={"tier": "gold"}, switchyard={"headers": {"x-switchyard-route": "premium"}})
    d = first(admitted(req))
    assert d.decision.route == "gold" and d.decision.preference == "best" and d.target.model == "best-1"
    d = first(admitted(chat("auto", metadata={"tier": "gold"})))  # header missing: no match
    assert d.decision.route is None


# ---- breakers in routing ----------------------------------------------------------------------------

def test_open_breaker_is_excluded_and_all_open_fails_fast_with_retry_after():
    view = open_view("gamma/best-1", until=time.time() + 7.2)
    d = first(admitted(chat("auto:best")), deps(view))
    assert d.target.model != "best-1"
    c = candidates(d)["gamma/best-1"]
    assert c.excluded == "circuit_open" and c.breaker == "open" and "7." in c.detail
    [out] = route(admitted(chat("best-1")), deps(HealthView(breakers={
        **open_view("gamma/best-1", until=time.time() + 7.2).breakers,
        **open_view("local/spare-1", until=time.time() + 3.5).breakers})))
    assert isinstance(out, CompletionFailed) and out.error.status == 503
    assert out.error.code == "no_healthy_candidates" and out.error.retry_after == 4


def test_half_open_deployment_is_a_candidate_with_lower_availability():
    now = time.time()
    view = HealthView(breakers={"beta/fast-1": b.BreakerRecord(state=b.OPEN, gen=1, since=now - 20, until=now - 1)})
    d = first(admitted(chat("auto:fast")), deps(view), now=now)
    c = candidates(d)["beta/fast-1"]
    assert c.breaker == "half_open" and c.excluded is None and c.scores["availability"] == 0.5
    assert d.breaker_state in ("closed", "half_open")


def test_every_candidate_open_but_last_resort_is_degraded():
    view = open_view("beta/fast-1", "alpha/cheap-1")
    d = first(admitted(chat("chain")), deps(view))
    assert d.target.model == "spare-1" and d.degraded and d.kind == "last_resort"
    assert d.decision.last_resort == "spare-1" and "degraded" in d.decision.reason


# ---- after a failure: fallback, retry, budget ---------------------------------------------------------

def test_fallback_goes_to_the_next_candidate_at_once_skipping_open_ones():
    d1 = first(admitted(chat("chain")))
    later = HealthView(breakers=open_view("alpha/cheap-1").breakers)
    [d2] = on_attempt_failed(failed(d1, UpstreamUnavailable("boom")), deps(later))
    assert d2.kind == "last_resort" and d2.target.model == "spare-1" and d2.attempt == 2
    assert d2.history[0].outcome == "failed" and d2.history[0].kind == "first"
    assert d2.reason.startswith("fallback after #1 beta/fast-1 failed")
    assert d2.decision == d1.decision  # the decision travels unchanged


def test_single_candidate_is_retried_after_backoff_deferred_not_slept():
    d = deps()
    d1 = _no_plan(first(admitted(chat("fast-1"), rid="req_r"), d))  # no fallback left: only a retry
    t_fail = time.time()
    with pytest.raises(Defer) as wait:
        on_attempt_failed(failed(d1, UpstreamUnavailable("503"), ts=t_fail), d, now=t_fail)
    s = d.settings
    assert s.backoff_base_s / 2 <= wait.value.delay_s <= s.backoff_base_s
    # redelivered after the delay: the retry goes out, not_before honoured, same decision
    [d2] = on_attempt_failed(failed(d1, UpstreamUnavailable("503"), ts=t_fail), d,
                             now=t_fail + wait.value.delay_s + 0.001)
    assert d2.kind == "retry" and d2.target == d1.target and d2.attempt == 2
    assert d2.not_before == pytest.approx(t_fail + wait.value.delay_s, abs=0.01)
    # the jitter is seeded by the request id: the same delay every time
    with pytest.raises(Defer) as again:
        on_attempt_failed(failed(d1, UpstreamUnavailable("503"), ts=t_fail), d, now=t_fail)
    assert again.value.delay_s == pytest.approx(wait.value.delay_s)


def test_retry_after_is_honoured_and_capped():
    d = deps()
    d1 = _no_plan(first(admitted(chat("fast-1"))))
    t = time.time()
    with pytest.raises(Defer) as wait:
        on_attempt_failed(failed(d1, UpstreamRateLimited("slow down", retry_after=2), ts=t), d, now=t)
    assert wait.value.delay_s == pytest.approx(2.0, abs=0.01)
    [d2] = on_attempt_failed(failed(d1, UpstreamRateLimited("slow down", retry_after=2), ts=t), d, now=t + 2)
    assert d2.not_before == pytest.approx(t + 2) and "Retry-After 2s" in d2.reason
    # longer than max_retry_delay_s: no retry; every attempt rate limited → 429 with the provider's Retry-After
    [end] = on_attempt_failed(failed(d1, UpstreamRateLimited("later", retry_after=90), ts=t), d, now=t)
    assert isinstance(end, CompletionFailed) and end.error.status == 429 and end.error.retry_after == 90
    assert "too long" in end.error.message


def test_no_retry_past_the_deadline():
    d = deps()
    d1 = _no_plan(first(admitted(chat("fast-1"), deadline_in=1.5)))
    t = time.time()
    [end] = on_attempt_failed(failed(d1, UpstreamRateLimited("x", retry_after=2), ts=t), d, now=t)
    assert isinstance(end, CompletionFailed) and "deadline" in end.error.message


def test_bad_request_and_auth_are_not_retried_on_the_same_deployment():
    d = deps()
    d1 = _no_plan(first(admitted(chat("fast-1"))))
    [end] = on_attempt_failed(failed(d1, UpstreamRejected("bad param")), d)
    assert isinstance(end, CompletionFailed) and end.error.status == 400
    [end] = on_attempt_failed(failed(d1, UpstreamAuthFailed("401")), d)
    assert isinstance(end, CompletionFailed) and end.error.code == "all_candidates_failed"


def test_retries_stop_at_the_per_deployment_limit():
    d = deps(max_retries_per_deployment=1, max_attempts=10)
    d1 = _no_plan(first(admitted(chat("fast-1"))))
    t = time.time()
    [d2] = on_attempt_failed(failed(d1, UpstreamUnavailable("x"), ts=t - 10), d, now=t)
    assert d2.kind == "retry"
    [end] = on_attempt_failed(failed(d2, UpstreamUnavailable("x"), ts=t - 10), d, now=t)
    assert isinstance(end, CompletionFailed) and "1 retries made" in end.error.message
    assert [h.kind for h in end.history] == ["first", "retry"]


def test_retry_budget_limits_retries_to_a_share_of_first_attempts():
    s = dict(retry_budget_ratio=0.2, retry_budget_min=2, retry_budget_window_s=10, max_attempts=10)
    d = deps(**s)
    t = time.time()
    allowed = denied = 0
    for i in range(50):
        d1 = _no_plan(first(admitted(chat("fast-1"), rid=f"req_{i}"), d, now=t))  # counts a first attempt
        out = on_attempt_failed(failed(d1, UpstreamUnavailable("x"), ts=t - 10), d, now=t)
        if isinstance(out[0], AttemptDispatched):
            allowed += 1
        else:
            assert "retry budget exhausted" in out[0].error.message
            denied += 1
    # retries + 1 ≤ 0.2 × firsts + 2 at the moment of each decision
    assert allowed <= 0.2 * 50 + 2 and allowed >= 0.2 * 50 - 1 and denied == 50 - allowed


def test_shared_budget_counts_from_other_routers():
    t = time.time()
    others = HealthView(budgets={"beta/fast-1": {"r2": BudgetRecord(deployment="beta/fast-1", writer="r2", ts=t,
                                                                      buckets=[(int(t), 10, 5)])}})
    d = deps(others, retry_budget_ratio=0.2, retry_budget_min=3)
    d1 = _no_plan(first(admitted(chat("fast-1")), d, now=t))
    [end] = on_attempt_failed(failed(d1, UpstreamUnavailable("x"), ts=t - 10), d, now=t)
    assert isinstance(end, CompletionFailed)  # 5 retries for 11 firsts: 6 > 0.2 × 11 + 3


def test_cut_stream_and_cancel_end_the_request():
    d1 = first(admitted(chat("chain")))
    from shared.errors import ErrorInfo

    cut = AttemptFailed(event_id="x", request_id=d1.request_id, ctx=d1.ctx, dispatch=d1,
                        error=ErrorInfo(status=502, type="upstream_error", code="x", message="cut",
                                        outcome="stream_broken"))
    [end] = on_attempt_failed(cut, deps())
    assert isinstance(end, CompletionFailed) and end.error.outcome == "stream_broken"


# ---- the bandit -------------------------------------------------------------------------------------

def _evidence(task: str, good: str, bad: str, n: int = 200) -> HealthView:
    t = time.time()
    return HealthView(obs={
        good: {"w": ObsRecord(deployment=good, writer="w", ts=t, tasks={task: TaskStats(n=n, ok=n, latency_ms=n * 300,
                                                                                       cost_usd=n * 1e-4)})},
        bad: {"w": ObsRecord(deployment=bad, writer="w", ts=t, tasks={task: TaskStats(n=n, ok=n * 0.1,
                                                                                     latency_ms=n * 0.1 * 300,
                                                                                     cost_usd=n * 1e-4)})},
    })


def test_bandit_is_seeded_recorded_and_learns_from_outcomes():
    view = _evidence("chat", good="alpha/cheap-1", bad="alpha/mid-1")
    d = first(admitted(chat("auto", text="hi", switchyard={"strategy": "bandit", "task": "chat"}), rid="req_b"),
              deps(view))
    assert d.decision.strategy == "bandit" and d.decision.seed
    assert any(k.startswith("bandit.") for k in d.decision.draws)
    again = first(admitted(chat("auto", text="hi", switchyard={"strategy": "bandit", "task": "chat"}),
                           rid="req_b"), deps(view))
    assert again.target == d.target and again.decision.draws == d.decision.draws
    picks = Counter(first(admitted(chat("auto", switchyard={"strategy": "bandit", "task": "chat"}),
                                   rid=f"req_{i}"), deps(view)).target.model for i in range(200))
    assert picks["mid-1"] < picks["cheap-1"]  # 10% success for this task: rarely chosen any more
    assert candidates(d)["alpha/mid-1"].sampled["n"] == 200


def test_bandit_route_never_picks_an_open_breaker():
    view = HealthView(breakers=open_view("alpha/cheap-1", "alpha/mid-1").breakers,
                      obs=_evidence("chat", good="alpha/cheap-1", bad="beta/fast-1").obs)
    for i in range(100):
        d = first(admitted(chat("auto", switchyard={"task": "chat"}), rid=f"req_{i}", team="learn-team"),
                  deps(view))
        assert d.decision.route == "learn" and d.decision.strategy == "bandit"
        assert d.target.deployment not in ("alpha/cheap-1", "alpha/mid-1")


# ---- the explanation in the response --------------------------------------------------------------

def test_response_extension_explains_choice_cost_and_savings():
    d = first(admitted(chat("auto", text="word " * 300, switchyard={"weights": {"cost": 1}})))
    usage = Usage(prompt_tokens=400, completion_tokens=100)
    done = CompletionSucceeded(event_id="req_1.done", request_id="req_1", ctx=d.ctx, attempt=1, target=d.target,
                               response=ChatResponse(model="m", choices=[Choice(message=Message(
                                   role="assistant", content="ok"))], usage=usage),
                               cost_usd=0.00006, latency_ms=12.0, decision=d.decision)
    ext = switchyard_object(done)
    assert ext["selected"] == {"model": "cheap-1", "provider": "alpha", "deployment": "alpha/cheap-1"}
    assert ext["reason"] == d.decision.reason and ext["reason"].startswith("alpha/cheap-1 (cheap-1): best of")
    assert ext["degraded"] is False and ext["estimated_cost_usd"] > 0 and ext["actual_cost_usd"] == 0.00006
    assert ext["baseline"]["model"] == "best-1"
    assert ext["savings_usd"] == pytest.approx((400 * 5 + 100 * 15) / 1e6 - 0.00006)
    by_dep = {c["deployment"]: c for c in ext["candidates"]}
    assert by_dep["gamma/tiny-ctx"]["excluded"] == "context_window" and by_dep["gamma/tiny-ctx"]["eligible"] is False
    assert set(by_dep["alpha/cheap-1"]["scores"]) == {"cost", "latency", "quality", "availability"}
    assert ext["path"][-1]["outcome"] == "success"
