"""Stored Responses API responses in JetStream KV (``sy_conversations``): the conversation state behind
``previous_response_id``.

KV layout::

    <tenant>.<response id>     StoredResponse   the response as the API shows it, and the conversation the
                                                model saw (after truncation) followed by its answer

The tenant is part of the key, so a response id of another tenant is simply
not found (404). One record holds the whole conversation up to and including
its answer, so continuing it reads one key. A background response is written
when accepted (``queued``, naming its job) and completed from the job's record
by whoever reads it first (compare-and-set; a terminal record never changes).
Records expire ``NatsSettings.conversation_ttl_s`` after their last write; the
store is encrypted at rest with the rest of JetStream.
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec
from msgspec import Struct
from nats.js.kv import KeyValue

from shared.canonical import Message
from shared.errors import ServiceUnavailable
from shared.state.kv import Codec, cas, kv_get, read, tenant_key, write

WHAT = "response store"
TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
_RANK = {"queued": 0, "in_progress": 1, "completed": 2, "failed": 2, "cancelled": 2, "incomplete": 2}


class StoredResponse(Struct, kw_only=True, omit_defaults=True):
    """One response of the Responses API and the conversation it ends."""

    id: str
    tenant: str
    team: str
    key_id: str = ""
    created_at: float
    status: str  # queued | in_progress | completed | failed | cancelled | incomplete
    model: str  # as requested
    params: dict[str, Any] = msgspec.field(default_factory=dict)  # the request's parameters the response echoes
    messages: list[Message] = msgspec.field(default_factory=list)  # what the model saw, instructions excluded
    input_count: int = 0  # how many of ``messages`` are this response's own input (the rest came before)
    output: list[dict[str, Any]] = msgspec.field(default_factory=list)  # output items, API shape
    answer: Message | None = None  # the output as a chat message, appended to the conversation by the next turn
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    served_model: str | None = None
    job_id: str | None = None  # a background response's job
    completed_at: float | None = None
    dropped: int = 0  # messages of the earlier conversation left out to fit the context window

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


CODEC: Codec[StoredResponse] = Codec(StoredResponse)


async def get(kv: KeyValue, tenant: str, response_id: str) -> StoredResponse | None:
    """The tenant's stored response, or None."""
    k = tenant_key(tenant, response_id)
    return await read(kv, k, CODEC, WHAT) if k else None


async def put(kv: KeyValue, record: StoredResponse) -> None:
    """Write a new record (a response id is written by the one call that created it)."""
    await write(kv, tenant_key(record.tenant, record.id), CODEC.encode(record), WHAT)


async def advance(kv: KeyValue, tenant: str, response_id: str,
                  change: Callable[[StoredResponse], StoredResponse | None],
                  timeout_s: float = 5.0) -> StoredResponse | None:
    """Apply ``change`` with compare-and-set; the status only moves forward, a terminal record never changes.

    Returns what is stored afterwards (None: no such record)."""
    k = tenant_key(tenant, response_id)
    if k is None:
        return None

    def step(current: StoredResponse | None):
        if current is None or current.done:
            return None, current
        new = change(current)
        if new is None or _RANK[new.status] < _RANK[current.status]:
            return None, current
        return new, new

    return await cas(kv, k, CODEC, step, timeout_s=timeout_s, what=WHAT)


async def delete(kv: KeyValue, tenant: str, response_id: str) -> bool:
    """Remove a stored response (its data leaves the store: the bucket keeps one revision); False if absent."""
    k = tenant_key(tenant, response_id)
    if k is None or await kv_get(kv, k, WHAT) is None:
        return False
    try:
        await kv.delete(k)
    except Exception as exc:  # noqa: BLE001
        raise ServiceUnavailable(f"the {WHAT} is unavailable") from exc
    return True
