"""Budgets that concurrency cannot overrun: reserve → settle → release on counters in JetStream KV.

Every budget scope — a team (``team.<tenant>.<team>``) or a key
(``key.<key_id>``) — is one KV entry in ``sy_budgets`` holding both of its
periods, calendar-aligned in UTC, and the reservations still open against it:

    team.acme.ml  →  {day: "2025-01-31", day_spent, month: "2025-01", month_spent,
                      open: {request_id: [amount, expires_at]}, alerted: ["d0.8", "m0.95"]}

Amounts are integer nano-dollars (1e-9 USD), so sums never drift.

- **Reserve** (admission): in one compare-and-set, refuse unless for every
  period with a limit ``spent + Σ open + amount ≤ limit``, else add the
  request to ``open``. A request already in ``open`` is not added twice, so a
  redelivered admission reserves once.
- **Settle** (the request's terminal event): remove the request from
  ``open`` and add what it actually cost to the periods the terminal event
  falls in (the ledger dates a charge by the same timestamp). A request no
  longer in ``open`` was settled already: nothing changes.
- **Release**: remove it from ``open`` without spending.

Across scopes (team, then key) reservations are taken in a fixed order and
the ones already taken are released when a later one refuses. Reservations
carry an expiry (the request's deadline plus a grace period); one still open
after that — its terminal event never came — is dropped by the next
compare-and-set on the counter, so a lost event cannot hold a budget forever.

Periods roll over lazily: the first write in a new day (month) starts it at
zero. Open reservations count against the current period whatever day they
were taken, which can only refuse earlier, never overspend.

Concurrency: reservations, settlements and releases of one scope made at the
same time in one process are applied in order and written together
(``GroupCommit``), each decided on the counter as the ones before it left it:
the limit check is exactly as strict as one compare-and-set per request, but a
flood of one team's requests costs one write per batch, so contention on a busy
budget queues for a few milliseconds instead of timing out into a 503.

Soft alerts: when settling pushes a period's spend to a threshold (e.g. 80 %,
95 %) not yet marked in ``alerted``, the mark is added in the same
compare-and-set and an alert is returned — once per scope, period and
threshold, whichever replica settles.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Callable

import msgspec
from msgspec import Struct
from nats.js.kv import KeyValue

from shared.state.kv import Codec, GroupCommit, read
from shared.state.scopes import scope_label

NANO = 1_000_000_000
PERIODS = ("daily", "monthly")


def to_nano(usd: float, up: bool = False) -> int:
    """Dollars to nano-dollars; ``up`` rounds up (a reservation never comes out smaller than its estimate)."""
    nano = round(usd * NANO, 3)
    return int(math.ceil(nano)) if up else int(round(nano))


def to_usd(nano: int) -> float:
    return round(nano / NANO, 9)


def day_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def month_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m")


def resets_at(period: str, ts: float) -> float:
    """When the period containing ``ts`` ends (the next UTC midnight, or the first of next month)."""
    d = datetime.fromtimestamp(ts, timezone.utc)
    if period == "daily":
        start = d.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp() + 86400
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=timezone.utc).timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Open(Struct, array_like=True, frozen=True):
    """One open reservation: amount (nano-USD) and when it is considered abandoned."""

    amount: int
    expires: float


class Counter(Struct, kw_only=True, omit_defaults=True):
    """One budget scope's state (see the module docstring)."""

    day: str = ""
    day_spent: int = 0
    month: str = ""
    month_spent: int = 0
    open: dict[str, Open] = msgspec.field(default_factory=dict)
    alerted: list[str] = msgspec.field(default_factory=list)

    def reserved(self) -> int:
        return sum(o.amount for o in self.open.values())

    def spent(self, period: str) -> int:
        return self.day_spent if period == "daily" else self.month_spent


class Scope(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A budget scope and the limits a reservation was checked against (nano-USD; None: no limit)."""

    key: str
    daily: int | None = None
    monthly: int | None = None
    thresholds: list[float] = msgspec.field(default_factory=list)

    def limit(self, period: str) -> int | None:
        return self.daily if period == "daily" else self.monthly

    @property
    def label(self) -> str:
        return scope_label(self.key)


class Refusal(Struct, frozen=True, kw_only=True):
    """Why a reservation did not fit."""

    scope: str
    label: str
    period: str
    limit: int
    spent: int
    reserved: int
    amount: int
    resets_at: float

    def message(self) -> str:
        return (f"The {self.period} budget of {self.label} (${to_usd(self.limit):.4f}) cannot cover this request: "
                f"${to_usd(self.spent):.4f} spent and ${to_usd(self.reserved):.4f} reserved by requests in flight, "
                f"this one may cost up to ${to_usd(self.amount):.4f}. It resets at {iso(self.resets_at)}.")


class Alert(Struct, frozen=True, kw_only=True):
    """A soft threshold crossed by a settlement."""

    scope: str
    period: str
    period_key: str
    threshold: float
    spent: int
    limit: int


class BudgetRefused(Exception):
    """A reservation was refused; ``refusal`` says by which budget."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message())
        self.refusal = refusal


# ---- pure changes (each is one compare-and-set) ---------------------------------------------

def rolled(c: Counter, ts: float) -> Counter:
    """The counter with its periods moved forward to the ones containing ``ts`` (never backwards)."""
    day, month = day_key(ts), month_key(ts)
    if day <= c.day and month <= c.month:
        return c
    alerted = list(c.alerted)
    if day > c.day:
        c = msgspec.structs.replace(c, day=day, day_spent=0)
        alerted = [a for a in alerted if not a.startswith("d")]
    if month > c.month:
        c = msgspec.structs.replace(c, month=month, month_spent=0)
        alerted = [a for a in alerted if not a.startswith("m")]
    return msgspec.structs.replace(c, alerted=alerted)


def swept(c: Counter, now: float) -> tuple[Counter, list[str]]:
    """Drop reservations past their expiry (their terminal event never came)."""
    stale = [rid for rid, o in c.open.items() if o.expires < now]
    if not stale:
        return c, []
    return msgspec.structs.replace(c, open={k: v for k, v in c.open.items() if k not in stale}), stale


def reserve_change(c: Counter | None, request_id: str, amount: int, scope: Scope, now: float,
                   expires: float) -> tuple[Counter | None, tuple[Refusal | None, list[str]]]:
    c = rolled(c or Counter(), now)
    c, stale = swept(c, now)
    if request_id in c.open:
        return (c if stale else None), (None, stale)
    reserved = c.reserved()
    for period in PERIODS:
        limit = scope.limit(period)
        if limit is not None and c.spent(period) + reserved + amount > limit:
            refusal = Refusal(scope=scope.key, label=scope.label, period=period, limit=limit, spent=c.spent(period),
                              reserved=reserved, amount=amount, resets_at=resets_at(period, now))
            return (c if stale else None), (refusal, stale)
    opened = dict(c.open)
    opened[request_id] = Open(amount, expires)
    return msgspec.structs.replace(c, open=opened), (None, stale)


def _spend(c: Counter, amount: int, ts: float, scope: Scope) -> tuple[Counter, list[Alert]]:
    """Add ``amount`` to the periods ``ts`` falls in, and the soft alerts that crossing makes due."""
    c = rolled(c, ts)
    if day_key(ts) == c.day:
        c = msgspec.structs.replace(c, day_spent=c.day_spent + amount)
    if month_key(ts) == c.month:
        c = msgspec.structs.replace(c, month_spent=c.month_spent + amount)
    alerts, marks = [], list(c.alerted)
    for period, letter, key in (("daily", "d", c.day), ("monthly", "m", c.month)):
        limit = scope.limit(period)
        if not limit:
            continue
        for t in sorted(scope.thresholds):
            mark = f"{letter}{t:g}"
            if c.spent(period) >= t * limit and mark not in marks:
                marks.append(mark)
                alerts.append(Alert(scope=scope.key, period=period, period_key=key, threshold=t,
                                    spent=c.spent(period), limit=limit))
    return msgspec.structs.replace(c, alerted=marks), alerts


def settle_change(c: Counter | None, request_id: str, actual: int, ts: float,
                  scope: Scope) -> tuple[Counter | None, tuple[bool, list[Alert]]]:
    if c is None or request_id not in c.open:
        return None, (False, [])  # settled (or released) already
    opened = dict(c.open)
    del opened[request_id]
    c, alerts = _spend(msgspec.structs.replace(c, open=opened), actual, ts, scope)
    return c, (True, alerts)


def release_change(c: Counter | None, request_id: str) -> tuple[Counter | None, int]:
    """Remove the reservation; returns the amount given back (0: there was none)."""
    if c is None or request_id not in c.open:
        return None, 0
    amount = c.open[request_id].amount
    return msgspec.structs.replace(c, open={k: v for k, v in c.open.items() if k != request_id}), amount


def charge_change(c: Counter | None, amount: int, ts: float, scope: Scope) -> tuple[Counter | None, list[Alert]]:
    """Spend without a reservation (a billed attempt reported after its request was settled)."""
    c, alerts = _spend(c or Counter(), amount, ts, scope)
    return c, alerts


# ---- the store ------------------------------------------------------------------------------

class BudgetStore:
    """Budget counters in one KV bucket; every method is one compare-and-set per scope."""

    def __init__(self, kv: KeyValue | None, *, clock: Callable[[], float] = time.time, cas_timeout_s: float = 5.0):
        self.kv = kv
        self.clock = clock
        self.codec = Codec(Counter)
        self.cas_timeout_s = cas_timeout_s
        # A team's counter is one key that every admission and settlement of the team writes: concurrent
        # changes in this process go in one write, so contention on a busy team never times out into a 503.
        self._writes = GroupCommit(kv, self.codec, timeout_s=cas_timeout_s, what="budget store")

    async def _cas(self, key: str, change):
        return await self._writes.cas(key, change)

    async def reserve(self, request_id: str, scopes: list[Scope], amount: int, expires: float) -> list[str]:
        """Reserve ``amount`` in every scope, or none (BudgetRefused). Returns stale reservations swept."""
        taken: list[Scope] = []
        stale_all: list[str] = []
        try:
            for scope in scopes:
                refusal, stale = await self._cas(
                    scope.key, lambda c, s=scope: reserve_change(c, request_id, amount, s, self.clock(), expires))
                stale_all.extend(stale)
                if refusal is not None:
                    raise BudgetRefused(refusal)
                taken.append(scope)
        except BaseException:
            await self.release(request_id, [s.key for s in taken], quiet=True)
            raise
        return stale_all

    async def settle(self, request_id: str, scopes: list[Scope], actual: int, ts: float) -> list[Alert]:
        alerts: list[Alert] = []
        for scope in scopes:
            _, crossed = await self._cas(scope.key, lambda c, s=scope: settle_change(c, request_id, actual, ts, s))
            alerts.extend(crossed)
        return alerts

    async def release(self, request_id: str, keys: list[str], quiet: bool = False) -> int:
        """Give back the reservation in these scopes; returns the amount that was open (0: none).

        ``quiet``: best effort (a rollback on the way out of a failure that is already being reported).
        """
        released = 0
        for key in keys:
            try:
                released = max(released, await self._cas(key, lambda c: release_change(c, request_id)))
            except Exception:  # noqa: BLE001
                if not quiet:
                    raise
        return released

    async def charge(self, scopes: list[Scope], actual: int, ts: float) -> list[Alert]:
        alerts: list[Alert] = []
        for scope in scopes:
            alerts.extend(await self._cas(scope.key, lambda c, s=scope: charge_change(c, actual, ts, s)))
        return alerts

    async def counter(self, key: str) -> Counter | None:
        return await read(self.kv, key, self.codec, "budget store")


def view(counter: Counter | None, scope: Scope, now: float) -> dict:
    """Limits, spent, reserved and remaining for the current periods, as the API shows them."""
    c = rolled(counter or Counter(), now)
    c, _ = swept(c, now)
    reserved = c.reserved()
    periods = {}
    for period, key in (("daily", c.day), ("monthly", c.month)):
        limit = scope.limit(period)
        spent = c.spent(period)
        periods[period] = {
            "period": key,
            "limit_usd": to_usd(limit) if limit is not None else None,
            "spent_usd": to_usd(spent),
            "reserved_usd": to_usd(reserved),
            "remaining_usd": to_usd(max(0, limit - spent - reserved)) if limit is not None else None,
            "resets_at": iso(resets_at(period, now)),
        }
    return {"scope": scope.key, "periods": periods, "open_reservations": len(c.open),
            "alerts_sent": list(c.alerted)}
