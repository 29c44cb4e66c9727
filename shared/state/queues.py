"""Per-tenant caps on queued async jobs: how many a tenant may have accepted and unfinished, and their bytes.

One record per tenant in ``sy_queues`` (key ``q.<tenant>``), changed only
through the compare-and-set helper (``shared.state.kv.cas``)::

    {"slots": {<minute of the jobs' deadline>: [jobs, bytes], ...}}

The gateway adds a job before it publishes it, refusing it (429, not accepted)
when either cap would be passed, and takes it back out if the stream then
refuses it. Whoever moves the job's record to a terminal status (audit, or the
gateway's cancel: ``shared.state.jobs.advance_job``) takes it out for good,
once. Counts are kept per minute of the jobs' deadlines: no job outlives its
deadline, so a minute whose deadlines are all past (plus a grace for the
terminal event to be recorded) is dropped whole, and a count nobody took back
(a process that died between two writes) cannot hold a tenant's quota longer
than its longest job timeout.

A flood from one tenant does not turn into a storm of conflicting writes on
its record: the submissions of a tenant waiting at the same time in one
process are admitted by one write (``admit`` groups them), in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import msgspec
from nats.js.kv import KeyValue

from shared.errors import RateLimited
from shared.state.kv import Codec, cas

log = logging.getLogger("switchyard.state")

GRACE_S = 120.0  # after its deadlines, how long a minute's count waits for the jobs' terminal events
RETRY_AFTER_S = 5.0
CODE = "job_queue_full"


class QueueRecord(msgspec.Struct, kw_only=True):
    """A tenant's queued jobs and bytes, per minute of their deadlines."""

    slots: dict[int, list[int]] = msgspec.field(default_factory=dict)

    def totals(self) -> tuple[int, int]:
        return sum(s[0] for s in self.slots.values()), sum(s[1] for s in self.slots.values())


CODEC: Codec[QueueRecord] = Codec(QueueRecord)


@dataclass(frozen=True)
class Queued:
    """One job as the caps count it."""

    tenant: str
    size: int  # bytes of the request as submitted
    deadline: float  # epoch seconds

    @property
    def slot(self) -> int:
        return int(self.deadline // 60)


@dataclass(frozen=True)
class Caps:
    """A tenant's limits (0: no limit on that count)."""

    jobs: int
    bytes: int

    @property
    def on(self) -> bool:
        return self.jobs > 0 or self.bytes > 0


def _pruned(record: QueueRecord | None, now: float) -> tuple[QueueRecord, bool]:
    """The record without the minutes whose jobs are all past their deadline and grace; whether any went."""
    if record is None:
        return QueueRecord(), False
    live = {k: v for k, v in record.slots.items() if (k + 1) * 60 + GRACE_S > now and v[0] > 0}
    return QueueRecord(slots=live), len(live) != len(record.slots)


def take(record: QueueRecord | None, jobs: list[Queued], caps: Caps, now: float) -> tuple[QueueRecord | None,
                                                                                         list[tuple[int, int] | None]]:
    """Admit ``jobs`` in order while the caps allow: the new record (None: unchanged) and, per job, None when
    admitted or the (jobs, bytes) queued that refused it."""
    rec, changed = _pruned(record, now)
    n, size = rec.totals()
    verdicts: list[tuple[int, int] | None] = []
    for job in jobs:
        if (caps.jobs and n + 1 > caps.jobs) or (caps.bytes and size + job.size > caps.bytes):
            verdicts.append((n, size))
            continue
        slot = rec.slots.setdefault(job.slot, [0, 0])
        slot[0] += 1
        slot[1] += job.size
        n, size, changed = n + 1, size + job.size, True
        verdicts.append(None)
    return (rec if changed else None), verdicts


def give_back(record: QueueRecord | None, jobs: Iterable[Queued], now: float) -> QueueRecord | None:
    """The record without ``jobs`` (None: unchanged); a job whose minute is gone already is not counted twice."""
    rec, changed = _pruned(record, now)
    for job in jobs:
        slot = rec.slots.get(job.slot)
        if slot is None:
            continue
        slot[0], slot[1] = max(0, slot[0] - 1), max(0, slot[1] - job.size)
        if slot[0] == 0:
            del rec.slots[job.slot]
        changed = True
    return rec if changed else None


def key(tenant: str) -> str:
    return f"q.{tenant}"


class TenantQueues:
    """The queue records of one process: admissions grouped per tenant, give-backs batched per tenant."""

    def __init__(self, kv: KeyValue | None, *, clock: Callable[[], float] = time.time,
                 cas_timeout_s: float = 5.0) -> None:
        self.kv = kv
        self.clock = clock
        self.cas_timeout_s = cas_timeout_s
        # Per tenant and caps: the jobs waiting for the next write, and the task writing.
        self._waiting: dict[tuple[str, Caps], list[tuple[Queued, asyncio.Future]]] = {}
        self._writers: dict[tuple[str, Caps], asyncio.Task] = {}

    async def admit(self, job: Queued, caps: Caps) -> None:
        """Count ``job`` against its tenant, or refuse it (``RateLimited``: not accepted) past either cap."""
        if not caps.on:
            return
        fut = asyncio.get_running_loop().create_future()
        group = (job.tenant, caps)
        self._waiting.setdefault(group, []).append((job, fut))
        if group not in self._writers:
            # The write runs on its own: a caller that goes away does not leave the others waiting.
            self._writers[group] = asyncio.ensure_future(self._write(group))
        refused = await fut
        if refused is not None:
            n, size = refused
            raise RateLimited(f"Tenant {job.tenant!r} has {n} queued jobs ({size} bytes) and may have at most "
                              f"{caps.jobs or 'any number of'} jobs and {caps.bytes or 'any number of'} bytes "
                              f"queued: this job was not accepted. Retry after {RETRY_AFTER_S:g} s.",
                              code=CODE, retry_after=RETRY_AFTER_S)

    async def _write(self, group: tuple[str, Caps]) -> None:
        tenant, caps = group
        try:
            while self._waiting.get(group):
                batch = self._waiting.pop(group)
                jobs = [j for j, _ in batch]
                try:
                    verdicts = await cas(self.kv, key(tenant), CODEC,
                                         lambda cur: take(cur, jobs, caps, self.clock()),
                                         timeout_s=self.cas_timeout_s, what="job queue store")
                except Exception as exc:  # noqa: BLE001 - every waiter fails closed with it
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), verdict in zip(batch, verdicts):
                    if not fut.done():
                        fut.set_result(verdict)
        finally:
            self._writers.pop(group, None)

    async def release(self, jobs: Iterable[Queued]) -> None:
        """Take finished (or refused) jobs out of their tenants' counts: one write per tenant.

        Best effort: a count that cannot be given back now leaves with its deadline minute (module docstring).
        """
        by_tenant: dict[str, list[Queued]] = {}
        for job in jobs:
            by_tenant.setdefault(job.tenant, []).append(job)
        done = await asyncio.gather(*(
            cas(self.kv, key(tenant), CODEC, lambda cur, js=js: (give_back(cur, js, self.clock()), None),
                timeout_s=self.cas_timeout_s, what="job queue store")
            for tenant, js in by_tenant.items()), return_exceptions=True)
        for tenant, outcome in zip(by_tenant, done):
            if isinstance(outcome, BaseException):
                log.warning("queued jobs of %s not given back (they expire with their deadlines): %r",
                            tenant, outcome)
