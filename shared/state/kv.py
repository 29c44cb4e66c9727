"""Compare-and-set over JetStream KV: the one read-decide-write loop every shared store is built on.

``cas`` reads a key, lets a pure function decide the new value, and writes it
only if nobody wrote in between (``update(last=revision)``, or ``create`` for a
missing key); on a conflict it reads again, with a short jittered pause so
contending replicas spread out. A store that keeps a watched copy of its
records may hand that copy in (``known``) to skip the first read, and learn the
revision it wrote (``written``). ``create`` writes a key only if it is new.

Any failure to reach the bucket — a timeout, a lost connection, a deleted
bucket — is a ``ServiceUnavailable``: the caller fails closed. A missing *key*
is not a failure; ``kv_get`` tells the two apart.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.bus import NO_MESSAGE
from shared.errors import ServiceUnavailable

T = TypeVar("T")
R = TypeVar("R")


class Codec(Generic[T]):
    """One encoder and one decoder for a stored type."""

    def __init__(self, type_: type[T]) -> None:
        self.type = type_
        self._enc = msgspec.json.Encoder()
        self._dec = msgspec.json.Decoder(type_)

    def encode(self, value: T) -> bytes:
        return self._enc.encode(value)

    def decode(self, data: bytes) -> T:
        return self._dec.decode(data)


@dataclass(frozen=True)
class Known(Generic[T]):
    """A record the caller already holds (from a watch) and the revision it was stored at (None: absent)."""

    value: T | None
    revision: int | None


def is_conflict(exc: BaseException) -> bool:
    """Whether a failed write lost a race (the key changed, or ``create`` met an existing key)."""
    if isinstance(exc, KeyWrongLastSequenceError):
        return True
    # Some server/client combinations report a create() on an existing key as a generic API error.
    text = str(exc).lower()
    return "wrong last sequence" in text or "key exists" in text


async def kv_get(kv: KeyValue | None, key: str, what: str = "store") -> KeyValue.Entry | None:
    """The entry, or None when the key does not exist; ServiceUnavailable when the bucket cannot answer.

    nats-py reports a missing *bucket* with the same KeyNotFoundError as a missing key; the
    JetStream error underneath tells them apart (``NO_MESSAGE``: no such message; 10059: no such stream).
    """
    if kv is None:
        raise ServiceUnavailable(f"the {what} is not configured")
    try:
        return await kv.get(key)
    except KeyNotFoundError as exc:
        cause = exc.__context__
        if cause is None or getattr(cause, "err_code", None) == NO_MESSAGE or type(cause).__name__ == "KeyDeletedError":
            return None
        raise ServiceUnavailable(f"the {what} is unavailable") from exc
    except Exception as exc:  # noqa: BLE001 - timeouts, no responders, a closed connection
        raise ServiceUnavailable(f"the {what} is unavailable") from exc


async def read(kv: KeyValue | None, key: str, codec: Codec[T], what: str = "store") -> T | None:
    """The decoded record, or None when the key does not exist."""
    entry = await kv_get(kv, key, what)
    if entry is None or not entry.value:
        return None
    return codec.decode(entry.value)


async def cas(kv: KeyValue | None, key: str, codec: Codec[T], change: Callable[[T | None], tuple[T | None, R]], *,
              timeout_s: float = 5.0, what: str = "store", known: Known[T] | None = None,
              written: Callable[[T, int], None] | None = None) -> R:
    """Apply ``change`` atomically: ``change(current) -> (new or None to leave it, result)``; returns the result.

    ``change`` may run several times (once per conflict): it must depend only on its input (and the clock).
    ``known`` is used instead of the first read; ``written(new, revision)`` is called after the write that
    succeeded. Gives up with ServiceUnavailable after ``timeout_s`` of conflicts.
    """
    if kv is None:
        raise ServiceUnavailable(f"the {what} is not configured")
    give_up = time.monotonic() + timeout_s
    conflicts = 0
    while True:
        if known is not None:
            current, revision, known = known.value, known.revision, None
        else:
            entry = await kv_get(kv, key, what)
            current = codec.decode(entry.value) if entry is not None and entry.value else None
            revision = entry.revision if entry is not None else None
        new, result = change(current)
        if new is None:
            return result
        try:
            if revision is None:
                stored = await kv.create(key, codec.encode(new))
            else:
                stored = await kv.update(key, codec.encode(new), last=revision)
        except Exception as exc:  # noqa: BLE001 - a lost race, or the bucket is gone or unreachable
            if not is_conflict(exc):
                raise ServiceUnavailable(f"the {what} is unavailable") from exc
            conflicts += 1
        else:
            if written is not None:
                written(new, stored)
            return result
        if time.monotonic() > give_up:
            raise ServiceUnavailable(f"the {what} is too contended right now; try again")
        # Contending writers back off by a random slice of a growing window, so they stop colliding.
        await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(conflicts, 6))))


async def create(kv: KeyValue | None, key: str, codec: Codec[T], value: T, what: str = "store") -> bool:
    """Write ``key`` only if it does not exist; False when it does (someone else created it first)."""
    if kv is None:
        raise ServiceUnavailable(f"the {what} is not configured")
    try:
        await kv.create(key, codec.encode(value))
        return True
    except Exception as exc:  # noqa: BLE001
        if is_conflict(exc):
            return False
        raise ServiceUnavailable(f"the {what} is unavailable") from exc


async def create_or_read(kv: KeyValue | None, key: str, codec: Codec[T], value: T,
                         what: str = "store") -> tuple[T, bool]:
    """Create ``key`` with ``value`` unless it exists: (what is stored, whether this call created it).

    One round trip in the common case (the key is new) instead of a read and a write.
    """
    while True:
        if await create(kv, key, codec, value, what):
            return value, True
        current = await read(kv, key, codec, what)
        if current is not None:
            return current, False
        # deleted (or expired) between the two calls: try again
