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


def test_cache_hits_get_rows_against_the_bare_upstream():
    from bench.report import build_rows

    direct = {"sweep": {"1": point(10_000, 0.4), "64": point(30_000, 3.0)}}
    sy = {"sweep": {"1": point(900, 2.0)}, "cache_hits_c1": {**point(1500, 1.5), "p50_ms": 0.9},
          "cache_hits_load": {**point(4000, 40.0), "connections": 64}}
    results = {"systems": {"direct": direct, "sy-all": sy}}
    f = derive(results)["sy-all"]
    assert f["cache_added_p50_ms"] == 0.9 - 1.0 and f["cache_added_p99_ms"] == 1.5 - 0.4
    rows = dict(build_rows(results))
    assert rows["cache hits c=64: requests/s (direct: bare upstream)"]["direct"][1] == 30_000
    assert rows["cache hits c=64: requests/s (direct: bare upstream)"]["sy-all"][1] == 4000
    assert rows["cache hits c=1: p50 / p99 (ms) (direct: bare upstream)"]["sy-all"][0] == "0.90 / 1.50"
    assert not any("cache" in label for label, _ in build_rows({"systems": {"direct": direct, "sy-all": {
        "sweep": {"1": point(900, 2.0)}}}}))


def test_wrk_sends_the_cache_header():
    from bench.load import lua_script

    script = lua_script("/v1/chat/completions", {"model": "m"}, "sk-1", headers={"x-switchyard-cache": "use"})
    assert 'wrk.headers["x-switchyard-cache"] = "use"' in script


def test_every_cell_is_compared_with_both_peers_and_the_targets_with_portkey():
    from bench.report import render_table, targets

    direct = {"sweep": {"1": point(10_000, 0.5), "64": point(30_000, 4.0)}}
    litellm = {"sweep": {"1": point(50, 30.0), "64": point(60, 900.0)}}
    portkey = {"sweep": {"1": {**point(800, 7.0), "p50_ms": 2.0}, "64": point(790, 985.0)}}
    sy = {"sweep": {"1": {**point(900, 4.0), "p50_ms": 2.8},
                    "64": {**point(1000, 90.0), "cpu_ms_per_request": 1.2}}}
    results = {"systems": {"direct": direct, "sy-all": sy, "portkey": portkey, "litellm-1": litellm}}
    table = render_table(results)
    line = next(ln for ln in table.splitlines() if ln.startswith("c=64: requests/s"))
    assert "(16.67x L, 1.27x P)" in line  # sy-all: 1000 / 60 and 1000 / 790
    t = targets(results)["sy-all"]
    assert t["throughput"]["pass"] is True  # 1000 >= 12 x 60 and >= Portkey's 790
    assert t["p99 at c=64"]["pass"] is True  # 90 < 985
    assert t["CPU per request"]["pass"] is True
    # added p50: 1.8 ms is under 2 ms but above 1.5 x Portkey's 1.0 ms
    assert t["added latency"]["pass"] is False and "1.5x portkey" in t["added latency"]["text"]


def test_the_burst_and_the_load_carry_a_systems_own_headers():
    from bench.burst import _request_bytes
    from bench.load import lua_script

    head = {"x-portkey-provider": "openai", "x-portkey-custom-host": "http://127.0.0.1:9/fast/v1"}
    raw = _request_bytes("127.0.0.1", 1, "/v1/chat/completions", {"model": "m"}, "sk-1", head).decode()
    assert "x-portkey-custom-host: http://127.0.0.1:9/fast/v1\r\n" in raw and raw.index("\r\n\r\n") > raw.index("x-portkey")
    assert 'wrk.headers["x-portkey-provider"] = "openai"' in lua_script("/v1/chat/completions", {}, "k", headers=head)
