"""What the stream sweep removes (shared/bus/retention.py), decided from the consumers' state alone.

The purges themselves run against a real nats-server in tests/security/test_at_rest.py and test_eviction.py.
"""

from __future__ import annotations

from types import SimpleNamespace

from nats.js.errors import NotFoundError

from shared.bus.retention import Reader, floor_of, plan, reader_of, subject_matches, waiting_for_reader

AUDIT = Reader("audit", ("sy.evt.>",), 100)
POLICY = Reader("policy", ("sy.evt.requested",), 90)
SETTLE = Reader("policy-settle", ("sy.evt.done.>", "sy.evt.attempt_failed"), 95)
ROUTER = Reader("router", ("sy.evt.admitted", "sy.evt.attempt_failed"), 97)
WORKER = Reader("worker-mock", ("sy.evt.attempt.mock",), 40)  # a provider's backlog
EVERYONE = [AUDIT, POLICY, SETTLE, ROUTER, WORKER]


def test_subject_matching_follows_nats_wildcards():
    assert subject_matches("sy.evt.>", "sy.evt.done.gw1")
    assert not subject_matches("sy.evt.>", "sy.evt")
    assert subject_matches("sy.evt.attempt.*", "sy.evt.attempt.mock")
    assert not subject_matches("sy.evt.attempt.*", "sy.evt.attempt.mock.x")
    assert not subject_matches("sy.evt.admitted", "sy.evt.admitted.routed")


def test_each_subject_goes_below_the_lowest_floor_of_its_readers_and_one_backlog_holds_only_its_own():
    per_subject, overall = plan(["sy.evt.requested", "sy.evt.admitted.routed", "sy.evt.attempt.mock",
                                 "sy.evt.done.gw1", "sy.evt.budget.reserved"], EVERYONE, last_seq=120, subject_lag=50)
    assert per_subject == {"sy.evt.requested": 91, "sy.evt.admitted.routed": 101, "sy.evt.attempt.mock": 41,
                           "sy.evt.done.gw1": 96, "sy.evt.budget.reserved": 101}
    assert overall == 41  # the stream-wide purge waits for the slowest reader of all


def test_a_subject_one_of_a_consumers_several_filters_names_is_left_to_the_stream_wide_purge():
    # Purging it alone would move the router (and settlement) past their other filter's unread events.
    per_subject, overall = plan(["sy.evt.admitted", "sy.evt.attempt_failed"], EVERYONE, last_seq=120,
                                subject_lag=50)
    assert per_subject == {} and overall == 41


def test_with_no_reader_far_behind_the_stream_wide_purge_alone_does():
    assert plan(["sy.evt.requested", "sy.evt.attempt.mock"], EVERYONE, last_seq=120, subject_lag=100) == ({}, 41)


def test_work_waiting_for_a_reader_that_has_no_consumer_yet_is_kept():
    readers = [AUDIT, POLICY, SETTLE, ROUTER]  # no worker has started for any provider
    assert waiting_for_reader("sy.evt.attempt.openai", readers)
    assert not waiting_for_reader("sy.evt.admitted.routed", readers)  # only audit reads it
    per_subject, overall = plan(["sy.evt.attempt.openai", "sy.evt.requested"], readers, last_seq=120)
    assert "sy.evt.attempt.openai" not in per_subject and overall is None
    assert per_subject == {"sy.evt.requested": 91}
    # Nor does a worker of another provider stand in for it.
    assert waiting_for_reader("sy.evt.attempt.openai", [*readers, WORKER])


def test_a_consumer_holding_nothing_is_raised_to_just_before_its_next_event():
    assert floor_of(acked=3, outstanding=2, next_unread=None, last_seq=500) == 3
    assert floor_of(acked=3, outstanding=0, next_unread=None, last_seq=500) == 500  # nothing more to read yet
    assert floor_of(acked=3, outstanding=0, next_unread=250, last_seq=500) == 249
    assert floor_of(acked=700, outstanding=1, next_unread=None, last_seq=500) == 500  # never past the last read


async def test_the_next_event_is_looked_up_in_the_stream_per_filter():
    class Js:
        def __init__(self, firsts: dict[str, int]) -> None:
            self.firsts, self.asked = firsts, []

        async def get_msg(self, stream, seq, subject, next):
            self.asked.append((stream, seq, subject, next))
            if subject not in self.firsts:
                raise NotFoundError(code=404, err_code=10037, description="no message found")
            return SimpleNamespace(seq=self.firsts[subject])

    def info(ack_pending: int, floor: int, *filters: str):
        return SimpleNamespace(name="router", num_pending=0, num_ack_pending=ack_pending,
                               ack_floor=SimpleNamespace(stream_seq=floor),
                               config=SimpleNamespace(filter_subjects=list(filters), filter_subject=None))

    js = Js({"sy.evt.attempt_failed": 90})
    reader = await reader_of(js, "S", info(0, 10, "sy.evt.admitted", "sy.evt.attempt_failed"), last_seq=120)
    assert reader.floor == 89 and reader.filters == ("sy.evt.admitted", "sy.evt.attempt_failed")
    assert js.asked == [("S", 11, "sy.evt.admitted", True), ("S", 11, "sy.evt.attempt_failed", True)]
    assert (await reader_of(Js({}), "S", info(0, 10, "sy.evt.admitted"), last_seq=120)).floor == 120
    busy = Js({})
    assert (await reader_of(busy, "S", info(3, 10, "sy.evt.admitted"), last_seq=120)).floor == 10 and not busy.asked
