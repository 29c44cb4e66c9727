"""Async jobs: ingest rate (``POST /v1/jobs`` answered 202 per second) and drain rate.

Ingest: wrk POSTs jobs for a fixed time at fixed concurrency; its Lua
``response`` hook counts the 202s and keeps every accepted job id. A 202
means the job's ``CompletionRequested`` is already durable in JetStream
(the gateway answers only after the PubAck).

Drain: from the start of ingest until every job in a sample has reached a
terminal status. The sample is the last 50 accepted ids (the queue drains
roughly in order, so these finish last) plus up to 150 random others
(seeded), polled with ``GET /v1/jobs/{id}``; each round asks only about jobs
not yet finished, 0.1 s apart, so polling adds little load. Drain rate =
accepted jobs / (time the last sampled job was seen finished − ingest start).
Polling the API is used rather than a Prometheus counter because it works
the same for both Switchyard shapes (the split shape's audit process serves
no /metrics) and checks the jobs really end as ``completed``.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

import httpx

from bench.load import WrkResult, run_wrk

TERMINAL = {"completed", "failed", "cancelled", "expired"}


@dataclass
class JobsResult:
    """Ingest and drain figures."""

    concurrency: int = 0
    ingest_s: float = 0.0
    accepted: int = 0
    ingest_errors: int = 0
    ingest_rps: float | None = None
    ingest_p50_ms: float | None = None
    ingest_p99_ms: float | None = None
    sample: int = 0
    sample_status: dict[str, int] = field(default_factory=dict)
    drained: bool = False
    drain_s: float | None = None  # ingest start → last sampled job terminal
    drain_after_ingest_s: float | None = None
    drain_rps: float | None = None
    failed: str | None = None

    def public(self) -> dict:
        return asdict(self)


WORKLOADS = ("chat", "jobs")


def intake_errors(w: WrkResult) -> int:
    """Failed submissions of a run that expected 202s: socket errors, non-2xx, and any 2xx other than 202."""
    return w.errors + (w.requests - w.non2xx - w.accepted)


def run_workload(wrk: str, system, workload: str, concurrency: int, duration_s: float,
                 mode: str = "fast") -> tuple[WrkResult, float, int]:
    """One wrk run of ``workload`` against a system: ``chat`` (synchronous completions) or ``jobs`` (``POST
    /v1/jobs``, counted by their 202s). Returns wrk's result, the rate (answers or accepted jobs per second) and
    the errors."""
    if workload == "jobs":
        w = run_wrk(wrk, system.jobs_url(), system.body(mode), system.key, concurrency, duration_s, accept_status=202)
        return w, w.accepted / duration_s, intake_errors(w)
    w = run_wrk(wrk, system.chat_url(mode), system.body(mode), system.key, concurrency, duration_s)
    return w, w.rps, w.errors + w.non2xx


def measure_jobs(wrk: str, url: str, body: dict, key: str, concurrency: int, duration_s: float,
                 drain_timeout_s: float) -> JobsResult:
    res = JobsResult(concurrency=concurrency)
    t_start = time.monotonic()
    w: WrkResult = run_wrk(wrk, url, body, key, concurrency, duration_s, accept_status=202, collect_ids=True)
    t_ingest_end = time.monotonic()
    if w.failed:
        res.failed = w.failed
        return res
    res.ingest_s = w.duration_s
    res.accepted = w.accepted
    res.ingest_errors = intake_errors(w)
    res.ingest_rps = w.accepted / duration_s
    res.ingest_p50_ms, res.ingest_p99_ms = w.p50_ms, w.p99_ms
    ids = w.ids
    if not ids:
        res.failed = "no job accepted"
        return res
    rng = random.Random(6)
    tail = ids[-50:]
    rest = ids[:-50]
    sample = tail + rng.sample(rest, min(150, len(rest)))
    res.sample = len(sample)
    pending = set(sample)
    status: dict[str, str] = {}
    headers = {"authorization": f"Bearer {key}"}
    deadline = t_ingest_end + drain_timeout_s
    last_done = None
    with httpx.Client(timeout=10, headers=headers) as client:
        while pending and time.monotonic() < deadline:
            for jid in list(pending):
                try:
                    r = client.get(f"{url}/{jid}")
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    st = r.json().get("status")
                    if st in TERMINAL:
                        status[jid] = st
                        pending.discard(jid)
                        last_done = time.monotonic()
            if pending:
                time.sleep(0.1)
    for st in status.values():
        res.sample_status[st] = res.sample_status.get(st, 0) + 1
    if pending:
        res.sample_status["unfinished"] = len(pending)
    res.drained = not pending
    if res.drained and last_done is not None:
        res.drain_s = last_done - t_start
        res.drain_after_ingest_s = max(0.0, last_done - t_ingest_end)
        res.drain_rps = res.accepted / res.drain_s
    return res


def median_jobs(runs: list[JobsResult]) -> dict:
    """The run with the median intake (a failed run counts as the lowest), with every run's intake beside it."""
    ranked = sorted(runs, key=lambda r: r.ingest_rps if r.failed is None and r.ingest_rps is not None else -1.0)
    out = ranked[(len(ranked) - 1) // 2].public()
    out["rounds_ingest_rps"] = [None if r.failed else r.ingest_rps for r in runs]
    return out
