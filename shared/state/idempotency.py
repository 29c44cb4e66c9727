"""``Idempotency-Key``: a retried call returns the first call's answer instead of running again.

One record per tenant and key in the ``sy_idempotency`` bucket (kept ``NatsSettings.idempotency_ttl_s``,
default 24 h, which is the window a key is remembered in), named by a hash of both so neither is a KV key
as sent:

    sha256(tenant \\n key)  →  {request_id, fingerprint, state: running|done, status, body, headers}

The first call *claims* the key with a create-if-absent write (one KV round trip, atomic across every
gateway replica: of two concurrent retries exactly one creates it and runs). Whoever finds the record
instead gets it back and answers from it (``Replay``), as Stripe's and OpenAI's idempotency do:

- same body, answer stored      → the stored answer again (status, body, headers), ``idempotent-replayed: true``
- same body, still running      → 409 ``idempotency_in_progress`` naming the request id (its fate is queryable)
- another body with the key     → 409 ``idempotency_key_reused`` (a key names one request)

A first call that was *not accepted* (nothing published) gives its claim back, so a retry runs; one whose
outcome is unknown keeps it, so a retry can never run the request a second time.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Literal

from msgspec import Struct

from shared.errors import Conflict, InvalidRequest
from shared.state.kv import Codec, create_or_read

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255


class IdempotencyRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one tenant's key started, and its answer once there is one."""

    request_id: str
    fingerprint: str  # hash of the route and the body: a key names one request
    created_at: float
    state: Literal["running", "done"] = "running"
    status: int = 0
    body: bytes = b""
    media_type: str = "application/json"
    headers: dict[str, str] | None = None


_CODEC: Codec[IdempotencyRecord] = Codec(IdempotencyRecord)


def fingerprint(route: str, body: bytes) -> str:
    """What makes two calls the same request: the route and the body as sent."""
    return hashlib.sha256(route.encode() + b"\n" + body).hexdigest()


def check_key(key: str) -> str:
    """The header's value, or 400: 1 to 255 printable characters."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters",
                             param="Idempotency-Key")
    return key


class IdempotencyStore:
    """Claims, answers and releases of ``Idempotency-Key``s, over the bucket every gateway replica shares."""

    def __init__(self, kv: "KeyValue") -> None:
        self._kv = kv

    @staticmethod
    def _name(tenant: str, key: str) -> str:
        return hashlib.sha256(f"{tenant}\n{key}".encode()).hexdigest()

    async def claim(self, tenant: str, key: str, fp: str, request_id: str) -> IdempotencyRecord | None:
        """None: this call owns the key and runs as ``request_id``; else the record another call made (the caller
        answers from it: ``replay``). ServiceUnavailable when KV cannot answer (nothing runs)."""
        mine = IdempotencyRecord(request_id=request_id, fingerprint=fp, created_at=time.time())
        stored, created = await create_or_read(self._kv, self._name(tenant, check_key(key)), _CODEC, mine,
                                               "idempotency store")
        return None if created else stored

    async def answer(self, tenant: str, key: str, request_id: str, fp: str, status: int, body: bytes,
                     headers: dict[str, str], media_type: str = "application/json") -> None:
        """Store the first call's answer for every retry to get."""
        done = IdempotencyRecord(request_id=request_id, fingerprint=fp, created_at=time.time(), state="done",
                                 status=status, body=body, media_type=media_type, headers=headers)
        await self._kv.put(self._name(tenant, key), _CODEC.encode(done))

    async def release(self, tenant: str, key: str) -> None:
        """Give the key back (the call was not accepted: nothing ran, so a retry may run it)."""
        await self._kv.delete(self._name(tenant, key))


def replay_error(record: IdempotencyRecord, fp: str) -> Conflict | None:
    """Why a retry cannot be answered from ``record`` (409), or None when its stored answer is the answer."""
    rid = record.request_id
    if record.fingerprint != fp:
        return Conflict("This Idempotency-Key was already used with a different request (another route or body); "
                        "use a new key for a new request.", code="idempotency_key_reused", param="Idempotency-Key")
    if record.state != "done":
        return Conflict(f"A request with this Idempotency-Key ({rid}) is still running or its outcome is not known "
                        f"yet; it runs at most once. Its fate: GET /v1/requests/{rid}.",
                        code="idempotency_in_progress", param="Idempotency-Key")
    return None
