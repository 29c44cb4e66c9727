"""``python -m bench [--quick] [--systems ...]``: run the benchmark, print the table, write the JSON.

The run, in order: install missing tools; start the nginx upstream and check
each mode; then for each system in turn: start it, wait until a real
completion succeeds, warm it up, and measure (idle memory, self-reported
overhead, concurrency sweep with memory sampling, the 50 ms upstream,
streaming TTFT, response-cache hits, async jobs, 5,000 concurrent requests
against the 1 s upstream), then stop it before the next system starts, so systems never
compete for the two cores. Every process started is stopped on exit,
Ctrl-C, SIGTERM or error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench import RESULTS_DIR, install
from bench.burst import run_burst
from bench.install import log, machine_info
from bench.jobs import measure_jobs, median_jobs
from bench.load import run_wrk
from bench.procs import CLOCK_TICKS, MemorySampler, Procs, cpu_busy, cpu_ticks, memory, quiesce, start_run, tree
from bench.report import refine_between, render_table, render_targets, targets
from bench.stream import measure_ttft
from bench.systems import (KEY, SY_SPLIT_TARGETS, Direct, LiteLLM, Portkey, Switchyard, SwitchyardAll,
                           SwitchyardDuo, SwitchyardAllChild, SwitchyardSplit, SwitchyardTrio, System)
from bench.upstream import Upstream

ALL_SYSTEMS = ("direct", "sy-all", "sy-duo", "sy-trio", "sy-split", "portkey", "litellm-1", "litellm-2")
QUICK_SYSTEMS = ("direct", "sy-all", "portkey", "litellm-1")
EXTRA_SYSTEMS = ("sy-all-child",)  # measured only when named in --systems
BUSY_WARN = 0.15  # background CPU share above which the table warns


@dataclass
class Profile:
    """How long and how hard each measurement runs."""

    name: str
    run_s: float = 6.0          # each sweep point
    c1_s: float = 10.0          # the concurrency-1 point (added latency)
    warmup_s: float = 3.0
    sweep: tuple[int, ...] = (1, 16, 64, 256)
    search_steps: int = 2       # points measured between the best passing sweep point and the next failing one
    d50: bool = True            # the 50 ms upstream at c=1 and c=256
    overhead_n: int = 200       # sequential requests reading x-switchyard-overhead-ms
    ttft_n: int = 100
    jobs_s: float = 5.0
    jobs_c: int = 64
    jobs_rounds: int = 3        # job intake measured this many times (each after the last one drained): the median
    drain_timeout_s: float = 120.0
    burst: int = 5000           # concurrent requests at once against the 1 s upstream
    burst_timeout_s: float = 60.0  # a request against a 1 s upstream not answered in 60 s counts as failed
    settle_s: float = 1.0
    cache: bool = True          # response-cache hits at c=1 and at cache_c (Switchyard only)
    cache_c: int = 64
    ready_timeout_s: float = 180.0
    systems: tuple[str, ...] = ALL_SYSTEMS


FULL = Profile("full")
QUICK = Profile("quick", run_s=3.0, c1_s=3.0, warmup_s=2.0, sweep=(1, 64), search_steps=1, d50=False, overhead_n=50,
                ttft_n=20, jobs_s=3.0, jobs_rounds=1, drain_timeout_s=45.0, burst=1000, burst_timeout_s=30.0, settle_s=0.5,
                systems=QUICK_SYSTEMS)


# ---- one system -------------------------------------------------------------------------------

def overhead_samples(system: System, n: int) -> dict | None:
    """The gateway's own x-switchyard-overhead-ms over n sequential requests (Switchyard only)."""
    vals = []
    with httpx.Client(timeout=10, headers={"authorization": f"Bearer {KEY}"}) as c:
        for _ in range(n):
            r = c.post(system.chat_url("fast"), json=system.body("fast"))
            h = r.headers.get("x-switchyard-overhead-ms")
            if r.status_code == 200 and h is not None:
                vals.append(float(h))
    if not vals:
        return None
    vals.sort()
    return {"n": len(vals), "p50_ms": vals[len(vals) // 2], "p99_ms": vals[min(len(vals) - 1, int(len(vals) * 0.99))],
            "mean_ms": statistics.fmean(vals)}


def warm_up(system: System, wrk: str, p: Profile) -> None:
    run_wrk(wrk, system.chat_url("fast"), system.body("fast"), system.key, 16, p.warmup_s, headers=system.headers("fast"))
    with httpx.Client(timeout=15, headers={"authorization": f"Bearer {KEY}"}) as c:
        for mode in ("d50", "d1000"):
            c.post(system.chat_url(mode), json=system.body(mode), headers=system.headers(mode))


def measure(system: System, wrk: str, p: Profile, res: dict) -> None:
    """Every measurement of one running system; each step records its own failure and the run goes on."""

    def step(name: str, fn) -> None:
        if not system.alive():
            res.setdefault("skipped", []).append(name)
            return
        # Each figure starts from an idle system: what the previous step left (audit backlog, queued jobs)
        # is drained first, and how long that took is kept with the results.
        res.setdefault("quiesce_s", {})[name] = quiesce(system.pids())
        log(f"{system.name}: {name}")
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one failed step must not lose the rest
            res.setdefault("step_errors", {})[name] = f"{type(exc).__name__}: {exc}"
            log(f"{system.name}: {name} failed: {exc!r}")
        time.sleep(p.settle_s)

    def idle() -> None:
        time.sleep(1.0)
        res["rss_idle"] = asdict(memory(system.pids()))
        res["processes"] = system.process_count()

    def overhead() -> None:
        if isinstance(system, Switchyard):
            res["overhead"] = overhead_samples(system, p.overhead_n)

    def sweep() -> None:
        res["sweep"] = {}

        def point(into: str, c: int, duration_s: float) -> None:
            ticks = cpu_ticks(tree(system.pids()))
            r = run_wrk(wrk, system.chat_url("fast"), system.body("fast"), system.key, c, duration_s,
                        headers=system.headers("fast"))
            point_res = r.public()
            # CPU of the system's whole process tree (nats-server included) over the run, per answered request.
            used_s = (cpu_ticks(tree(system.pids())) - ticks) / CLOCK_TICKS
            point_res["cpu_s"] = round(used_s, 3)
            point_res["cpu_ms_per_request"] = round(1000 * used_s / r.requests, 3) if r.requests else None
            res.setdefault(into, {})[str(c)] = point_res
            log(f"{system.name}: {'search ' if into == 'search' else ''}c={c}: {r.rps:.0f} req/s p50 {r.p50_ms} ms "
                f"p99 {r.p99_ms} ms errors {r.errors}{' ' + r.failed if r.failed else ''}")
            time.sleep(p.settle_s)
            quiesce(system.pids())

        with MemorySampler(system.pids()) as mem:
            for c in p.sweep:
                point("sweep", c, p.c1_s if c == 1 else p.run_s)
            # The best throughput under the p99 bar can lie between two sweep points: measure between them.
            for _ in range(p.search_steps):
                c = refine_between({**res["sweep"], **res.get("search", {})})
                if c is None:
                    break
                point("search", c, p.run_s)
        res["rss_load"] = asdict(mem.peak)

    def d50() -> None:
        h = system.headers("d50")
        res["d50_c1"] = run_wrk(wrk, system.chat_url("d50"), system.body("d50"), system.key, 1, p.run_s,
                                headers=h).public()
        time.sleep(p.settle_s)
        r = run_wrk(wrk, system.chat_url("d50"), system.body("d50"), system.key, 256, p.run_s, headers=h)
        res["d50_c256"] = r.public()
        log(f"{system.name}: 50 ms upstream c=256: {r.rps:.0f} req/s p99 {r.p99_ms} ms errors {r.errors}")

    def ttft() -> None:
        r = measure_ttft(system.chat_url("stream"), system.body("stream", stream=True), system.key, p.ttft_n,
                         headers=system.headers("stream"))
        res["ttft"] = r.public()
        log(f"{system.name}: TTFT p50 {r.ttft_p50_ms} ms"
            + (f" (streaming unsupported: {r.unsupported[:80]})" if r.unsupported else ""))

    def cache_hits() -> None:
        # Every request the same deterministic one, asking for the response cache: after the first, all are hits.
        if isinstance(system, Switchyard):
            body, headers = {**system.body("fast"), "temperature": 0}, {"x-switchyard-cache": "use"}
            with httpx.Client(timeout=10, headers={"authorization": f"Bearer {KEY}", **headers}) as c:
                first = c.post(system.chat_url("fast"), json=body)
                first.raise_for_status()
                hit = c.post(system.chat_url("fast"), json=body)
                if hit.headers.get("x-switchyard-cache") != "hit":
                    raise RuntimeError(f"the repeat was not a cache hit: {hit.headers.get('x-switchyard-cache')}")
            for c_, into, secs in ((1, "cache_hits_c1", p.c1_s), (p.cache_c, "cache_hits_load", p.run_s)):
                r = run_wrk(wrk, system.chat_url("fast"), body, system.key, c_, secs, headers=headers)
                res[into] = r.public()
                log(f"{system.name}: cache hits c={c_}: {r.rps:.0f} req/s p50 {r.p50_ms} ms p99 {r.p99_ms} ms "
                    f"errors {r.errors}")

    def jobs() -> None:
        if system.has_jobs:
            # One 5 s intake varies by a factor of two between runs of one build on a small VM: the median of a few.
            runs = []
            for _ in range(p.jobs_rounds):
                if runs:  # the step itself starts idle; each later round once the jobs before have drained
                    quiesce(system.pids())
                r = measure_jobs(wrk, system.jobs_url(), system.body("fast"), KEY, p.jobs_c, p.jobs_s,
                                 p.drain_timeout_s)
                log(f"{system.name}: jobs ingest {r.ingest_rps} /s, drain {r.drain_rps} /s ({r.sample_status})")
                runs.append(r)
            res["jobs"] = median_jobs(runs)

    def burst() -> None:
        with MemorySampler(system.pids(), interval_s=0.25) as mem:
            r = run_burst(system.chat_url("d1000"), system.body("d1000"), system.key, p.burst, p.burst_timeout_s,
                          headers=system.headers("d1000"))
        r.rss_peak = asdict(mem.peak)
        res["burst"] = r.public()
        log(f"{system.name}: {p.burst} concurrent @1 s: {r.ok} ok, {r.errors} errors {r.error_kinds or ''}, "
            f"all done in {r.wall_s} s, peak RSS {mem.peak.rss_mb:.0f} MB")

    step("idle memory", idle)
    step("overhead header", overhead)
    step("sweep", sweep)
    if p.d50:
        step("50 ms upstream", d50)
    step("streaming TTFT", ttft)
    if p.cache:
        step("cache hits", cache_hits)
    step("async jobs", jobs)
    if p.burst:
        step(f"{p.burst} concurrent", burst)
    if not system.alive():
        res["died"] = "a process of the system exited during the run"


def bench_system(system: System, wrk: str, p: Profile, res: dict) -> dict:
    """Start, measure and stop one system, filling ``res`` as it goes (so an interrupt keeps what was measured)."""
    res["name"] = system.name
    # Other work on the machine (another test suite, a build) skews every figure: record it, warn in the table.
    res["background_cpu"] = round(cpu_busy(1.0), 3)
    if res["background_cpu"] > BUSY_WARN:
        log(f"{system.name}: warning: the machine is {res['background_cpu']:.0%} busy before the run; "
            f"figures will be noisy")
    t0 = time.monotonic()
    try:
        log(f"{system.name}: starting")
        system.start()
        system.wait_ready(p.ready_timeout_s)
        res["startup_s"] = round(time.monotonic() - t0, 2)
        log(f"{system.name}: ready in {res['startup_s']} s; warming up")
        warm_up(system, wrk, p)
        time.sleep(p.settle_s)
        measure(system, wrk, p, res)
    except Exception as exc:  # noqa: BLE001 - report and go on with the next system
        res["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{system.name}: FAILED: {exc}")
    finally:
        if res.get("error") or res.get("died") or res.get("step_errors"):
            res["log_tail"] = {c.name: c.log_tail(25) for c in system.children}
        system.stop()
    return res


# ---- the run ----------------------------------------------------------------------------------

def make_systems(names: list[str], procs: Procs, upstream: Upstream, workdir: Path, tools: install.Tools,
                 split_targets: tuple[str, ...]) -> tuple[list[System], dict[str, str]]:
    systems: list[System] = []
    skipped: dict[str, str] = {}
    for n in names:
        if n == "direct":
            systems.append(Direct(procs, upstream, workdir))
        elif n == "sy-all-child":  # on request (--systems): --audit-process
            systems.append(SwitchyardAllChild(procs, upstream, workdir))
        elif n == "sy-all":
            systems.append(SwitchyardAll(procs, upstream, workdir))
        elif n == "sy-duo":
            systems.append(SwitchyardDuo(procs, upstream, workdir))
        elif n == "sy-trio":
            systems.append(SwitchyardTrio(procs, upstream, workdir))
        elif n == "sy-split":
            systems.append(SwitchyardSplit(procs, upstream, workdir, targets=split_targets))
        elif n == "portkey":
            if tools.portkey is None:
                skipped[n] = tools.problems.get("portkey", "the Portkey gateway is not installed")
                continue
            systems.append(Portkey(procs, upstream, workdir, node=tools.node, script=tools.portkey))
        elif n.startswith("litellm-"):
            if tools.litellm is None:
                skipped[n] = tools.problems.get("litellm", "litellm not installed")
                continue
            systems.append(LiteLLM(procs, upstream, workdir, litellm=tools.litellm, workers=int(n.split("-")[1])))
    return systems, skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"~2 minute subset: {', '.join(QUICK_SYSTEMS)}; sweep 1 and 64; shorter runs")
    ap.add_argument("--systems", help=f"comma list from {', '.join(ALL_SYSTEMS + EXTRA_SYSTEMS)} (default: all but {EXTRA_SYSTEMS[0]}; --quick: "
                                      f"{', '.join(QUICK_SYSTEMS)}); 'direct' is always added")
    ap.add_argument("--duration", type=float, help="seconds per wrk run (sweep points)")
    ap.add_argument("--sweep", help="comma list of concurrencies, e.g. 1,16,64,256")
    ap.add_argument("--burst", type=int, help="concurrent requests against the 1 s upstream (default 5000; "
                                              "--quick: 1000; 0 skips)")
    ap.add_argument("--split-targets", default=",".join(SY_SPLIT_TARGETS),
                    help="processes of sy-split (one --target each)")
    ap.add_argument("--skip-install", action="store_true", help="do not apt-get/pip install anything")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, data) after the run")
    ap.add_argument("--out", help="results JSON path (default bench/results/<timestamp>.json)")
    return ap.parse_args(argv)


def profile_from(args: argparse.Namespace) -> Profile:
    p = QUICK if args.quick else FULL
    p = Profile(**asdict(p))
    if args.systems:
        wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in ALL_SYSTEMS + EXTRA_SYSTEMS]
        if unknown:
            raise SystemExit(f"unknown system(s) {unknown}; known: {', '.join(ALL_SYSTEMS + EXTRA_SYSTEMS)}")
        p.systems = tuple(["direct"] + [s for s in wanted if s != "direct"])
    if args.duration:
        p.run_s = args.duration
        p.c1_s = max(args.duration, p.c1_s if not args.quick else args.duration)
    if args.sweep:
        p.sweep = tuple(int(c) for c in args.sweep.split(","))
    if args.burst is not None:
        p.burst = args.burst
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = profile_from(args)
    started = dt.datetime.now(dt.timezone.utc)
    workdir, procs, nofile = start_run("switchyard-bench-")
    results: dict = {"started": started.isoformat(), "profile": asdict(p), "systems": {}, "skipped": {}}
    interrupted = False
    try:
        tools = install.tools(args.skip_install, need_litellm=any(s.startswith("litellm") for s in p.systems),
                              need_portkey="portkey" in p.systems)
        if why := install.unusable(tools):
            log(why)
            return 2
        results["machine"] = machine_info(tools)
        results["machine"]["open_files_limit"] = nofile
        results["install_problems"] = tools.problems
        log(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
            f"profile {p.name}; systems {', '.join(p.systems)}")
        upstream = Upstream(tools.nginx, procs, workdir)
        upstream.start()
        results["upstream"] = {"server": results["machine"]["nginx"], "port": upstream.port,
                               "verify_s": upstream.verify(), "modes": {"fast": 0, "d50": 0.05, "d1000": 1.0}}
        systems, skipped = make_systems(list(p.systems), procs, upstream, workdir, tools,
                                        tuple(t for t in args.split_targets.split(",") if t))
        results["skipped"] = skipped
        for name, why in skipped.items():
            log(f"{name}: skipped: {why}")
        for system in systems:
            res = results["systems"][system.name] = {}
            if system.name == "direct":
                res["note"] = "nginx upstream (1 worker process)"
            bench_system(system, tools.wrk, p, res)
    except KeyboardInterrupt as exc:
        interrupted = True
        log(f"interrupted ({str(exc) or 'Ctrl-C'}): stopping everything")
    except Exception:  # noqa: BLE001
        log("error:\n" + traceback.format_exc())
        results["error"] = traceback.format_exc()
    finally:
        procs.stop_all()
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
    results["interrupted"] = interrupted
    if results["systems"]:
        table = render_table(results)
        tg = render_targets(results)
        results["targets"] = targets(results)
        results["table"] = table
        print()
        print(f"Switchyard bench ({p.name}) {started:%Y-%m-%d %H:%M} UTC  -  "
              f"{results.get('machine', {}).get('cpu', '?')}, {results.get('machine', {}).get('cores', '?')} cores")
        print(table)
        print()
        print(tg)
        for name, why in results.get("skipped", {}).items():
            print(f"  {name}: skipped: {why}")
        for name, s in results["systems"].items():
            if s.get("error"):
                print(f"  {name}: FAILED: {s['error'].splitlines()[0]}")
            for step, err in s.get("step_errors", {}).items():
                print(f"  {name}: {step} failed: {err.splitlines()[0]}")
        out = Path(args.out) if args.out else RESULTS_DIR / f"{started:%Y%m%dT%H%M%SZ}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        if any(s.get("log_tail") for s in results["systems"].values()) and (workdir / "logs").exists():
            logs = out.with_name(out.stem + "-logs")
            shutil.copytree(workdir / "logs", logs, dirs_exist_ok=True)
            print(f"logs of the failed systems: {logs}")
        out.write_text(json.dumps(results, indent=1, default=str))
        print(f"\nraw results: {out}")
    if args.keep:
        log(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 130 if interrupted else (1 if results.get("error") else 0)


if __name__ == "__main__":
    sys.exit(main())
