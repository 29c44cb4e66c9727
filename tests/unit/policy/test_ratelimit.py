"""GCRA as pure functions: bursts of exactly L, continuous refill, all-or-nothing per scope, headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.state.ratelimit import (
    RateScope,
    RateState,
    acquire_change,
    duration,
    gcra,
    headers,
    rollback_change,
    tightest,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize("limit", [1, 5, 7, 60, 1000])
def test_exactly_limit_requests_fit_at_one_instant(limit):
    tat, admitted = 0.0, 0
    for _ in range(limit * 3):
        ok, new, _, _ = gcra(tat, NOW, 1, limit)
        if ok:
            admitted, tat = admitted + 1, new
    assert admitted == limit


def test_capacity_refills_continuously_and_retry_after_is_exact():
    tat = 0.0
    for _ in range(6):
        _, tat, gauge, _ = gcra(tat, NOW, 1, 6)  # interval 10 s
    assert gauge.remaining == 0 and gauge.reset_s == pytest.approx(60)
    ok, _, _, retry = gcra(tat, NOW, 1, 6)
    assert not ok and retry == pytest.approx(10)
    assert not gcra(tat, NOW + 9.9, 1, 6)[0]
    ok, _, gauge, _ = gcra(tat, NOW + 10, 1, 6)
    assert ok and gauge.remaining == 0


def test_token_costs_are_weighted():
    ok, tat, gauge, _ = gcra(0.0, NOW, 700, 1000)
    assert ok and gauge.remaining == 300
    ok, _, _, retry = gcra(tat, NOW, 400, 1000)
    assert not ok and retry == pytest.approx(6.0)  # 100 tokens short at 1000/min


def test_a_scope_takes_requests_and_tokens_together_or_not_at_all():
    scope = RateScope(key="team.a.b", rpm=10, tpm=100)
    state, verdict = acquire_change(None, scope, 90, NOW)
    assert verdict.allowed and verdict.requests.remaining == 9 and verdict.tokens.remaining == 10
    again, verdict = acquire_change(state, scope, 20, NOW)  # requests fit, tokens do not
    assert again is None and not verdict.allowed and verdict.refused == "tokens"
    assert verdict.requests.remaining == 9  # the request quota was not touched


def test_rollback_undoes_an_acquire():
    scope = RateScope(key="key.k", rpm=3, tpm=300)
    state, _ = acquire_change(None, scope, 100, NOW)
    state, _ = acquire_change(state, scope, 100, NOW)
    undone, _ = rollback_change(state, scope, 100)
    _, verdict = acquire_change(undone, scope, 100, NOW)
    assert verdict.requests.remaining == 1 and verdict.tokens.remaining == 100


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 50), arrivals=st.lists(st.floats(0, 120), min_size=1, max_size=200))
def test_never_more_than_limit_plus_refill_in_any_window(limit, arrivals):
    """Over any span of t seconds GCRA admits at most L + L·t/60 requests (burst plus refill)."""
    tat, admitted = 0.0, []
    for t in sorted(arrivals):
        ok, new, _, _ = gcra(tat, NOW + t, 1, limit)
        if ok:
            tat = new
            admitted.append(t)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j] - start
            assert j - i + 1 <= limit + limit * span / 60 + 1e-6


def test_headers_report_the_tightest_scope_in_openai_format():
    _, key = acquire_change(None, RateScope(key="key.k", rpm=100, tpm=10_000), 1000, NOW)
    _, team = acquire_change(RateState(rpm_tat=NOW + 55), RateScope(key="team.a.b", rpm=12, tpm=None), 1000, NOW)
    h = headers(tightest([key, team]))
    assert h["x-ratelimit-limit-requests"] == "12" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"] == "1m0s"
    assert h["x-ratelimit-limit-tokens"] == "10000" and h["x-ratelimit-remaining-tokens"] == "9000"
    assert h["x-ratelimit-reset-tokens"] == "6s"


@pytest.mark.parametrize("s, text", [(0.02, "20ms"), (1.5, "1.5s"), (6.0, "6s"), (360, "6m0s"), (61.25, "1m1.25s")])
def test_durations_like_openai(s, text):
    assert duration(s) == text
