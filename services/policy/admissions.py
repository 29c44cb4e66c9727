"""One record per admitted request (``sy_admissions``, key = request id): what admission took, and whether
the request has ended.

    req_…  →  {state: open | settling | closed, amount, scopes, charges, actual_usd, outcome}

The record is what makes the budget protocol safe under at-least-once
delivery, out-of-order handling and several replicas:

- a redelivered ``CompletionRequested`` finds ``open`` and re-announces the
  same admission without taking quota again; finding ``settling``/``closed``
  (the request already ended) it does nothing — a late redelivery can never
  re-reserve a budget that nothing would release;
- a terminal event that arrives before admission has written the record
  (a job cancelled while still queued) leaves a ``closed`` tombstone, and the
  admission that loses that race gives back what it took;
- settling first freezes the actual cost (``settling``), then settles the
  budget counters, then marks the record ``closed``: a redelivered terminal
  repeats the same settlement, and a billed attempt reported concurrently is
  either inside the frozen amount or charged separately, never twice;
- billed attempts (a stream that broke or was cancelled after output) are
  added to ``charges`` while the request is open and become part of its
  settlement.

Records expire a day after their last write — long after any request's
deadline, past which nothing can admit it again.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

import msgspec
from msgspec import Struct
from nats.js.kv import KeyValue

from shared.state.budgets import Scope
from shared.state.kv import Codec, cas, create_or_read, read

State = Literal["open", "settling", "closed"]


class AdmissionRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What admission took for one request, and how far its settlement has come."""

    state: State
    amount: int = 0  # nano-USD reserved
    scopes: list[Scope] = msgspec.field(default_factory=list)
    charges: dict[str, int] = msgspec.field(default_factory=dict)  # attempt → nano-USD billed by a failed attempt
    actual: int | None = None  # nano-USD, frozen when settling starts
    outcome: str = ""
    created_at: float = 0.0


class AdmissionStore:
    """Admission records in KV."""

    def __init__(self, kv: KeyValue | None, *, clock: Callable[[], float] = time.time,
                 cas_timeout_s: float = 5.0) -> None:
        self.kv = kv
        self.clock = clock
        self.codec = Codec(AdmissionRecord)
        self.cas_timeout_s = cas_timeout_s

    async def _cas(self, request_id: str, change):
        return await cas(self.kv, request_id, self.codec, change, timeout_s=self.cas_timeout_s,
                         what="admission store")

    async def get(self, request_id: str) -> AdmissionRecord | None:
        return await read(self.kv, request_id, self.codec, "admission store")

    async def open(self, request_id: str, amount: int, scopes: list[Scope]) -> tuple[AdmissionRecord, bool]:
        """Record an admission; returns what is stored and whether this call stored it (if not, another
        delivery admitted the request concurrently, or the request already ended: a tombstone)."""
        record = AdmissionRecord(state="open", amount=amount, scopes=scopes, created_at=self.clock())
        return await create_or_read(self.kv, request_id, self.codec, record, "admission store")

    async def tombstone(self, request_id: str, outcome: str) -> AdmissionRecord | None:
        """Mark a request that ended without (or before) an admission record; returns the record that was
        there instead, if any."""
        record = AdmissionRecord(state="closed", outcome=outcome, created_at=self.clock())
        stored, created = await create_or_read(self.kv, request_id, self.codec, record, "admission store")
        return None if created else stored

    async def add_charge(self, request_id: str, attempt: int, amount: int) -> tuple[AdmissionRecord | None, bool]:
        """Note a billed attempt; returns the record as it was and whether the charge is new.

        A charge noted while the record is ``open`` becomes part of the settlement; one noted after
        settling began (the returned record's state says so) must be charged on its own.
        """

        def change(cur: AdmissionRecord | None):
            if cur is None or str(attempt) in cur.charges:
                return None, (cur, False)
            return msgspec.structs.replace(cur, charges={**cur.charges, str(attempt): amount}), (cur, True)

        return await self._cas(request_id, change)

    async def begin_settling(self, request_id: str, actual_of: Callable[[AdmissionRecord], int],
                             outcome: str) -> AdmissionRecord | None:
        """Freeze the actual cost (``actual_of(record)``) unless it already is; returns the record."""

        def change(cur: AdmissionRecord | None):
            if cur is None or cur.state != "open":
                return None, cur
            new = msgspec.structs.replace(cur, state="settling", actual=actual_of(cur), outcome=outcome)
            return new, new

        return await self._cas(request_id, change)

    async def close(self, request_id: str) -> None:
        def change(cur: AdmissionRecord | None):
            if cur is None or cur.state == "closed":
                return None, None
            return msgspec.structs.replace(cur, state="closed"), None

        await self._cas(request_id, change)
