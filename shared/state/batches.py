"""Batches of the Batch API in JetStream KV (``sy_batches``): one record per batch, moved forward by whoever
observes progress.

KV layout::

    <tenant>.<batch id>     BatchRecord     endpoint, input file, the lines' custom ids, per-line outcome,
                                            status and its timestamps, output and error file ids

Each line of the input file runs as a durable async job whose id follows from
the batch id and the line number (``job_id``), so nothing but the record is
needed to find them, and submitting a line twice (a gateway that died while
submitting, then a resumed submission) finds the job already there. The
record's ``outcomes`` string keeps one character per line: ``.`` not ended yet,
``c`` completed, ``f`` failed (refused at submission, failed, cancelled or
expired). A character only ever moves from ``.`` to an end, and the status only
forward (validating → in_progress → finalizing → completed, or cancelling →
cancelled, or expired/failed), so concurrent observers (any gateway replica
answering a poll) agree through compare-and-set. Records expire
``NatsSettings.file_ttl_s`` after their last write.
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec
from msgspec import Struct
from nats.js.kv import KeyValue

from shared.errors import ErrorInfo
from shared.ids import check_name
from shared.state.kv import Codec, cas, keys_matching, read, tenant_key, write

WHAT = "batch store"
PENDING, COMPLETED, FAILED = ".", "c", "f"
_RANK = {"validating": 0, "in_progress": 1, "cancelling": 2, "finalizing": 3,
         "completed": 4, "failed": 4, "cancelled": 4, "expired": 4}
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})


class BatchRecord(Struct, kw_only=True, omit_defaults=True):
    """One batch and the state of its lines."""

    id: str
    tenant: str
    team: str
    key_id: str = ""
    endpoint: str
    input_file_id: str
    completion_window: str = "24h"
    created_at: float
    expires_at: float
    status: str = "validating"
    custom_ids: list[str] = msgspec.field(default_factory=list)
    outcomes: str = ""
    refused: dict[str, ErrorInfo] = msgspec.field(default_factory=dict)  # line index → why it was not accepted
    submitted: int = 0  # lines handed to the job machinery so far, in order
    touched_at: float | None = None  # the submitter's last progress (a validating batch idle long is resumed)
    metadata: dict[str, str] | None = None
    model: str | None = None
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    expired_at: float | None = None
    failed_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def counts(self) -> dict[str, int]:
        """OpenAI's ``request_counts``: exact, from the per-line outcomes."""
        return {"total": len(self.outcomes), "completed": self.outcomes.count(COMPLETED),
                "failed": self.outcomes.count(FAILED)}

    def public(self) -> dict:
        """OpenAI's ``batch`` object."""
        ts = lambda v: int(v) if v else None  # noqa: E731
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors":
                {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": int(self.created_at), "in_progress_at": ts(self.in_progress_at),
            "expires_at": ts(self.expires_at), "finalizing_at": ts(self.finalizing_at),
            "completed_at": ts(self.completed_at), "failed_at": ts(self.failed_at),
            "expired_at": ts(self.expired_at), "cancelling_at": ts(self.cancelling_at),
            "cancelled_at": ts(self.cancelled_at), "request_counts": self.counts(), "metadata": self.metadata,
            "model": self.model,
        }


CODEC: Codec[BatchRecord] = Codec(BatchRecord)


def job_id(batch_id: str, line: int) -> str:
    """The job of a batch's line (0-based): the same every time it is asked."""
    return f"job_{batch_id.removeprefix('batch_')}_{line}"


def merge_outcomes(old: str, new: str) -> str:
    """Per line, an end wins over ``.``; an end already recorded never changes."""
    return "".join(a if a != PENDING else b for a, b in zip(old, new))


def moves_forward(old: str, new: str) -> bool:
    return _RANK[new] > _RANK[old]


async def get(kv: KeyValue, tenant: str, batch_id: str) -> BatchRecord | None:
    """The tenant's batch, or None."""
    k = tenant_key(tenant, batch_id)
    return await read(kv, k, CODEC, WHAT) if k else None


async def put(kv: KeyValue, record: BatchRecord) -> None:
    """Write a new batch's first record."""
    await write(kv, tenant_key(record.tenant, record.id), CODEC.encode(record), WHAT)


async def advance(kv: KeyValue, record: BatchRecord, change: Callable[[BatchRecord], BatchRecord | None],
                  timeout_s: float = 5.0) -> BatchRecord:
    """Apply ``change`` to the stored record with compare-and-set; a terminal record never changes.

    ``change`` gets the current record and returns the new one (None: leave it). Returns what is stored."""

    def step(current: BatchRecord | None):
        if current is None or current.done:
            return None, current
        new = change(current)
        if new is None:
            return None, current
        return new, new

    stored = await cas(kv, tenant_key(record.tenant, record.id), CODEC, step, timeout_s=timeout_s, what=WHAT)
    return stored or record


async def list_all(kv: KeyValue, tenant: str) -> list[BatchRecord]:
    """The tenant's batches, newest first."""
    out = []
    for k in await keys_matching(kv, f"{check_name(tenant, 'tenant')}.*", WHAT):
        record = await read(kv, k, CODEC, WHAT)
        if record is not None:
            out.append(record)
    return sorted(out, key=lambda r: (-r.created_at, r.id))
