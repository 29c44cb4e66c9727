"""``python -m bench.paired --old PATH``: old code against new code, side by side, in ABBA rounds.

The VM this project is measured on changes speed from hour to hour, so a change of a few percent cannot be
read from two runs at different times. Here both trees run at once against one nginx upstream (``--old``: a
checkout with its own ``.venv``, e.g. ``git worktree add /tmp/old <commit> && make -C /tmp/old install``;
``--new``: this checkout by default; or one tree twice with ``--env-old``/``--env-new`` to measure a
setting on against off), and each concurrency is measured in rounds that alternate the order
(old, new, new, old, ...), waiting before every run until both are idle. Per concurrency and tree: medians
of requests/s, wrk's p50 and p99, and CPU per request of the whole process tree (nats-server included);
and per round, the new tree's change against the old one's in the same round, with how many rounds it won.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
from pathlib import Path

from bench import install, save_results
from bench.attribution import schedule
from bench.install import log
from bench.jobs import WORKLOADS, run_workload
from bench.load import run_wrk
from bench.procs import CLOCK_TICKS, cpu_ticks, quiesce, start_run, tree
from bench.systems import REPO, SwitchyardAll, SwitchyardAllChild, SwitchyardDuo, SwitchyardSplit, Switchyard
from bench.upstream import Upstream

SHAPES = {"sy-all-child": SwitchyardAllChild, "sy-all": SwitchyardAll, "sy-duo": SwitchyardDuo, "sy-split": SwitchyardSplit}
FIGURES = ("rps", "p50_ms", "p99_ms", "cpu_us")


def measure(system: Switchyard, wrk: str, c: int, duration_s: float, everything: list[int],
            workload: str = "chat") -> dict:
    """One run of ``workload``: ``chat`` (synchronous completions) or ``jobs`` (``POST /v1/jobs``; req/s counts
    the 202s, and the next run waits, in ``quiesce``, until the accepted jobs have drained)."""
    quiesce(everything)
    pids = tree(system.pids())
    before = cpu_ticks(pids)
    res, rps, errors = run_workload(wrk, system, workload, c, duration_s)
    used = cpu_ticks(pids) - before
    return {"rps": rps, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms, "errors": errors,
            "cpu_us": round(used / CLOCK_TICKS / max(1, res.requests) * 1e6)}


def summarize(runs: list[dict]) -> list[dict]:
    """Per concurrency: each tree's medians, and the paired change (new against old in the same round)."""
    out = []
    for c in sorted({r["c"] for r in runs}):
        at = [r for r in runs if r["c"] == c]
        row: dict = {"c": c}
        for tree_name in ("old", "new"):
            mine = [r for r in at if r["tree"] == tree_name]
            row[tree_name] = {f: statistics.median(r[f] for r in mine if r[f] is not None) for f in FIGURES}
            row[tree_name]["errors"] = sum(r["errors"] for r in mine)
        changes: dict[str, list[float]] = {f: [] for f in FIGURES}
        for rnd in sorted({r["round"] for r in at}):
            pair = {r["tree"]: r for r in at if r["round"] == rnd}
            if len(pair) == 2:
                for f in FIGURES:
                    old, new = pair["old"][f], pair["new"][f]
                    if old and new is not None:
                        changes[f].append((new - old) / old * 100)
        row["change_pct"] = {f: round(statistics.median(v), 1) for f, v in changes.items() if v}
        better = {"rps": lambda x: x > 0, "p50_ms": lambda x: x < 0, "p99_ms": lambda x: x < 0, "cpu_us": lambda x: x < 0}
        row["new_better_rounds"] = {f: f"{sum(better[f](x) for x in v)}/{len(v)}" for f, v in changes.items() if v}
        out.append(row)
    return out


def render(summary: list[dict]) -> str:
    lines = [f"{'c':>4} {'tree':<4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'errors':>6}"]
    for row in summary:
        for t in ("old", "new"):
            v = row[t]
            lines.append(f"{row['c']:>4} {t:<4} {v['rps']:>8.0f} {v['p50_ms']:>8.2f} {v['p99_ms']:>8.2f} "
                         f"{v['cpu_us']:>11.0f} {v['errors']:>6}")
        ch, won = row["change_pct"], row["new_better_rounds"]
        lines.append(f"{row['c']:>4} new vs old, median of paired rounds: " + ", ".join(
            f"{f} {ch[f]:+.1f}% (better in {won[f]})" for f in FIGURES if f in ch))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default=str(REPO), help="the old checkout (with its .venv; default: this one)")
    ap.add_argument("--new", default=str(REPO), help="the new checkout (default: this one)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="sy-all")
    ap.add_argument("--old-shape", choices=sorted(SHAPES), help="old's shape when it differs (one shape against another)")
    ap.add_argument("--workload", choices=WORKLOADS, default="chat",
                    help="synchronous completions, or job submissions (ingest: 202s per second)")
    ap.add_argument("--concurrency", default="1,64", help="comma list")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--env-old", action="append", default=[], metavar="NAME=VALUE", help="a setting of old only")
    ap.add_argument("--env-new", action="append", default=[], metavar="NAME=VALUE", help="a setting of new only")
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--out")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    workdir, procs, _ = start_run("switchyard-paired-")
    tools = install.tools(args.skip_install, need_litellm=False, need_portkey=False)
    if why := install.unusable(tools):
        log(why)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: dict = {"started": started.isoformat(), "shape": args.shape, "workload": args.workload, "old_shape": args.old_shape or args.shape, "old": args.old, "new": args.new,
                     "env_old": args.env_old, "env_new": args.env_new,
                     "rounds": args.rounds, "duration_s": args.duration, "runs": []}
    try:
        upstream = Upstream(tools.nginx, procs, workdir)
        upstream.start()
        upstream.verify()
        shapes = {"old": args.old_shape or args.shape, "new": args.shape}
        systems = {t: SHAPES[shapes[t]](procs, upstream, workdir, repo=Path(getattr(args, t)).resolve(),
                                         name=f"{shapes[t]}-{t}",
                                         extra_env=dict(kv.split("=", 1) for kv in getattr(args, f"env_{t}")))
                   for t in ("old", "new")}
        for s in systems.values():
            log(f"{s.name}: starting ({s.repo})")
            s.start()
            s.wait_ready(180)
            run_wrk(tools.wrk, s.chat_url("fast"), s.body("fast"), s.key, 16, 3.0)  # warm-up
        everything = [pid for s in systems.values() for pid in s.pids()]
        for c in concurrencies:
            for rnd, t in schedule(["old", "new"], args.rounds):
                r = measure(systems[t], tools.wrk, c, args.duration, everything, args.workload)
                results["runs"].append({"c": c, "round": rnd, "tree": t, **r})
                log(f"c={c} round {rnd} {t}: {r}")
    except KeyboardInterrupt:
        results["interrupted"] = True
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    results["summary"] = summarize(results["runs"])
    settings = "".join(f" {t} {' '.join(getattr(args, f'env_{t}'))}" for t in ("old", "new") if getattr(args, f"env_{t}"))
    print(f"\nOld {args.old} against new {args.new}{settings}, {(args.old_shape + ' against ') if args.old_shape else ''}{args.shape}, {args.rounds} ABBA rounds of {args.duration:g} s "
          f"({started:%Y-%m-%d %H:%M} UTC); medians\n{render(results['summary'])}")
    return save_results(results, args.out, f"paired-{args.shape}-{started:%Y%m%dT%H%M%SZ}.json")


if __name__ == "__main__":
    sys.exit(main())
