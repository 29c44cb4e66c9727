"""Job records in JetStream KV: one writer rule for every writer.

A job's status only moves forward (queued → in_progress → a terminal state)
and a terminal state is never replaced. Writers (audit, the gateway's cancel)
update with compare-and-set on the KV revision, so concurrent writers from
any replica agree.
"""

from __future__ import annotations

from typing import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.bus import Bucket
from shared.events import TERMINAL_JOB_STATUSES, JobRecord, job_decoder, job_encoder

JOBS = Bucket("sy_jobs", history=1, ttl_s=7 * 24 * 3600, description="async job status and results")
RANK = {"queued": 0, "in_progress": 1, "completed": 2, "failed": 2, "cancelled": 2, "expired": 2}


def moves_forward(old: JobRecord, new: JobRecord) -> bool:
    """Whether ``new`` may replace ``old``."""
    if old.status in TERMINAL_JOB_STATUSES:
        return False
    return RANK[new.status] > RANK[old.status]


async def get_job(kv: KeyValue, job_id: str) -> JobRecord | None:
    try:
        entry = await kv.get(job_id)
    except KeyNotFoundError:
        return None
    return job_decoder.decode(entry.value) if entry.value else None


async def create_job(kv: KeyValue, record: JobRecord) -> bool:
    """Write a new job's first record; False when one exists already (audit got there first)."""
    try:
        await kv.create(record.id, job_encoder.encode(record))
        return True
    except KeyWrongLastSequenceError:
        return False


async def advance_job(kv: KeyValue, job_id: str, change: Callable[[JobRecord | None], JobRecord | None],
                      attempts: int = 20) -> JobRecord | None:
    """Apply ``change`` to the stored record with compare-and-set; returns what is stored afterwards."""
    for _ in range(attempts):
        try:
            entry = await kv.get(job_id)
            current, revision = job_decoder.decode(entry.value), entry.revision
        except KeyNotFoundError:
            current, revision = None, None
        new = change(current)
        if new is None or (current is not None and not moves_forward(current, new)):
            return current
        try:
            if revision is None:
                await kv.create(job_id, job_encoder.encode(new))
            else:
                await kv.update(job_id, job_encoder.encode(new), last=revision)
            return new
        except KeyWrongLastSequenceError:
            continue
        except Exception as exc:  # create() on an existing key raises a generic API error
            if "wrong last sequence" in str(exc).lower() or "key exists" in str(exc).lower():
                continue
            raise
    raise RuntimeError(f"could not update job {job_id}: too much contention")
