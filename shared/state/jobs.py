"""Job records in JetStream KV (``sy_jobs``): one writer rule for every writer.

A job's status only moves forward (queued → in_progress → a terminal state)
and a terminal state is never replaced. Writers (audit, the gateway's cancel)
update with compare-and-set on the KV revision, so concurrent writers from
any replica agree.
"""

from __future__ import annotations

from typing import Callable

from nats.js.kv import KeyValue

from shared.events import TERMINAL_JOB_STATUSES, JobRecord
from shared.state.kv import Codec, cas, create, read

RANK = {"queued": 0, "in_progress": 1, "completed": 2, "failed": 2, "cancelled": 2, "expired": 2}
CODEC: Codec[JobRecord] = Codec(JobRecord)


def moves_forward(old: JobRecord, new: JobRecord) -> bool:
    """Whether ``new`` may replace ``old``."""
    if old.status in TERMINAL_JOB_STATUSES:
        return False
    return RANK[new.status] > RANK[old.status]


async def get_job(kv: KeyValue, job_id: str) -> JobRecord | None:
    return await read(kv, job_id, CODEC, "job store")


async def create_job(kv: KeyValue, record: JobRecord) -> bool:
    """Write a new job's first record; False when one exists already (audit got there first)."""
    return await create(kv, record.id, CODEC, record, "job store")


async def advance_job(kv: KeyValue, job_id: str, change: Callable[[JobRecord | None], JobRecord | None],
                      finished: Callable[[JobRecord], None] | None = None) -> JobRecord | None:
    """Apply ``change`` to the stored record with compare-and-set; returns what is stored afterwards.

    ``finished(record)`` is called when this very call moved the job into a terminal status, which happens
    once per job whoever writes (its tenant's queue count is given back then: ``shared.state.queues``).
    """
    ended: list[JobRecord] = []

    def step(current: JobRecord | None) -> tuple[JobRecord | None, JobRecord | None]:
        ended.clear()  # only the decision of the write that went through counts
        new = change(current)
        if new is None or (current is not None and not moves_forward(current, new)):
            return None, current
        if new.status in TERMINAL_JOB_STATUSES:
            ended.append(new)
        return new, new

    stored = await cas(kv, job_id, CODEC, step, what="job store")
    if ended and finished is not None:
        finished(ended[0])
    return stored
