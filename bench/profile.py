"""``python -m bench.profile`` (``make profile``): where a shape spends its CPU under load, per process.

Starts the nginx upstream and one Switchyard shape (``sy-all``, ``make run``'s; ``sy-all-child``; ``sy-split``),
warms it up, then drives it with wrk at one concurrency while ``py-spy record`` samples every Python
process of the shape (by default only the thread holding the GIL: where Python code spends CPU; a thread
waiting in SQLite's fsync would otherwise look busy). Per process it prints CPU per request over the
run (user + system time from /proc, nats-server included, and per thread) and the functions holding the most samples, both
by self time and by inclusive time, and it writes py-spy's collapsed stacks (flame-graph input) and a JSON
summary to ``bench/results/``.

The sampler costs the sampled process little CPU (it reads memory from outside), but the figures of a
profiled run are not benchmark figures: ``make bench`` measures without it.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from bench import RESULTS_DIR, install, save_results
from bench.install import log
from bench.jobs import WORKLOADS, run_workload
from bench.procs import CLOCK_TICKS, cpu_ticks, quiesce, start_run, stat_ticks, tree
from bench.systems import SwitchyardAll, SwitchyardAllChild, SwitchyardSplit, System
from bench.upstream import Upstream

SHAPES = {"sy-all-child": SwitchyardAllChild, "sy-all": SwitchyardAll, "sy-split": SwitchyardSplit}
PY_SPY = Path(sys.executable).with_name("py-spy")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def thread_ticks(pids: dict[int, str]) -> dict[tuple[str, str], int]:
    """(process name, thread name:tid) -> CPU ticks so far (Python does not name its OS threads)."""
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    for pid, pname in pids.items():
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            out[(pname, f"{name}:{task.name}")] += stat_ticks(task / "stat")
    return out


def python_processes(system: System) -> dict[str, int]:
    """Name -> pid of each Python process of the shape: those the bench started and their Python descendants
    (``sy-all-child``'s audit child), named by their ``--target``."""
    out = {c.name: c.pid for c in system.children if c.alive()}
    for pid in tree(system.pids()):
        if pid in out.values() or not comm(pid).startswith("python"):
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        target = args[args.index(b"--target") + 1].decode() if b"--target" in args else str(pid)
        out[f"{system.name}-{target}"] = pid
    return out


def stacks(collapsed: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) per line of py-spy's collapsed output (``frame;frame;... count``), outermost first,
    without py-spy's process and thread pseudo-frames; an empty stack (the loop in C) has no frames."""
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            yield [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))], int(count)


def top_frames(collapsed: Path, n: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top self frames, top inclusive frames); an empty stack counts in the total only."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, c in stacks(collapsed):
        total += c
        if frames:
            own[frames[-1]] += c
            for f in set(frames):
                incl[f] += c
    return total, own.most_common(n), incl.most_common(n)


_FILE = re.compile(r"\(([^:()]+):\d+\)$")


def _module(path: str) -> str:
    """``services/policy/handlers.py`` → ``services/policy``; a library's file → its top package."""
    parts = path.split("/")
    if parts[0] in ("services", "shared") and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0].removesuffix(".py")


def by_module(collapsed: Path) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, where the CPU is spent by the leaf frame's module, and by the component that called it: the
    outermost ``services/<service>`` frame of the stack, else the outermost ``shared/...`` one (the bus's own
    work between messages), else the leaf's library)."""
    leaf: collections.Counter[str] = collections.Counter()
    component: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, c in stacks(collapsed):
        total += c
        files = [m.group(1) for f in frames if (m := _FILE.search(f))]
        if not files:
            leaf["(no Python frame: the loop in C)"] += c
            component["(no Python frame: the loop in C)"] += c
            continue
        leaf[_module(files[-1])] += c
        ours = next((_module(f) for f in files if f.startswith("services/") and f.count("/") >= 2), None) or next(
            (_module(f) for f in files if f.startswith("shared/")), None)
        component[ours or _module(files[-1])] += c
    return total, leaf.most_common(), component.most_common()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="sy-all")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load while sampling")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--mode", default="fast", help="upstream mode (fast: immediate answer)")
    ap.add_argument("--workload", choices=WORKLOADS, default="chat",
                    help="synchronous completions, or job submissions (POST /v1/jobs, counted by their 202s)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a setting of the shape")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--all-threads", action="store_true",
                    help="sample every running thread (default: only the thread holding the GIL, i.e. Python CPU)")
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--out", help="output prefix (default bench/results/profile-<shape>-<timestamp>)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not PY_SPY.exists():
        log(f"{PY_SPY} is missing: make install puts py-spy in the virtualenv")
        return 2
    started = dt.datetime.now(dt.timezone.utc)
    prefix = Path(args.out) if args.out else RESULTS_DIR / f"profile-{args.shape}-{started:%Y%m%dT%H%M%SZ}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    workdir, procs, _ = start_run("switchyard-profile-")
    tools = install.tools(args.skip_install, need_litellm=False, need_portkey=False)
    if why := install.unusable(tools):
        log(why)
        return 2
    summary: dict = {"started": started.isoformat(), "shape": args.shape, "concurrency": args.concurrency,
                     "duration_s": args.duration, "rate": args.rate, "processes": {}}
    try:
        upstream = Upstream(tools.nginx, procs, workdir)
        upstream.start()
        upstream.verify()
        system = SHAPES[args.shape](procs, upstream, workdir, extra_env=dict(kv.split("=", 1) for kv in args.env))
        log(f"{system.name}: starting")
        system.start()
        system.wait_ready(180)
        run_workload(tools.wrk, system, args.workload, args.concurrency, 5.0, args.mode)  # warm-up
        quiesce(system.pids())
        pys = python_processes(system)
        spies = {}
        for name, pid in pys.items():
            out = Path(f"{prefix}-{name}.collapsed")
            spies[name] = (out, subprocess.Popen(
                [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(args.rate), "--format", "raw",
                 "--output", str(out), "--duration", str(int(args.duration) + 2), "--nonblocking",
                 *([] if args.all_threads else ["--gil"])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(1.0)  # let every sampler attach before the load starts
        named = {pid: name for name, pid in pys.items()}
        pids = {pid: named.get(pid, comm(pid)) for pid in tree(system.pids())}
        before, threads_before = {pid: cpu_ticks([pid]) for pid in pids}, thread_ticks(pids)
        res, _, _ = run_workload(tools.wrk, system, args.workload, args.concurrency, args.duration, args.mode)
        after, threads_after = {pid: cpu_ticks([pid]) for pid in pids}, thread_ticks(pids)
        requests = max(1, res.requests)
        for _, spy in spies.values():
            spy.wait(timeout=60)
        summary["wrk"] = res.public()
        cpu = collections.Counter()
        for pid, name in pids.items():
            cpu[name] += after[pid] - before[pid]
        summary["cpu_us_per_request"] = {n: round(t / CLOCK_TICKS / requests * 1e6) for n, t in cpu.items() if t}
        print(f"\n{system.name} at concurrency {args.concurrency} for {args.duration:g} s: {res.requests} requests "
              f"({res.rps:.0f}/s), p50 {res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms, errors {res.errors}")
        print("CPU per request (us): " + ", ".join(f"{n} {v}" for n, v in sorted(summary["cpu_us_per_request"].items())))
        per_thread = {f"{p}/{t}": round((threads_after[(p, t)] - threads_before.get((p, t), 0)) / CLOCK_TICKS
                                        / requests * 1e6) for p, t in threads_after}
        summary["thread_cpu_us_per_request"] = {k: v for k, v in per_thread.items() if v}
        print("by thread (us): " + ", ".join(f"{k} {v}" for k, v in sorted(summary["thread_cpu_us_per_request"].items(),
                                                                          key=lambda kv: -kv[1])))
        for name, (out, spy) in spies.items():
            if not out.exists():
                err = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
                print(f"\n{name}: py-spy wrote nothing ({err.strip()[:300]})")
                continue
            total, own, incl = top_frames(out, args.top)
            summary["processes"][name] = {"samples": total, "self": own, "inclusive": incl}
            print(f"\n== {name}: {total} samples; top by self time")
            for frame, c in own:
                print(f"  {100 * c / max(1, total):5.1f}%  {frame}")
            print(f"== {name}: top by inclusive time")
            for frame, c in incl:
                print(f"  {100 * c / max(1, total):5.1f}%  {frame}")
            _, leaves, components = by_module(out)
            summary["processes"][name].update({"leaf_modules": leaves, "components": components})
            print(f"== {name}: by the leaf frame's module")
            print("  " + ", ".join(f"{m} {100 * c / max(1, total):.1f}%" for m, c in leaves[:16]))
            print(f"== {name}: by the component on the stack (outermost services/<service> frame, else shared/*)")
            print("  " + ", ".join(f"{m} {100 * c / max(1, total):.1f}%" for m, c in components[:16]))
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ncollapsed stacks: {prefix}-*.collapsed")
    return save_results(summary, f"{prefix}.json", "")


if __name__ == "__main__":
    sys.exit(main())
