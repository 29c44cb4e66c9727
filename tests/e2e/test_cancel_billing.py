"""Cancelling a job whose provider call is running (issue 17, defect 3).

Before: the cancel ended the job, but the worker's answer had the same event id as the cancel's terminal, so
the stream dropped it: the attempt stayed ``dispatched`` in the trace and the call was never billed. Now the
cancel reaches the worker, which cancels the upstream call; the attempt ends ``cancelled`` with what it cost,
billed exactly once (one ledger row), while the job stays ``cancelled``.
"""

from __future__ import annotations

import asyncio

from tests.support.api import poll_job, wait_trace
from tests.support.wait import eventually

SLOW_MS = 4000  # the provider call the cancel cuts short


async def test_cancel_reaches_the_worker_and_the_call_is_billed_once(system):
    r = await system.http.post("/v1/jobs", json={"model": "slow-1", "messages": [{"role": "user", "content": "x"}],
                                                 "switchyard": {"mock": {"latency_ms": SLOW_MS}}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # The provider call is running once the trace shows the attempt dispatched.
    await wait_trace(system, job_id, lambda t: any(a["outcome"] == "dispatched" for a in t["attempts"]))
    await asyncio.sleep(0.2)  # well inside the call
    cancelled = await system.http.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text

    def billed(trace: dict) -> bool:
        return any(a["outcome"] == "cancelled" and a["cost_usd"] > 0 for a in trace["attempts"])

    trace = await wait_trace(system, job_id, billed, timeout=SLOW_MS / 1000)
    attempt = next(a for a in trace["attempts"] if a["outcome"] == "cancelled")
    # Cut short by the cancel, not run to its end: the worker cancelled the upstream call.
    assert attempt["latency_ms"] < SLOW_MS - 1000, attempt
    assert attempt["prompt_tokens"] > 0
    assert trace["status"] == "cancelled"
    assert trace["cost_usd"] == attempt["cost_usd"]

    async def one_row() -> list[dict] | None:
        rows = [row for row in (await system.http.get("/v1/ledger", params={"limit": 1000})).json()["data"]
                if row["request_id"] == job_id]
        return rows or None

    rows = await eventually(one_row, timeout=5)
    assert len(rows) == 1 and rows[0]["cost_usd"] == attempt["cost_usd"], rows
    # The job's state is the cancel's, and stays so after the call would have ended.
    await asyncio.sleep(0.5)
    assert (await poll_job(system, job_id))["status"] == "cancelled"
    assert [a["outcome"] for a in (await wait_trace(system, job_id))["attempts"]] == ["cancelled"]
