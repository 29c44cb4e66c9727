"""Turns raw results into the figures: one aligned plain-text table (with ratios to the peers) and targets.

Every cell is ``value (ratio× L, ratio× P)``: this system's value divided by
LiteLLM 1 worker's (L) and by the Portkey gateway's (P) in the same run. "Best RPS" is the highest
requests/s among the measured points (immediate upstream) whose p99 was
≤ 100 ms with zero errors: the sweep's, and those measured between the best
passing sweep point and the next failing one (``refine_between``). wrk is
closed-loop, so this is the best *measured* concurrency meeting the
condition, not a search over offered load.
"""

from __future__ import annotations

from typing import Any, Callable

BASE = "litellm-1"
PEER = "portkey"
BASES = {BASE: "L", PEER: "P"}  # the systems every cell is compared with, and their marks in the table
P99_LIMIT_MS = 100.0
CPU_AT_C = 64  # the sweep point whose CPU per request the targets judge

# Performance round 2's targets for Switchyard on the 2-core machine (same run, median of the rounds).
TARGETS = {
    "added_p50_ms": 2.0,
    "added_p50_x_peer": 1.5,
    "added_p99_ms": 5.0,
    "throughput_x_litellm": 12.0,
    "cpu_ms_per_request": 1.5,
    "burst_rss_mb": 1024.0,
    "jobs_ingest_rps": 3000.0,
    "added_ttft_p50_ms": 2.0,
}


def _get(d: Any, *path, default=None):
    for p in path:
        if d is None:
            return default
        d = d.get(p) if isinstance(d, dict) else None
    return default if d is None else d


def passes(r: dict) -> bool:
    """A load point that counts for the best throughput: p99 ≤ 100 ms, no errors, requests answered."""
    return (not r.get("failed") and r["errors"] == 0 and r["p99_ms"] is not None and r["p99_ms"] <= P99_LIMIT_MS
            and r["requests"] > 0)


def best_point(points: dict) -> tuple[float, int] | None:
    """(rps, concurrency) of the best measured point with p99 ≤ 100 ms and no errors."""
    ok = [(r["rps"], int(c)) for c, r in points.items() if passes(r)]
    return max(ok) if ok else None


def refine_between(points: dict, ratio: float = 1.5) -> int | None:
    """The next concurrency to measure for the best throughput, or None when there is none worth measuring.

    The sweep's steps are 4× apart, so the highest throughput under the p99 bar can lie between the best
    passing point and the lowest failing one above it: this is the geometric middle of those two while they
    are more than ``ratio`` apart. Nothing to refine when no point passes (nothing is below concurrency 1)
    or none above the best fails.
    """
    best = best_point(points)
    if best is None:
        return None
    low = best[1]
    above = [int(c) for c, r in points.items() if int(c) > low and not passes(r)]
    if not above:
        return None
    high = min(above)
    if high <= low * ratio:
        return None
    mid = round((low * high) ** 0.5)
    return mid if low < mid < high and str(mid) not in points else None


def derive(results: dict) -> dict[str, dict[str, Any]]:
    """Per system, the headline figures (numbers or None)."""
    systems = results["systems"]
    direct = systems.get("direct", {})
    out: dict[str, dict[str, Any]] = {}
    for name, s in systems.items():
        f: dict[str, Any] = {}
        sweep = s.get("sweep", {})
        c1, d1 = sweep.get("1"), _get(direct, "sweep", "1")
        if c1 and d1 and c1.get("p50_ms") is not None and d1.get("p50_ms") is not None and not c1["errors"]:
            f["added_p50_ms"] = c1["p50_ms"] - d1["p50_ms"]
            f["added_p99_ms"] = c1["p99_ms"] - d1["p99_ms"]
        a, b = s.get("d50_c1"), direct.get("d50_c1")
        if a and b and a.get("p50_ms") is not None and b.get("p50_ms") is not None and not a["errors"]:
            f["added50_p50_ms"] = a["p50_ms"] - b["p50_ms"]
            f["added50_p99_ms"] = a["p99_ms"] - b["p99_ms"]
        best = best_point({**sweep, **s.get("search", {})})
        if best:
            f["best_rps"], f["best_c"] = best
        hit = s.get("cache_hits_c1")
        if hit and d1 and hit.get("p50_ms") is not None and d1.get("p50_ms") is not None and not hit["errors"]:
            f["cache_added_p50_ms"] = hit["p50_ms"] - d1["p50_ms"]
            f["cache_added_p99_ms"] = hit["p99_ms"] - d1["p99_ms"]
        t, dt = s.get("ttft") or {}, direct.get("ttft") or {}
        if t.get("ttft_p50_ms") is not None:
            f["ttft_p50_ms"] = t["ttft_p50_ms"]
            if dt.get("ttft_p50_ms") is not None:
                f["added_ttft_p50_ms"] = t["ttft_p50_ms"] - dt["ttft_p50_ms"]
                f["added_ttft_p99_ms"] = t["ttft_p99_ms"] - dt["ttft_p99_ms"]
        out[name] = f
    return out


def _num(v: float | None) -> str:
    if v is None:
        return "n/a"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def build_rows(results: dict) -> list[tuple[str, dict[str, tuple[str, float | None]]]]:
    """Rows of (label, {system: (text, number for the ratio or None)})."""
    systems = results["systems"]
    names = list(systems)
    der = derive(results)
    rows: list[tuple[str, dict[str, tuple[str, float | None]]]] = []

    def row(label: str, fn: Callable[[str, dict, dict], Any]) -> None:
        cells = {}
        for n in names:
            s = systems[n]
            if s.get("error") and not s.get("sweep"):
                cells[n] = ("failed", None)
                continue
            try:
                v = fn(n, s, der.get(n, {}))
            except (KeyError, TypeError, IndexError):
                v = None
            if isinstance(v, tuple):
                cells[n] = v
            elif isinstance(v, (int, float)):
                cells[n] = (_num(v), float(v))
            else:
                cells[n] = (v if isinstance(v, str) else "n/a", None)
        rows.append((label, cells))

    def lat(r: dict | None) -> str | None:
        if not r or r.get("p50_ms") is None:
            return None
        return f"{_num(r['p50_ms'])} / {_num(r['p99_ms'])}"

    row("added latency c=1, p50 (ms)", lambda n, s, f: f.get("added_p50_ms"))
    row("added latency c=1, p99 (ms)", lambda n, s, f: f.get("added_p99_ms"))
    if any("d50_c1" in s for s in systems.values()):
        row("added latency c=1, 50 ms upstream, p50 (ms)", lambda n, s, f: f.get("added50_p50_ms"))
        row("added latency c=1, 50 ms upstream, p99 (ms)", lambda n, s, f: f.get("added50_p99_ms"))
    row("self-reported overhead p50 / p99 (ms)",
        lambda n, s, f: f"{_num(s['overhead']['p50_ms'])} / {_num(s['overhead']['p99_ms'])}"
        if s.get("overhead") else None)
    concs = sorted({int(c) for s in systems.values() for c in s.get("sweep", {})})
    for c in concs:
        row(f"c={c}: requests/s", lambda n, s, f, c=c: s["sweep"][str(c)]["rps"])
        row(f"c={c}: p50 / p99 (ms)", lambda n, s, f, c=c: lat(s["sweep"][str(c)]))
        row(f"c={c}: errors", lambda n, s, f, c=c: (str(s["sweep"][str(c)]["errors"]), None))
        row(f"c={c}: CPU per request, all processes (ms)", lambda n, s, f, c=c: s["sweep"][str(c)]["cpu_ms_per_request"])
    if any("d50_c256" in s for s in systems.values()):
        row("50 ms upstream c=256: requests/s", lambda n, s, f: s["d50_c256"]["rps"])
        row("50 ms upstream c=256: p50 / p99 (ms)", lambda n, s, f: lat(s["d50_c256"]))
        row("50 ms upstream c=256: errors", lambda n, s, f: (str(s["d50_c256"]["errors"]), None))
    row(f"best requests/s with p99<={P99_LIMIT_MS:.0f} ms, 0 errors",
        lambda n, s, f: (f"{_num(f['best_rps'])} @c{f['best_c']}", f["best_rps"]) if "best_rps" in f else "none")
    row("processes (incl. nats-server)", lambda n, s, f: (str(s["processes"]), None))
    row("RSS idle (MB)", lambda n, s, f: s["rss_idle"]["rss_mb"])
    row("RSS peak, sweep (MB)", lambda n, s, f: s["rss_load"]["rss_mb"])
    row("PSS peak, sweep (MB)", lambda n, s, f: s["rss_load"]["pss_mb"])
    row("jobs ingest (accepted/s)", lambda n, s, f: s["jobs"]["ingest_rps"] if s.get("jobs") else None)
    row("jobs drain (completed/s)", lambda n, s, f: s["jobs"]["drain_rps"] if s.get("jobs") else None)
    row("stream TTFT p50 (ms)", lambda n, s, f: f.get("ttft_p50_ms") if s.get("ttft", {}).get("unsupported") is None
        else "unsupported")
    row("added TTFT p50 (ms)", lambda n, s, f: f.get("added_ttft_p50_ms"))
    row("added TTFT p99 (ms)", lambda n, s, f: f.get("added_ttft_p99_ms"))
    loads = [s["cache_hits_load"]["connections"] for s in systems.values() if s.get("cache_hits_load")]
    if loads:
        # Response-cache hits; the direct column holds the bare upstream's own figures at the same concurrency.
        def hits(n: str, s: dict, key: str, c: int) -> dict | None:
            return s.get(key) or (s.get("sweep", {}).get(str(c)) if n == "direct" else None)

        c = max(loads)
        row("cache hits c=1: p50 / p99 (ms) (direct: bare upstream)",
            lambda n, s, f: lat(hits(n, s, "cache_hits_c1", 1)))
        row("cache hits c=1: added p50 / p99 (ms)",
            lambda n, s, f: f"{_num(f['cache_added_p50_ms'])} / {_num(f['cache_added_p99_ms'])}"
            if "cache_added_p50_ms" in f else None)
        row(f"cache hits c={c}: requests/s (direct: bare upstream)",
            lambda n, s, f: hits(n, s, "cache_hits_load", c)["rps"])
        row(f"cache hits c={c}: p50 / p99 (ms)", lambda n, s, f: lat(hits(n, s, "cache_hits_load", c)))
        row(f"cache hits c={c}: errors", lambda n, s, f: (str(hits(n, s, "cache_hits_load", c)["errors"]), None))
    bursts = [s["burst"]["concurrency"] for s in systems.values() if s.get("burst")]
    if bursts:
        n = f"{max(bursts):,} at once @1 s upstream"
        row(f"{n}: ok / errors", lambda n, s, f: (f"{s['burst']['ok']} / {s['burst']['errors']}", None))
        row(f"{n}: all done in (s)", lambda n, s, f: s["burst"]["wall_s"])
        row(f"{n}: p50 / p99 (ms)", lambda n, s, f: lat(s["burst"]))
        row(f"{n}: peak RSS (MB)", lambda n, s, f: s["burst"]["rss_peak"]["rss_mb"])
    return rows


def render_table(results: dict) -> str:
    rows = build_rows(results)
    names = list(results["systems"])
    present = [b for b in BASES if b in names]
    table: list[list[str]] = [["figure", *names]]
    for label, cells in rows:
        line = [label]
        for n in names:
            text, v = cells.get(n, ("n/a", None))
            ratios = []
            for b in present:
                base = cells.get(b, ("", None))[1]
                if base and v is not None and n != b:
                    ratios.append(f"{v / base:.2f}x {BASES[b]}")
            line.append(f"{text} ({', '.join(ratios)})" if ratios else text)
        table.append(line)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    out = []
    for i, r in enumerate(table):
        out.append("  ".join(c.ljust(widths[0]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [("(Nx L, Nx P) = this system / " + ", ".join(f"{b} ({BASES[b]})" for b in present) + " in the same run."
              if present else "no peer measured: no ratios."),
             "added = system - direct upstream (same percentile). Best requests/s = best measured point "
             f"meeting p99 <= {P99_LIMIT_MS:.0f} ms with 0 errors (wrk is closed-loop): the sweep's, and those "
             "measured between its best passing point and the next failing one.",
             "RSS = sum of VmRSS over each system's whole process tree (incl. nats-server); PSS counts "
             "pages shared between forked workers once. CPU per request = user+system time of that tree "
             "during the run / requests answered."]
    busy = {n: s["background_cpu"] for n, s in results["systems"].items() if s.get("background_cpu", 0) > 0.15}
    if busy:
        notes.append("WARNING: the machine was busy with other work before: " + ", ".join(
            f"{n} {v:.0%}" for n, v in busy.items()) + " of CPU; those figures are noisy.")
    return "\n".join(out + [""] + notes)


def targets(results: dict) -> dict[str, dict[str, Any]]:
    """PASS / FAIL / n/a for each Switchyard shape against the issue's targets."""
    der = derive(results)
    systems = results["systems"]
    base_best = der.get(BASE, {}).get("best_rps")
    peer, peer_s = der.get(PEER, {}), systems.get(PEER, {})
    out: dict[str, dict[str, Any]] = {}
    for name in (n for n in systems if n.startswith("sy-")):
        f, s = der.get(name, {}), systems[name]
        t: dict[str, Any] = {}

        def judge(key: str, value: float | None, ok: bool | None, text: str) -> None:
            t[key] = {"value": value, "pass": ok, "text": text}

        a50, a99, p50 = f.get("added_p50_ms"), f.get("added_p99_ms"), peer.get("added_p50_ms")
        cap = TARGETS["added_p50_ms"] if p50 is None else min(TARGETS["added_p50_ms"],
                                                                TARGETS["added_p50_x_peer"] * max(p50, 0.0))
        judge("added latency", a50, None if a50 is None else a50 <= cap and a99 <= TARGETS["added_p99_ms"],
              f"p50 {_num(a50)} ms (<= 2 and <= 1.5x {PEER}'s {_num(p50)}), p99 {_num(a99)} ms (<= 5)")
        x = f["best_rps"] / base_best if f.get("best_rps") and base_best else None
        ok = None if x is None else x >= TARGETS["throughput_x_litellm"] and (
            peer.get("best_rps") is None or f["best_rps"] >= peer["best_rps"])
        judge("throughput", x, ok, f"{_num(f.get('best_rps'))} req/s = {_num(x)}x {BASE} (>= 12x) and "
              f">= {PEER}'s {_num(peer.get('best_rps'))}")
        for c in (64, 256):
            mine, theirs = _get(s, "sweep", str(c), "p99_ms"), _get(peer_s, "sweep", str(c), "p99_ms")
            judge(f"p99 at c={c}", mine, None if mine is None or theirs is None else mine < theirs,
                  f"{_num(mine)} ms (< {PEER}'s {_num(theirs)})")
        cpu = _get(s, "sweep", str(CPU_AT_C), "cpu_ms_per_request")
        judge("CPU per request", cpu, None if cpu is None else cpu <= TARGETS["cpu_ms_per_request"],
              f"{_num(cpu)} ms at c={CPU_AT_C}, all processes incl. nats-server (<= 1.5)")
        c = s.get("burst")
        if c:
            rss = c["rss_peak"]["rss_mb"]
            ok = c["errors"] == 0 and c["ok"] > 0 and rss <= TARGETS["burst_rss_mb"]
            judge(f"{c['concurrency']} concurrent", rss, ok if c["concurrency"] >= 5000 else None,
                  f"{c['ok']} ok, {c['errors']} errors, peak RSS {_num(rss)} MB (all ok, <= 1024)"
                  + ("" if c["concurrency"] >= 5000 else "; target is for 5,000"))
        else:
            judge("5,000 concurrent", None, None, "not measured")
        j = s.get("jobs") or {}
        ing = j.get("ingest_rps")
        judge("job ingest", ing, None if ing is None else ing >= TARGETS["jobs_ingest_rps"] and j["ingest_errors"] == 0,
              f"{_num(ing)} accepted/s, {j.get('ingest_errors', 'n/a')} errors (>= 3000)")
        tt = f.get("added_ttft_p50_ms")
        unsupported = (s.get("ttft") or {}).get("unsupported")
        judge("streaming TTFT", tt, None if tt is None else tt <= TARGETS["added_ttft_p50_ms"],
              "streaming not supported: " + unsupported[:60] if unsupported else f"added p50 {_num(tt)} ms (<= 2)")
        out[name] = t
    return out


def render_targets(results: dict) -> str:
    tg = targets(results)
    if not tg:
        return "targets (performance round 2): no Switchyard system measured"
    lines = ["targets (performance round 2):"]
    for name, t in tg.items():
        for key, v in t.items():
            mark = {True: "PASS", False: "FAIL", None: "n/a "}[v["pass"]]
            lines.append(f"  {name:<9} {mark}  {key:<17} {v['text']}")
    return "\n".join(lines)
