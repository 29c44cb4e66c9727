"""Circuit breakers per deployment, with the reference semantics, as pure functions of (record, now).

States and transitions (after resilience4j's CircuitBreaker)::

    CLOSED ──failure rate ≥ threshold over the window (≥ minimum calls)──▶ OPEN
    OPEN ──open_wait_s elapsed, the next call is a probe──▶ HALF_OPEN
    HALF_OPEN ──all N probes reported, failure rate ≥ threshold──▶ OPEN
    HALF_OPEN ──all N probes reported, below threshold──▶ CLOSED
    any ──provider 401/403──▶ OPEN (for auth_open_wait_s)
    operator: force_open → FORCED_OPEN, force_closed → FORCED_CLOSED, reset → CLOSED

- The window is count-based: the last ``window_size`` calls recorded in the
  current state, ignoring calls older than ``window_age_s``.
- Every transition bumps the generation ``gen``; a call's result counts only
  for the generation that permitted it, so the metrics reset on each
  transition and a slow call from before cannot tip the new state.
- OPEN refuses every call until ``until``. The first call after that moves
  the breaker to HALF_OPEN and is probe 1; at most ``half_open_probes``
  permits are handed out, the rest are refused until the probes report.
  Probes that never report (their process died) are re-issued after
  ``half_open_timeout_s``.
- FORCED_OPEN refuses everything, FORCED_CLOSED permits everything and never
  trips (resilience4j's DISABLED), until an operator resets it.

The record is what JetStream KV holds per deployment (``shared.state.health``
applies these functions with compare-and-set, so all replicas share one
breaker); ``Breaker`` applies them to one in-memory window, the reference the
unit tests drive call by call with an injected clock.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import msgspec
from msgspec import Struct

from shared.state.settings import BreakerSettings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
FORCED_OPEN, FORCED_CLOSED = "forced_open", "forced_closed"
STATES = (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, FORCED_CLOSED)
ACTIONS = ("force_open", "force_closed", "reset")
HISTORY = 10  # transitions a breaker record keeps (the newest), for the status endpoint and the console


class Transition(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One change of a breaker's state, as kept in its record's short history."""

    at: float
    to: str
    reason: str = ""
    by: str = ""
    from_: str = msgspec.field(default="", name="from")


class BreakerRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One deployment's breaker as stored (KV ``brk.<deployment>``)."""

    state: str = CLOSED
    gen: int = 0
    since: float = 0.0  # when this state began
    until: float = 0.0  # OPEN: when probing may begin
    probes: int = 0  # HALF_OPEN: permits handed out
    probe_ok: int = 0
    probe_fail: int = 0
    reason: str = ""  # why the last transition happened
    by: str = ""  # who made it (a process id, or "operator")
    history: tuple[Transition, ...] = ()  # the last HISTORY transitions, oldest first


class Permit(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The answer to "may I call this deployment now?"."""

    granted: bool
    gen: int = 0
    probe: bool = False
    state: str = CLOSED  # the state that decided
    reason: str = ""  # why a call was refused


def effective_state(rec: BreakerRecord, now: float) -> str:
    """The state a caller sees at ``now``: an OPEN breaker whose wait is over is HALF_OPEN (its next call probes)."""
    if rec.state == OPEN and now >= rec.until:
        return HALF_OPEN
    return rec.state


def open_remaining(rec: BreakerRecord, now: float) -> float:
    """Seconds until an OPEN breaker lets a probe through (0 when it already would)."""
    return max(0.0, rec.until - now) if rec.state == OPEN else 0.0


def _transition(rec: BreakerRecord, state: str, now: float, reason: str, by: str, until: float = 0.0,
                probes: int = 0) -> BreakerRecord:
    step = Transition(at=now, from_=rec.state, to=state, reason=reason, by=by)
    return BreakerRecord(state=state, gen=rec.gen + 1, since=now, until=until, probes=probes, reason=reason, by=by,
                         history=(*rec.history, step)[-HISTORY:])


def acquire(rec: BreakerRecord, now: float, cfg: BreakerSettings,
            by: str = "") -> tuple[BreakerRecord | None, Permit]:
    """May a call go through now? Returns the record to store (None: unchanged) and the permit."""
    if not cfg.enabled or rec.state in (CLOSED, FORCED_CLOSED):
        return None, Permit(granted=True, gen=rec.gen, state=rec.state)
    if rec.state == FORCED_OPEN:
        return None, Permit(granted=False, gen=rec.gen, state=rec.state, reason="forced_open")
    if rec.state == OPEN:
        if now < rec.until:
            return None, Permit(granted=False, gen=rec.gen, state=OPEN, reason="circuit_open")
        new = _transition(rec, HALF_OPEN, now, f"open for {rec.until - rec.since:g}s: probing", by, probes=1)
        return new, Permit(granted=True, gen=new.gen, probe=True, state=HALF_OPEN)
    # HALF_OPEN
    if now - rec.since >= cfg.half_open_timeout_s:
        new = _transition(rec, HALF_OPEN, now, "probes unanswered: probing again", by, probes=1)
        return new, Permit(granted=True, gen=new.gen, probe=True, state=HALF_OPEN)
    if rec.probes < cfg.half_open_probes:
        new = msgspec.structs.replace(rec, probes=rec.probes + 1)
        return new, Permit(granted=True, gen=rec.gen, probe=True, state=HALF_OPEN)
    return None, Permit(granted=False, gen=rec.gen, state=HALF_OPEN, reason="half_open_busy")


def on_probe(rec: BreakerRecord, gen: int, ok: bool, now: float, cfg: BreakerSettings,
             by: str = "") -> BreakerRecord | None:
    """A probe's result; once all probes reported, the breaker closes or opens again."""
    if rec.state != HALF_OPEN or rec.gen != gen:
        return None
    good, bad = rec.probe_ok + int(ok), rec.probe_fail + int(not ok)
    if good + bad < cfg.half_open_probes:
        return msgspec.structs.replace(rec, probe_ok=good, probe_fail=bad)
    rate = bad / (good + bad)
    if rate >= cfg.failure_rate_threshold:
        return _transition(rec, OPEN, now, f"{bad} of {good + bad} probes failed", by, until=now + cfg.open_wait_s)
    return _transition(rec, CLOSED, now, f"{good} of {good + bad} probes succeeded", by)


def window(outcomes: Iterable[tuple[float, bool]], now: float, cfg: BreakerSettings) -> list[bool]:
    """The sliding window: the last ``window_size`` results (oldest first) no older than ``window_age_s``."""
    recent = sorted(((t, ok) for t, ok in outcomes if t >= now - cfg.window_age_s), key=lambda r: r[0])  # stable
    return [ok for _, ok in recent[-cfg.window_size:]]


def failure_rate(results: Sequence[bool]) -> float:
    return results.count(False) / len(results) if results else 0.0


def on_window(rec: BreakerRecord, results: Sequence[bool], now: float, cfg: BreakerSettings,
              by: str = "") -> BreakerRecord | None:
    """CLOSED: trip when the window holds at least ``minimum_calls`` and the failure rate reaches the threshold."""
    if rec.state != CLOSED or not cfg.enabled:
        return None
    calls = len(results)
    if calls < min(cfg.minimum_calls, cfg.window_size):
        return None
    rate = failure_rate(results)
    if rate < cfg.failure_rate_threshold:
        return None
    return _transition(rec, OPEN, now, f"failure rate {rate:.0%} over the last {calls} calls", by,
                       until=now + cfg.open_wait_s)


def trip(rec: BreakerRecord, now: float, wait_s: float, reason: str, by: str = "") -> BreakerRecord | None:
    """Open at once (a provider refused our credentials); forced states stay as the operator set them."""
    if rec.state in (FORCED_OPEN, FORCED_CLOSED) or (rec.state == OPEN and rec.until >= now + wait_s):
        return None
    return _transition(rec, OPEN, now, reason, by, until=now + wait_s)


def operate(rec: BreakerRecord, action: str, now: float, by: str = "operator") -> BreakerRecord:
    """An operator's action: ``force_open``, ``force_closed`` or ``reset`` (back to CLOSED, window cleared)."""
    if action == "force_open":
        return _transition(rec, FORCED_OPEN, now, "forced open by an operator", by)
    if action == "force_closed":
        return _transition(rec, FORCED_CLOSED, now, "forced closed by an operator", by)
    if action == "reset":
        return _transition(rec, CLOSED, now, "reset by an operator", by)
    raise ValueError(f"unknown breaker action {action!r}; known: {', '.join(ACTIONS)}")


class Breaker:
    """One breaker with its own window in memory: the reference the distributed one follows."""

    def __init__(self, cfg: BreakerSettings, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.clock = clock
        self.record = BreakerRecord(since=clock())
        self.outcomes: list[tuple[float, bool]] = []  # results of the current generation
        self.transitions: list[tuple[str, str]] = []

    @property
    def state(self) -> str:
        return effective_state(self.record, self.clock())

    def _store(self, new: BreakerRecord | None) -> None:
        if new is None:
            return
        if new.gen != self.record.gen:
            self.transitions.append((self.record.state, new.state))
            self.outcomes = []
        self.record = new

    def try_acquire(self) -> Permit:
        new, permit = acquire(self.record, self.clock(), self.cfg)
        self._store(new)
        return permit

    def on_result(self, permit: Permit, ok: bool) -> None:
        now = self.clock()
        if not permit.granted or permit.gen != self.record.gen:
            return  # a result from before the last transition does not count
        if permit.probe:
            self._store(on_probe(self.record, permit.gen, ok, now, self.cfg))
            return
        if self.record.state == CLOSED:
            self.outcomes.append((now, ok))
            self._store(on_window(self.record, window(self.outcomes, now, self.cfg), now, self.cfg))

    def call(self, ok: bool) -> Permit:
        """Acquire and report at once (a call that takes no time)."""
        permit = self.try_acquire()
        if permit.granted:
            self.on_result(permit, ok)
        return permit

    def trip(self, reason: str = "auth") -> None:
        self._store(trip(self.record, self.clock(), self.cfg.auth_open_wait_s, reason))

    def operate(self, action: str) -> None:
        self._store(operate(self.record, action, self.clock()))
