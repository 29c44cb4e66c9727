"""The bench's best-throughput figure: which points count, and where it measures between the sweep's points."""

from __future__ import annotations

from bench.report import best_point, derive, refine_between


def point(rps: float, p99_ms: float | None, errors: int = 0, requests: int = 1000, **extra) -> dict:
    return {"rps": rps, "p50_ms": 1.0, "p99_ms": p99_ms, "errors": errors, "requests": requests, **extra}


def test_best_point_counts_only_points_under_the_p99_bar_without_errors():
    points = {"1": point(300, 9), "16": point(590, 49), "64": point(880, 108), "256": point(900, 90, errors=3)}
    assert best_point(points) == (590, 16)
    assert best_point({"1": point(50, 150)}) is None
    assert best_point({"1": point(50, 20, failed="wrk exited 1")}) is None


def test_refine_between_halves_the_gap_geometrically_until_it_is_narrow():
    points = {"1": point(300, 9), "16": point(590, 49), "64": point(880, 108), "256": point(890, 790)}
    assert refine_between(points) == 32
    points["32"] = point(700, 80)  # passes: the gap is now 32..64
    assert refine_between(points) == 45
    points["45"] = point(760, 104)  # fails: 32..45 is less than 1.5x apart
    assert refine_between(points) is None
    assert best_point(points) == (700, 32)


def test_refine_between_has_nothing_to_do_without_a_bracket():
    assert refine_between({"1": point(10_000, 0.5), "256": point(80_000, 6)}) is None  # nothing fails
    assert refine_between({"1": point(50, 130), "16": point(70, 550)}) is None  # nothing passes
    assert refine_between({"1": point(54, 24), "16": point(70, 550)}) == 4  # LiteLLM: between 1 and 16


def test_derive_takes_the_best_from_the_sweep_and_the_searched_points():
    direct = {"sweep": {"1": point(10_000, 0.5)}}
    sy = {"sweep": {"1": point(300, 9), "16": point(590, 49), "64": point(880, 108)},
          "search": {"32": point(720, 85)}}
    f = derive({"systems": {"direct": direct, "sy-all": sy}})["sy-all"]
    assert (f["best_rps"], f["best_c"]) == (720, 32)
