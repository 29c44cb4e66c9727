"""Talking to a running Switchyard as a client does: the official ``openai`` SDK, a job polled to its end, a
request's trace once the audit has it."""

from __future__ import annotations

from typing import Any, Callable

import openai

from tests.support.system import ADMIN_KEY
from tests.support.wait import eventually

JOB_ENDED = ("completed", "failed", "cancelled", "expired")


def sdk(system, key: str = ADMIN_KEY, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=system.base_url + "/v1", api_key=key, max_retries=0, **kw)


async def poll_job(system, job_id: str, key: str = ADMIN_KEY, timeout: float = 15) -> dict:
    """The job once it has ended (completed, failed, cancelled or expired)."""
    seen: dict = {}

    async def ended() -> dict | None:
        r = await system.http.get(f"/v1/jobs/{job_id}", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        seen.update(r.json())
        return seen if seen["status"] in JOB_ENDED else None

    return await eventually(ended, timeout=timeout, interval=0.05,
                            message=lambda: f"job stuck in {seen.get('status')}")


def finished(trace: dict) -> bool:
    """The request has ended, whatever the outcome."""
    return trace["status"] not in ("requested", "admitted", "in_progress")


async def wait_trace(system, request_id: str, status: str | Callable[[dict], Any] | None = None,
                     timeout: float = 10) -> dict:
    """The request's trace, once it exists and has ``status`` (a status, or a test on the trace) when given."""
    last: list[str] = [""]

    def wanted(trace: dict) -> bool:
        return status is None or (status(trace) if callable(status) else trace["status"] == status)

    async def traced() -> dict | None:
        r = await system.http.get(f"/v1/requests/{request_id}")
        last[0] = r.text
        return r.json() if r.status_code == 200 and wanted(r.json()) else None

    return await eventually(traced, timeout=timeout, interval=0.05,
                            message=lambda: f"no trace for {request_id}: {last[0]}")
