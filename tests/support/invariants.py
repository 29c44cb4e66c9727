"""The invariant checker of the fault tests and ``make chaos``: what was submitted, what ended, what was billed.

One tally for both: ``tests/fault/test_worker_kill.py`` feeds it job states polled over the API and the
ledger it reads there; ``tools/chaos.py`` feeds it the audit store's requests and ledger rows, and adds
its own counts (provider calls, revocations, overspend) beside it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

import httpx

from tests.support.wait import eventually

TERMINAL_JOB = {"completed", "failed", "cancelled", "expired"}


@dataclass
class Tally:
    """What the invariant checker counts."""

    submitted: int
    terminal: int
    lost: int
    duplicated_ledger_rows: int
    billed: int
    completed: int


def tally(ids: Iterable[str], states: Mapping[str, str], ledger_rows: Iterable[Mapping],
          calls_per_request: Mapping[str, int] | None = None) -> Tally:
    """Count over the accepted request ``ids``: ``states`` maps a request that ended to its terminal status
    (``completed`` or ``succeeded`` counted as completed); ``ledger_rows`` each name a ``request_id``.

    A ledger row is duplicated when a request has more rows than billable provider calls: one, unless
    ``calls_per_request`` says a request's first call had an unknown outcome and was recorded and billed twice.
    """
    ids = list(ids)
    wanted = set(ids)
    per_request = Counter(row["request_id"] for row in ledger_rows if row["request_id"] in wanted)
    allowed = calls_per_request or {}
    ended = {i: s for i, s in states.items() if i in wanted}
    return Tally(
        submitted=len(ids),
        terminal=len(ended),
        lost=len(ids) - len(ended),
        duplicated_ledger_rows=sum(max(0, c - max(1, allowed.get(r, 1))) for r, c in per_request.items()),
        billed=len(per_request),
        completed=sum(1 for s in ended.values() if s in ("completed", "succeeded")),
    )


async def final_job_states(http: httpx.AsyncClient, ids: list[str], timeout: float) -> dict[str, dict]:
    """The jobs that reached a terminal state within ``timeout`` (all of them, unless some were lost)."""
    states: dict[str, dict] = {}

    async def all_ended() -> bool:
        pending = [i for i in ids if i not in states]
        bodies = await asyncio.gather(*(http.get(f"/v1/jobs/{i}") for i in pending))
        for job_id, r in zip(pending, bodies):
            if r.status_code == 200 and r.json()["status"] in TERMINAL_JOB:
                states[job_id] = r.json()
        return len(states) == len(ids)

    try:
        await eventually(all_ended, timeout=timeout, interval=0.25)
    except AssertionError:
        pass  # the tally counts the jobs that never ended
    return states
