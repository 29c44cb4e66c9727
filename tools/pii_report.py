"""Precision and recall of the PII detector per entity type and per written form, and its cost per prompt.

Runs the detector over the generated labelled corpus (``tests/fixtures/pii_corpus.py``) and prints:
per kind precision / recall / full-coverage; recall per (kind, form), known misses marked; the hard
negatives that produced a false positive; recall on the known gaps (spaced, spelled-out and base64 values,
split card numbers, bare SSNs); then the wall-clock time per ~1 KB prompt (p50 / p99) of
``find_pii``, ``scan_request``, ``redact_request`` and ``risk.assess`` on typical prompts (prose with one
or two PII values) and on dense ones (corpus samples back to back: several PII values and hard
negatives per KB). Figures depend on the machine and its load, which the header states.

    python tools/pii_report.py [--samples 3000] [--seed 1234] [--runs 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.policy import pii, risk  # noqa: E402
from shared.canonical import ChatRequest, Message  # noqa: E402
from tests.fixtures import pii_corpus  # noqa: E402


def _quantiles_us(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    return ordered[len(ordered) // 2] / 1000, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1000


def _time(fn, inputs: list, runs: int) -> tuple[float, float, float, float]:
    """Per-call wall-clock and CPU time (p50, p99 of each) over ``runs`` passes of every input, after a warm-up.

    The garbage collector stays on, but what exists before timing (the corpus, the inputs) is frozen out of
    it, so its pauses reflect the scanner's own garbage rather than the size of this script's heap. CPU time
    (this thread's) leaves out time the process spent descheduled, which wall time on a busy machine includes.
    """
    for x in inputs:
        fn(x)
    gc.collect()
    gc.freeze()
    wall, cpu = [], []
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    for _ in range(runs):
        for x in inputs:
            t0, c0 = clock(), cpu_clock()
            fn(x)
            c1, t1 = cpu_clock(), clock()
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
    gc.unfreeze()
    return (*_quantiles_us(wall), *_quantiles_us(cpu))


def report(n: int, seed: int, runs: int) -> str:
    samples = pii_corpus.generate(n, seed)
    score = pii_corpus.score(samples, pii.find_pii)
    labels = sum(len(s.labels) for s in samples)
    negatives = sum(len(s.negatives) for s in samples)
    lines = [f"corpus: {len(samples)} samples (seed {seed}), {labels} labelled entities, {negatives} hard negatives",
             "", f"{'kind':<8}{'TP':>6}{'FP':>5}{'FN':>5}{'precision':>11}{'recall':>8}{'full span':>11}"]
    for kind, k in score.kinds.items():
        lines.append(f"{kind:<8}{k.tp:>6}{k.fp:>5}{k.fn:>5}{k.precision:>11.3f}{k.recall:>8.3f}"
                     f"{(k.full / k.tp if k.tp else 1):>11.3f}")
    tp = sum(k.tp for k in score.kinds.values())
    fp = sum(k.fp for k in score.kinds.values())
    fn = sum(k.fn for k in score.kinds.values())
    lines.append(f"{'all':<8}{tp:>6}{fp:>5}{fn:>5}{tp / (tp + fp):>11.3f}{tp / (tp + fn):>8.3f}")
    lines += ["", "recall per form (* = known miss, kept in the corpus on purpose):"]
    for (kind, form), (found, total) in score.forms.items():
        mark = " *" if (kind, form) in pii_corpus.KNOWN_MISSES else ""
        lines.append(f"  {kind:<7}{form:<24}{found:>4}/{total:<4}{found / total if total else 1:>7.3f}{mark}")
    hit = {f: v for f, v in score.negative_hits.items() if v[0]}
    lines += ["", f"hard negatives: {len(score.negative_hits)} forms; with a false positive: "
              + (", ".join(f"{f} {a}/{b}" for f, (a, b) in hit.items()) if hit else "none")]
    lines += ["", "known gaps, measured apart from the corpus (200 samples each; docs/security.md):"]
    for (kind, form), (found, total) in pii_corpus.gap_recall(pii.find_pii, seed=seed).items():
        lines.append(f"  {kind:<7}{form:<24}{found:>4}/{total:<4}{found / total:>7.3f}")

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines += ["", f"timing (wall clock, {runs} runs of every prompt, GC on; Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, load average {load}):"]
    for label, prompts in (("typical", pii_corpus.typical_prompts(300, seed)),
                           ("dense", pii_corpus.prompts(samples, 1024))):
        requests = [ChatRequest(model="m", messages=[Message(role="system", content="You are a helpful assistant."),
                                                     Message(role="user", content=p)]) for p in prompts]
        size = statistics.fmean(len(p) for p in prompts)
        lines += [f"  {label} prompts: {len(prompts)}, {size:.0f} characters on average",
                  f"  {'µs per prompt':<16}{'wall p50':>10}{'wall p99':>10}{'cpu p50':>10}{'cpu p99':>10}"]
        for name, fn, inputs in (("find_pii", pii.find_pii, prompts), ("scan_request", pii.scan_request, requests),
                                 ("redact_request", pii.redact_request, requests),
                                 ("risk.assess", risk.assess, requests)):
            figures = _time(fn, inputs, runs)
            lines.append(f"  {name:<16}" + "".join(f"{x:>10.1f}" for x in figures))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    print(report(args.samples, args.seed, args.runs))


if __name__ == "__main__":
    main()
