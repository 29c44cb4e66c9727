"""Per-tenant queue caps (shared/state/queues.py): admitting in order within the caps, giving back, and counts
that nobody gave back leaving with their deadline minute. Against the running stack: tests/security/test_eviction.py.
"""

from __future__ import annotations

from shared.state.queues import GRACE_S, Caps, Queued, QueueRecord, give_back, take

NOW = 1_800_000_000.0
CAPS = Caps(jobs=3, bytes=1000)


def job(size: int = 100, deadline_in: float = 600.0, tenant: str = "t") -> Queued:
    return Queued(tenant=tenant, size=size, deadline=NOW + deadline_in)


def test_jobs_are_admitted_in_order_until_a_cap_and_the_rest_are_told_what_is_queued():
    record, verdicts = take(None, [job(), job(), job(), job()], CAPS, NOW)
    assert verdicts == [None, None, None, (3, 300)]
    assert record.totals() == (3, 300)
    record, verdicts = take(record, [job(size=1)], CAPS, NOW)
    assert record is None and verdicts == [(3, 300)]  # refused: nothing to write


def test_the_bytes_cap_refuses_a_big_job_and_still_takes_a_small_one_after_it():
    record, verdicts = take(None, [job(size=900), job(size=200), job(size=50)], CAPS, NOW)
    assert verdicts == [None, (1, 900), None] and record.totals() == (2, 950)


def test_giving_back_is_by_deadline_minute_and_never_below_zero():
    record, _ = take(None, [job(), job(deadline_in=3600)], CAPS, NOW)
    record = give_back(record, [job()], NOW)
    assert record.totals() == (1, 100)
    assert give_back(record, [job(deadline_in=7200)], NOW) is None  # a minute it never counted: unchanged
    record = give_back(record, [job(deadline_in=3600), job(deadline_in=3600)], NOW)
    assert record.totals() == (0, 0) and record.slots == {}


def test_a_count_nobody_gave_back_leaves_once_its_deadlines_and_the_grace_are_past():
    record, _ = take(None, [job(deadline_in=60)], CAPS, NOW)
    later = NOW + 60 + 60 + GRACE_S + 1
    record, verdicts = take(record, [job(deadline_in=600)], Caps(jobs=1, bytes=0), later)
    assert verdicts == [None] and record.totals() == (1, 100)


def test_no_caps_is_no_limit():
    assert not Caps(jobs=0, bytes=0).on
    record, verdicts = take(QueueRecord(), [job(size=10**9)] * 5, Caps(jobs=0, bytes=0), NOW)
    assert verdicts == [None] * 5 and record.totals() == (5, 5 * 10**9)
