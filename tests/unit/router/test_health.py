"""Shared health as read by routing: windows merged over writers, generations, latency, load, budgets, keys."""

from __future__ import annotations

import pytest

from shared.state import breakers as b
from shared.state.health import (
    BreakerConfigs,
    BudgetRecord,
    HealthView,
    ObsRecord,
    TaskStats,
    add_dispatch,
    token,
    untoken,
)
from shared.catalog import load_catalog
from shared.state.settings import BreakerSettings, HealthSettings
from tests.support.catalogs import ROUTER_CATALOG

T = 10_000.0
CFG = BreakerSettings(window_size=4, window_age_s=60, minimum_calls=2)


def obs(writer: str, gen: int = 1, outcomes=(), ts: float = T, **kw) -> ObsRecord:
    return ObsRecord(deployment="p/m", writer=writer, ts=ts, gen=gen, outcomes=list(outcomes), **kw)


def view(*records: ObsRecord, gen: int = 1, **kw) -> HealthView:
    return HealthView(breakers={"p/m": b.BreakerRecord(gen=gen)}, obs={"p/m": {r.writer: r for r in records}},
                      configs=lambda _: CFG, **kw)


def test_window_merges_writers_by_time_and_keeps_only_the_current_generation():
    v = view(obs("w1", outcomes=[(T - 5, 1), (T - 1, 0)]),
             obs("w2", outcomes=[(T - 3, 0), (T - 2, 1), (T - 4, 1)]),
             obs("old", gen=0, outcomes=[(T - 1, 0)] * 5))  # before the last transition: ignored
    assert v.results("p/m", 1, T) == [True, False, True, False]  # the last 4 by time: t-4, t-3, t-2, t-1
    s = v.stats("p/m", T)
    assert (s.calls, s.failures, s.error_rate) == (4, 2, 0.5)
    assert v.results("p/m", 1, T + 57) == [False, True, False]  # older than window_age_s: out
    assert v.results("p/m", 1, T + 60) == []


def test_latency_is_weighted_by_samples_and_shrunk_to_the_prior_and_stale_load_ignored():
    v = view(obs("w1", latency_ms=100.0, samples=10, in_flight=3),
             obs("w2", latency_ms=400.0, samples=30, in_flight=2, ts=T - 100),
             settings=HealthSettings(latency_prior_weight=2, stale_after_s=30))
    s = v.stats("p/m", T)
    assert s.latency_ms == pytest.approx((10 * 100 + 30 * 400) / 40)
    assert s.in_flight == 3  # w2 has not reported for 100 s: its in-flight count is not trusted
    est, source = v.latency_estimate("p/m", 1000.0, T)
    assert source == "observed" and est == pytest.approx((2 * 1000 + 40 * 325) / 42)
    assert view().latency_estimate("p/m", 1000.0, T) == (1000.0, "prior")


def test_budget_and_task_stats_add_up_over_writers():
    budgets: dict = {}
    for kind in ("first", "first", "retry"):
        add_dispatch(budgets, "r1", "p/m", kind, T, 10)
    add_dispatch(budgets, "r1", "p/m", "first", T - 30, 10)  # outside the window
    budgets["p/m"]["r2"] = BudgetRecord(deployment="p/m", writer="r2", buckets=[(int(T) - 2, 4, 1)])
    v = view(obs("w1", tasks={"code": TaskStats(n=4, ok=3, latency_ms=300, cost_usd=0.4)}),
             obs("w2", tasks={"code": TaskStats(n=6, ok=6, latency_ms=600, cost_usd=0.6)}), budgets=budgets)
    assert v.budget("p/m", T, 10) == (6, 2)
    assert v.task_stats("code", "p/m") == TaskStats(n=10, ok=9, latency_ms=900, cost_usd=1.0)
    assert v.task_stats("chat", "p/m") is None


def test_breaker_state_as_routing_sees_it():
    open_until = {"p/m": b.BreakerRecord(state=b.OPEN, gen=2, since=T - 5, until=T + 5)}
    v = HealthView(breakers=open_until, configs=lambda _: CFG)
    assert v.state("p/m", T) == b.OPEN and v.admits("p/m", T) == (False, "circuit_open")
    assert v.open_for("p/m", T) == 5
    assert v.state("p/m", T + 5) == b.HALF_OPEN and v.admits("p/m", T + 5)[0]
    off = HealthView(breakers=open_until, configs=lambda _: CFG.model_copy(update={"enabled": False}))
    assert off.state("p/m", T) == b.CLOSED and off.admits("p/m", T)[0]


def test_provider_overrides_and_key_tokens():
    cat = load_catalog(ROUTER_CATALOG)
    configs = BreakerConfigs(BreakerSettings(), cat)
    assert configs("local/spare-1").minimum_calls == 2 and configs("alpha/cheap-1").minimum_calls == 10
    for name in ("openai/gpt-4.1", "bedrock/us.anthropic.claude:0", "a b/ü"):
        tok = token(name)
        assert set(tok) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-=")
        assert untoken(tok) == name
