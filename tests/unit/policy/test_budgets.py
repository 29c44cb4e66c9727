"""Budget counters as pure functions: reserve, settle, release, periods, soft alerts, stale reservations."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from shared.state.budgets import (
    Counter,
    Scope,
    charge_change,
    day_key,
    release_change,
    reserve_change,
    resets_at,
    settle_change,
    to_nano,
    to_usd,
    view,
)

T = datetime(2025, 1, 31, 23, 0, tzinfo=timezone.utc).timestamp()  # one hour before a day and a month end
DAILY = Scope(key="team.acme.ml", daily=100, monthly=1000, thresholds=[0.8, 0.95])


def reserve(c, rid, amount, scope=DAILY, now=T, expires=T + 60):
    new, (refusal, stale) = reserve_change(c, rid, amount, scope, now, expires)
    return (new if new is not None else c), refusal, stale


def test_reserve_fits_then_refuses_naming_the_budget_and_reset():
    c, refusal, _ = reserve(None, "r1", 60)
    assert refusal is None and c.open["r1"].amount == 60
    c, refusal, _ = reserve(c, "r2", 41)  # 60 reserved + 41 > 100
    assert refusal is not None and "r2" not in c.open
    assert (refusal.period, refusal.limit, refusal.reserved, refusal.amount) == ("daily", 100, 60, 41)
    assert refusal.resets_at == datetime(2025, 2, 1, tzinfo=timezone.utc).timestamp()
    assert "daily budget of team acme/ml" in refusal.message() and "2025-02-01T00:00:00Z" in refusal.message()
    c, refusal, _ = reserve(c, "r3", 40)  # exactly fills it
    assert refusal is None and c.reserved() == 100


def test_reserve_is_idempotent_per_request():
    c, _, _ = reserve(None, "r1", 60)
    new, (refusal, _) = reserve_change(c, "r1", 60, DAILY, T, T + 60)
    assert new is None and refusal is None  # no write: the request holds its reservation already


def test_settle_replaces_the_reservation_with_the_actual_cost_once():
    c, _, _ = reserve(None, "r1", 60)
    c2, (settled, _) = settle_change(c, "r1", 25, T + 1, DAILY)
    assert settled and c2.open == {} and c2.day_spent == 25 and c2.month_spent == 25
    again, (settled, _) = settle_change(c2, "r1", 25, T + 2, DAILY)
    assert again is None and not settled  # a redelivered terminal event changes nothing


def test_release_gives_back_without_spending():
    c, _, _ = reserve(None, "r1", 60)
    c2, amount = release_change(c, "r1")
    assert amount == 60 and c2.open == {} and c2.day_spent == 0
    assert release_change(c2, "r1") == (None, 0)


def test_periods_roll_at_utc_midnight_and_month_start():
    c, _, _ = reserve(None, "r1", 60)
    c, _ = settle_change(c, "r1", 60, T, DAILY)
    assert (c.day, c.month) == ("2025-01-31", "2025-01")
    tomorrow = T + 3600 + 1
    c2, refusal, _ = reserve(c, "r2", 90, now=tomorrow, expires=tomorrow + 60)
    assert refusal is None  # a new day: the daily budget is whole again
    assert (c2.day, c2.day_spent, c2.month, c2.month_spent) == ("2025-02-01", 0, "2025-02", 0)


def test_a_late_settlement_counts_in_the_period_of_its_terminal_event():
    c, _, _ = reserve(None, "r1", 60, expires=T + 86400)
    c, _, _ = reserve(c, "r0", 1, now=T + 7200, expires=T + 9000)  # the counter moved on to the next day
    c, _ = settle_change(c, "r1", 50, T + 10, DAILY)  # the terminal event is from yesterday
    assert c.day == "2025-02-01" and c.day_spent == 0  # not charged to today ...
    assert c.month == "2025-02" and c.month_spent == 0  # ... nor to this month: the ledger dates it to January


def test_soft_alerts_fire_once_per_threshold_and_period():
    c, _, _ = reserve(None, "r1", 90)
    c, (_, alerts) = settle_change(c, "r1", 85, T, DAILY)
    assert [(a.period, a.threshold) for a in alerts] == [("daily", 0.8)]
    c, _, _ = reserve(c, "r2", 10)
    c, (_, alerts) = settle_change(c, "r2", 10, T, DAILY)
    assert [(a.period, a.threshold, a.spent) for a in alerts] == [("daily", 0.95, 95)]
    c, _, _ = reserve(c, "r3", 5)
    c, (_, alerts) = settle_change(c, "r3", 5, T, DAILY)
    assert alerts == []  # both thresholds of today are spent already
    c, alerts = charge_change(c, 1, T + 3601, DAILY)  # tomorrow: the marks of the day start over
    assert alerts == [] and "d0.8" not in c.alerted


def test_monthly_alerts_are_separate_from_daily_ones():
    scope = Scope(key="key.k1", monthly=100, thresholds=[0.5])
    c, _, _ = reserve(None, "r1", 60, scope=scope)
    c, (_, alerts) = settle_change(c, "r1", 60, T, scope)
    assert [(a.scope, a.period, a.period_key) for a in alerts] == [("key.k1", "monthly", "2025-01")]


def test_stale_reservations_are_swept_by_the_next_write():
    c, _, _ = reserve(None, "lost", 90, expires=T + 10)
    c, refusal, stale = reserve(c, "r2", 50, now=T + 11, expires=T + 100)
    assert refusal is None and stale == ["lost"] and set(c.open) == {"r2"}


def test_view_shows_limits_spent_reserved_remaining_and_reset():
    c, _, _ = reserve(None, "r1", 30)
    c, _ = settle_change(c, "r1", 20, T, DAILY)
    c, _, _ = reserve(c, "r2", 30)
    v = view(c, DAILY, T + 1)
    daily = v["periods"]["daily"]
    assert daily["limit_usd"] == to_usd(100) and daily["spent_usd"] == to_usd(20)
    assert daily["reserved_usd"] == to_usd(30) and daily["remaining_usd"] == to_usd(50)
    assert daily["resets_at"] == "2025-02-01T00:00:00Z" and v["open_reservations"] == 1
    assert v["periods"]["monthly"]["resets_at"] == "2025-02-01T00:00:00Z"


@pytest.mark.parametrize("usd, nano", [(0.0, 0), (1e-9, 1), (0.123456789, 123456789), (2.5, 2_500_000_000)])
def test_money_is_integer_nano_dollars(usd, nano):
    assert to_nano(usd) == nano and to_usd(nano) == usd
    assert to_nano(1.2e-9, up=True) == 2 and to_nano(1.2e-9) == 1


def test_calendar_helpers():
    assert day_key(T) == "2025-01-31"
    dec = datetime(2024, 12, 15, tzinfo=timezone.utc).timestamp()
    assert resets_at("monthly", dec) == datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()
    assert Counter().reserved() == 0
