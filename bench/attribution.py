"""``python -m bench.attribution`` (``make bench-audit``): what audit costs the request path at concurrency 1.

Every arrangement runs side by side against one nginx upstream and one is measured at a time, each a wrk
run at concurrency 1 against the immediate upstream (an idle Switchyard process costs nothing: it sleeps
in epoll until a message comes):

=======================  ============================================================================
``direct``               the nginx upstream itself (the floor the others add to)
``sy-all``               every target in one process: audit shares the request path's event loop
``sy-duo``               the request path in one process, audit in a second one at nice 10
``sy-duo audit stopped`` the same processes with audit SIGSTOPped for the run: the stream keeps every
                         event, and audit drains them after SIGCONT, before the next run starts
``sy-path``              the request path's process with no audit process at all (nothing audited)
=======================  ============================================================================

Rounds alternate forward and reverse order (ABBA ...), so a drift of the machine's speed falls on every
arrangement alike, and before each run the bench waits until every system is idle, so no run pays for the
previous one's audit backlog. Per arrangement: medians over the rounds of wrk's p50 and p99, of the added
latency (minus ``direct`` in the same round), and of CPU per request of each process (user + system time
over the run, divided by the requests answered).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import install, save_results
from bench.install import log, machine_info
from bench.load import run_wrk
from bench.procs import CLOCK_TICKS, Proc, cpu_ticks, quiesce, start_run, tree
from bench.stream import measure_ttft
from bench.systems import Direct, RequestPathOnly, Switchyard, SwitchyardAll, SwitchyardDuo, System
from bench.upstream import Upstream


@dataclass
class Arrangement:
    """One measured condition: a running system, and the process (if any) held stopped while it is measured."""

    name: str
    system: System
    paused: Proc | None = None


def schedule(names: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, name) in ABBA order: forward in even rounds, reversed in odd ones."""
    return [(r, n) for r in range(rounds) for n in (names if r % 2 == 0 else list(reversed(names)))]


def process_pids(system: System) -> dict[str, int]:
    """Every process of a running system by name: the bench's children by theirs, the rest by executable."""
    named = {c.name: c.pid for c in system.children}
    for pid in tree(system.pids()):
        if pid in named.values():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        named[comm if comm not in named else f"{comm}-{pid}"] = pid
    return named


LATENCIES = ("p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms")


def summarize(records: list[dict], baseline: str = "direct") -> dict[str, dict]:
    """Medians per arrangement over the rounds; ``added_*`` against ``baseline`` in the same round."""
    base = {r["round"]: r for r in records if r["name"] == baseline}
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["name"] for r in records):
        rows = [r for r in records if r["name"] == name and r["p50_ms"] is not None and not r["errors"]]
        s: dict = {"runs": len(rows)}
        if rows:
            s["rps"] = statistics.median(r["rps"] for r in rows)
        for key in LATENCIES:
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                s[key] = statistics.median(vals)
            added = [r[key] - b[key] for r in rows if r.get(key) is not None
                     and (b := base.get(r["round"])) is not None and b.get(key) is not None]
            if name != baseline and added:
                s[f"added_{key}"] = statistics.median(added)
        labels = dict.fromkeys(k for r in rows for k in r.get("ttft_inside_mean_ms", {}))
        if labels:
            s["ttft_mean_ms"] = statistics.median(r["ttft_mean_ms"] for r in rows if r.get("ttft_mean_ms") is not None)
            s["ttft_inside_mean_ms"] = {k: statistics.median(r["ttft_inside_mean_ms"][k] for r in rows
                                                             if k in r.get("ttft_inside_mean_ms", {})) for k in labels}
        procs = dict.fromkeys(p for r in rows for p in r["cpu_us_per_request"])
        s["cpu_us_per_request"] = {p: statistics.median(r["cpu_us_per_request"].get(p, 0.0) for r in rows)
                                   for p in procs}
        out[name] = s
    return out


def render(summary: dict[str, dict]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    cols = [("p50", "p50_ms"), ("p99", "p99_ms"), ("+p50", "added_p50_ms"), ("+p99", "added_p99_ms"),
            ("TTFT", "ttft_p50_ms"), ("+TTFT", "added_ttft_p50_ms"), ("+TTFT99", "added_ttft_p99_ms")]
    lines = [f"{'arrangement':<22}" + "".join(f" {c:>7}" for c, _ in cols) + f" {'req/s':>6}  CPU per request (us)"]
    for name, s in summary.items():
        cpu = ", ".join(f"{p} {v:.0f}" for p, v in s.get("cpu_us_per_request", {}).items())
        lines.append(f"{name:<22}" + "".join(f" {num(s.get(k)):>7}" for _, k in cols)
                     + f" {s.get('rps', 0):>6.0f}  {cpu}")
    lines.append("\nStreamed requests, means (ms): at the client; in the gateway from its handler's start to the "
                 "first chunk; in the worker from its upstream call to the first chunk")
    for name, s in summary.items():
        inside = s.get("ttft_inside_mean_ms") or {}
        if s.get("ttft_mean_ms") is not None:
            worker = ", ".join(f"{k} {v:.2f}" for k, v in inside.items() if k != "gateway") or "-"
            lines.append(f"{name:<22} client {s['ttft_mean_ms']:.2f}, gateway {num(inside.get('gateway'))}, "
                         f"worker {worker}")
    return "\n".join(lines)


TTFT_METRIC = "switchyard_time_to_first_token_seconds"


def ttft_sums(system: System) -> dict[str, tuple[float, float]]:
    """The process's own TTFT histogram, (sum, count) per label: ``gateway`` (from the handler's start to the
    first chunk at the gateway) and each provider (from the worker's upstream call to its first chunk)."""
    if not isinstance(system, Switchyard):
        return {}
    out: dict[str, list[float]] = {}
    text = httpx.get(f"http://127.0.0.1:{system.port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name != TTFT_METRIC:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                slot = out.setdefault(sample.labels["gen_ai_provider_name"], [0.0, 0.0])
                slot[sample.name.endswith("_count")] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def ttft_means_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean of each TTFT label over the requests between two scrapes, in milliseconds."""
    out = {}
    for label, (total, n) in after.items():
        t0, n0 = before.get(label, (0.0, 0.0))
        if n > n0:
            out[label] = round((total - t0) / (n - n0) * 1000, 3)
    return out


def measure(a: Arrangement, rnd: int, wrk: str, duration_s: float, ttft_n: int, everything: list[int]) -> dict:
    """A wrk run at concurrency 1, then ``ttft_n`` streamed requests, each on an idle machine, with the CPU
    each process of ``a`` spent on the wrk run."""
    quiesce(everything)
    pids = process_pids(a.system)
    if a.paused is not None:
        os.killpg(a.paused.pid, signal.SIGSTOP)
    try:
        before = {p: cpu_ticks([pid]) for p, pid in pids.items()}
        r = run_wrk(wrk, a.system.chat_url("fast"), a.system.body("fast"), a.system.key, 1, duration_s)
        used = {p: cpu_ticks([pid]) - before[p] for p, pid in pids.items()}
        quiesce(everything)  # a stopped audit uses no CPU: this waits only for the rest
        scraped = ttft_sums(a.system)
        t = measure_ttft(a.system.chat_url("stream"), a.system.body("stream", stream=True), a.system.key, ttft_n)
        inside = ttft_means_ms(scraped, ttft_sums(a.system))
    finally:
        if a.paused is not None:
            os.killpg(a.paused.pid, signal.SIGCONT)
    answered = max(1, r.requests - r.non2xx)
    log(f"round {rnd} {a.name}: p50 {r.p50_ms} ms p99 {r.p99_ms} ms, {r.rps:.0f} req/s, errors {r.errors}; "
        f"TTFT p50 {t.ttft_p50_ms} ms, errors {t.errors}")
    return {"round": rnd, "name": a.name, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "rps": r.rps,
            "errors": r.errors + t.errors, "failed": r.failed or t.unsupported,
            "ttft_p50_ms": t.ttft_p50_ms, "ttft_p99_ms": t.ttft_p99_ms, "ttft_mean_ms": t.ttft_mean_ms,
            "ttft_inside_mean_ms": inside,
            "cpu_us_per_request": {p: round(n / CLOCK_TICKS * 1e6 / answered, 1) for p, n in used.items()}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.attribution", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="rounds (each measures every arrangement once; default 6)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    ap.add_argument("--ttft", type=int, default=100, help="streamed requests per run for TTFT (default 100)")
    ap.add_argument("--skip-install", action="store_true", help="do not apt-get install nginx-extras or wrk")
    ap.add_argument("--out", help="results JSON path (default bench/results/attribution-<timestamp>.json)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        ap.error("--rounds must be at least 1 and --duration positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    workdir, procs, _ = start_run("switchyard-attribution-")
    tools = install.tools(args.skip_install, need_litellm=False)
    if why := install.unusable(tools):
        log(why)
        return 2
    results: dict = {"started": started.isoformat(), "machine": machine_info(tools), "rounds": args.rounds,
                     "duration_s": args.duration, "ttft_n": args.ttft, "runs": []}
    try:
        upstream = Upstream(tools.nginx, procs, workdir)
        upstream.start()
        upstream.verify()
        direct, all_, duo, path = (cls(procs, upstream, workdir) for cls in (Direct, SwitchyardAll, SwitchyardDuo,
                                                                             RequestPathOnly))
        for system in (direct, all_, duo, path):
            log(f"{system.name}: starting")
            system.start()
            system.wait_ready(180)
            run_wrk(tools.wrk, system.chat_url("fast"), system.body("fast"), system.key, 16, 3.0)  # warm-up
        audit = next(c for c in duo.children if c.name.endswith("-audit"))
        arrangements = {a.name: a for a in (Arrangement("direct", direct), Arrangement("sy-all", all_),
                                            Arrangement("sy-duo", duo), Arrangement("sy-duo audit stopped", duo, audit),
                                            Arrangement("sy-path", path))}
        everything = [pid for s in (direct, all_, duo, path) for pid in s.pids()]
        for rnd, name in schedule(list(arrangements), args.rounds):
            results["runs"].append(measure(arrangements[name], rnd, tools.wrk, args.duration, args.ttft, everything))
    except KeyboardInterrupt as exc:
        log(f"interrupted ({str(exc) or 'Ctrl-C'}): stopping everything")
        results["interrupted"] = True
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
    results["summary"] = summarize(results["runs"])
    table = render(results["summary"])
    print(f"\nWhat audit costs at concurrency 1 ({started:%Y-%m-%d %H:%M} UTC, {args.rounds} rounds of "
          f"{args.duration:g} s, medians; ms)\n{table}")
    return save_results(results, args.out, f"attribution-{started:%Y%m%dT%H%M%SZ}.json")


if __name__ == "__main__":
    sys.exit(main())
