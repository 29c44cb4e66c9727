"""Circuit breakers: exact transitions call by call with an injected clock, and a hypothesis state machine."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shared.state import breakers as b
from shared.state.breakers import Breaker
from shared.state.settings import BreakerSettings
from tests.support.clock import ManualClock

CFG = BreakerSettings(failure_rate_threshold=0.5, minimum_calls=4, window_size=6, window_age_s=60,
                      open_wait_s=10, half_open_probes=3, half_open_timeout_s=30, auth_open_wait_s=100)


def breaker(cfg: BreakerSettings = CFG) -> tuple[Breaker, ManualClock]:
    clock = ManualClock()
    return Breaker(cfg, clock), clock


def test_closed_stays_closed_below_minimum_calls_then_opens_at_threshold():
    br, clock = breaker()
    # 3 failures: under minimum_calls (4), the rate is not evaluated yet
    for _ in range(3):
        assert br.call(False).granted
        assert br.state == b.CLOSED
    # the 4th call is a success: 3/4 failed = 75% ≥ 50% → open on this very call
    assert br.call(True).granted
    assert br.state == b.OPEN
    assert br.record.until == clock.t + 10
    assert br.transitions == [(b.CLOSED, b.OPEN)]
    assert br.outcomes == []  # metrics reset on the transition


def test_rate_below_threshold_keeps_closed_and_window_slides():
    br, clock = breaker()
    for ok in (True, True, True, False, True, False):  # 2/6 = 33%
        br.call(ok)
    assert br.state == b.CLOSED
    br.call(False)  # the window is the last 6: T T F T F F → 3/6 = 50% → open
    assert br.state == b.OPEN
    assert br.record.reason.startswith("failure rate 50%")


def test_old_calls_age_out_of_the_window():
    br, clock = breaker()
    for _ in range(3):
        br.call(False)
    clock.advance(61)  # those three are now older than window_age_s
    br.call(False)
    assert br.state == b.CLOSED  # only one recent call: below minimum_calls
    assert [ok for _, ok in br.outcomes] == [False, False, False, False]  # kept, but out of the window


def test_open_refuses_every_call_until_the_wait_is_over():
    br, clock = breaker()
    for _ in range(4):
        br.call(False)
    assert br.state == b.OPEN
    for _ in range(5):
        p = br.try_acquire()
        assert not p.granted and p.reason == "circuit_open"
    clock.advance(9.999)
    assert not br.try_acquire().granted
    clock.advance(0.001)
    assert br.state == b.HALF_OPEN  # the wait is over: the next call probes


def test_half_open_lets_exactly_n_probes_through_and_closes_when_they_succeed():
    br, clock = breaker()
    for _ in range(4):
        br.call(False)
    clock.advance(10)
    probes = [br.try_acquire() for _ in range(3)]
    assert all(p.granted and p.probe for p in probes)
    assert br.record.state == b.HALF_OPEN and br.record.probes == 3
    refused = br.try_acquire()
    assert not refused.granted and refused.reason == "half_open_busy"
    br.on_result(probes[0], True)
    br.on_result(probes[1], False)
    assert br.state == b.HALF_OPEN  # 2 of 3 reported
    br.on_result(probes[2], True)  # 1/3 failed = 33% < 50%
    assert br.state == b.CLOSED
    assert br.transitions == [(b.CLOSED, b.OPEN), (b.OPEN, b.HALF_OPEN), (b.HALF_OPEN, b.CLOSED)]
    assert br.try_acquire().granted


def test_half_open_reopens_when_probes_fail():
    br, clock = breaker()
    for _ in range(4):
        br.call(False)
    clock.advance(10)
    probes = [br.try_acquire() for _ in range(3)]
    for p, ok in zip(probes, (False, False, True)):  # 2/3 failed
        br.on_result(p, ok)
    assert br.state == b.OPEN
    assert br.record.until == clock.t + 10
    assert br.transitions[-1] == (b.HALF_OPEN, b.OPEN)


def test_results_from_before_a_transition_do_not_count():
    br, clock = breaker()
    slow = br.try_acquire()  # permitted while closed, answers late
    for _ in range(4):
        br.call(False)
    assert br.state == b.OPEN
    clock.advance(10)
    probe = br.try_acquire()
    br.on_result(slow, False)  # from generation 0: ignored
    assert br.record.probe_fail == 0
    br.on_result(probe, True)
    assert br.record.probe_ok == 1


def test_unanswered_probes_are_reissued_after_the_timeout():
    br, clock = breaker()
    for _ in range(4):
        br.call(False)
    clock.advance(10)
    lost = [br.try_acquire() for _ in range(3)]  # their process died: never reported
    assert not br.try_acquire().granted
    clock.advance(30)
    fresh = br.try_acquire()
    assert fresh.granted and fresh.probe and fresh.gen > lost[0].gen
    br.on_result(lost[0], False)  # too late, old generation
    assert br.record.probe_fail == 0


def test_auth_failure_trips_at_once_for_the_auth_wait():
    br, clock = breaker()
    br.call(True)
    br.trip("provider 401")
    assert br.state == b.OPEN and br.record.until == clock.t + 100
    clock.advance(99)
    assert not br.try_acquire().granted


def test_operator_forces_and_resets():
    br, clock = breaker()
    br.operate("force_open")
    assert br.state == b.FORCED_OPEN
    clock.advance(10_000)
    p = br.try_acquire()
    assert not p.granted and p.reason == "forced_open"
    br.operate("force_closed")
    for _ in range(20):
        assert br.call(False).granted  # forced closed: never trips
    assert br.state == b.FORCED_CLOSED
    br.trip("401")
    assert br.state == b.FORCED_CLOSED  # forced states stay as the operator set them
    br.operate("reset")
    assert br.state == b.CLOSED and br.outcomes == []


def test_the_record_keeps_its_last_transitions_for_the_status_page():
    br, clock = breaker()
    for _ in range(4):
        br.call(False)  # opens
    clock.advance(10)
    br.call(True)  # half open, probe 1
    [step, probing] = br.record.history
    assert (step.from_, step.to, step.at) == (b.CLOSED, b.OPEN, 1000.0) and "failure rate" in step.reason
    assert (probing.from_, probing.to) == (b.OPEN, b.HALF_OPEN)
    assert [(f, t) for f, t in br.transitions] == [(s.from_, s.to) for s in br.record.history]
    for i in range(2 * b.HISTORY):
        br.operate(("force_open", "reset")[i % 2])
    assert len(br.record.history) == b.HISTORY and br.record.history[-1].to == b.CLOSED
    assert b.msgspec.json.decode(b.msgspec.json.encode(br.record), type=b.BreakerRecord) == br.record
    assert b"\"from\":" in b.msgspec.json.encode(br.record.history[0])


def test_disabled_breaker_always_permits():
    br, _ = breaker(CFG.model_copy(update={"enabled": False}))
    for _ in range(50):
        assert br.call(False).granted
    assert br.state == b.CLOSED


def test_minimum_calls_above_window_size_is_capped():
    br, _ = breaker(CFG.model_copy(update={"minimum_calls": 100, "window_size": 3}))
    for _ in range(3):
        br.call(False)
    assert br.state == b.OPEN


# ---- property-based: any sequence of calls, results, clock moves and operator actions -----------------

class BreakerMachine(RuleBasedStateMachine):
    """Drives one breaker at random and checks the reference semantics hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.br = Breaker(CFG, self.clock)
        self.outstanding: list[b.Permit] = []
        self.last_gen = 0

    @rule(seconds=st.floats(min_value=0, max_value=40, allow_nan=False))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def acquire(self) -> None:
        before = self.br.record
        state = b.effective_state(before, self.clock())
        permit = self.br.try_acquire()
        if before.state == b.FORCED_OPEN or (before.state == b.OPEN and self.clock() < before.until):
            assert not permit.granted, "an open breaker let a call through"
        if before.state in (b.CLOSED, b.FORCED_CLOSED):
            assert permit.granted and not permit.probe
        if permit.granted and state == b.HALF_OPEN:
            assert permit.probe
        if permit.granted:
            self.outstanding.append(permit)

    @precondition(lambda self: self.outstanding)
    @rule(index=st.integers(min_value=0), ok=st.booleans())
    def report(self, index: int, ok: bool) -> None:
        permit = self.outstanding.pop(index % len(self.outstanding))
        before = self.br.record
        self.br.on_result(permit, ok)
        after = self.br.record
        if permit.gen != before.gen:
            assert after == before, "a result from an older generation changed the breaker"

    @rule(action=st.sampled_from(b.ACTIONS))
    def operate(self, action: str) -> None:
        self.br.operate(action)
        assert self.br.record.state == {"force_open": b.FORCED_OPEN, "force_closed": b.FORCED_CLOSED,
                                        "reset": b.CLOSED}[action]

    @rule()
    def auth_failure(self) -> None:
        before = self.br.record.state
        self.br.trip()
        if before in (b.FORCED_OPEN, b.FORCED_CLOSED):
            assert self.br.record.state == before

    @invariant()
    def generations_only_grow_and_reset_metrics(self) -> None:
        rec = self.br.record
        assert rec.gen >= self.last_gen
        if rec.gen > self.last_gen:
            assert self.br.outcomes == [] or rec.state in (b.CLOSED, b.FORCED_CLOSED)
        self.last_gen = rec.gen

    @invariant()
    def half_open_never_hands_out_more_than_n_probes(self) -> None:
        rec = self.br.record
        if rec.state == b.HALF_OPEN:
            assert rec.probes <= CFG.half_open_probes
            assert rec.probe_ok + rec.probe_fail <= rec.probes

    @invariant()
    def window_only_holds_this_generation(self) -> None:
        rec = self.br.record
        if rec.state not in (b.CLOSED, b.FORCED_CLOSED):
            assert self.br.outcomes == []
        results = b.window(self.br.outcomes, self.clock(), CFG)
        assert len(results) <= CFG.window_size
        if rec.state == b.CLOSED and len(results) >= CFG.minimum_calls:
            assert b.failure_rate(results) < CFG.failure_rate_threshold, "a closed breaker over the threshold"

    @invariant()
    def transitions_follow_the_state_diagram(self) -> None:
        allowed = {(b.CLOSED, b.OPEN), (b.OPEN, b.HALF_OPEN), (b.HALF_OPEN, b.OPEN), (b.HALF_OPEN, b.CLOSED),
                   (b.HALF_OPEN, b.HALF_OPEN)}
        for edge in self.br.transitions:
            source, target = edge
            # operator actions and auth trips may start anywhere
            assert edge in allowed or target in (b.FORCED_OPEN, b.FORCED_CLOSED, b.CLOSED, b.OPEN), edge


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
