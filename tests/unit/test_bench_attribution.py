"""bench.attribution's bookkeeping: the ABBA order, the medians and added figures, the metric deltas."""

from __future__ import annotations

from collections import Counter

from bench.attribution import schedule, summarize, ttft_means_ms


def test_rounds_alternate_forward_and_reverse_so_every_arrangement_sits_at_every_distance_from_the_start():
    names = ["direct", "a", "b"]
    order = schedule(names, 4)
    assert [n for r, n in order if r == 0] == names
    assert [n for r, n in order if r == 1] == list(reversed(names))
    assert Counter(n for _, n in order) == {n: 4 for n in names}
    # Over an ABBA pair each arrangement's mean position is the same: a steady drift falls on all alike.
    pos = {n: sum(i for i, (r, m) in enumerate(o for o in order if o[0] < 2) if m == n) for n in names}
    assert len(set(pos.values())) == 1


def _run(rnd: int, name: str, p50: float, p99: float, ttft: float | None = None, errors: int = 0, cpu=None) -> dict:
    return {"round": rnd, "name": name, "p50_ms": p50, "p99_ms": p99, "rps": 1000 / p50, "errors": errors,
            "ttft_p50_ms": ttft, "ttft_p99_ms": None if ttft is None else 2 * ttft,
            "cpu_us_per_request": cpu or {}}


def test_added_latency_is_the_median_of_each_rounds_difference_to_direct_in_that_round():
    runs = [_run(0, "direct", 0.1, 0.2, 1.0), _run(0, "sy", 2.1, 5.2, 4.0, cpu={"gw": 1000.0}),
            _run(1, "direct", 0.3, 0.4, 1.0), _run(1, "sy", 2.0, 6.4, 3.0, cpu={"gw": 1200.0}),
            _run(2, "direct", 0.1, 0.2, 2.0), _run(2, "sy", 9.9, 9.9, 9.0, errors=3)]  # a run with errors is out
    s = summarize(runs)
    assert s["sy"]["runs"] == 2
    assert s["sy"]["added_p50_ms"] == (2.0 + 1.7) / 2
    assert s["sy"]["added_p99_ms"] == (5.0 + 6.0) / 2
    assert s["sy"]["added_ttft_p50_ms"] == (3.0 + 2.0) / 2
    assert s["sy"]["cpu_us_per_request"] == {"gw": 1100.0}
    assert "added_p50_ms" not in s["direct"]
    assert s["direct"]["p50_ms"] == 0.1


def test_an_arrangement_with_no_clean_run_is_reported_as_such():
    s = summarize([_run(0, "direct", 0.1, 0.2), _run(0, "sy", 1.0, 2.0, errors=1)])
    assert s["sy"] == {"runs": 0, "cpu_us_per_request": {}}


def test_ttft_means_come_from_the_histogram_deltas_between_two_scrapes():
    before = {"gateway": (1.0, 100.0), "up-stream": (0.5, 100.0)}
    after = {"gateway": (1.25, 200.0), "up-stream": (0.58, 200.0), "idle": (3.0, 7.0)}
    assert ttft_means_ms(before, after) == {"gateway": 2.5, "up-stream": 0.8, "idle": 428.571}
    assert ttft_means_ms(after, after) == {}
