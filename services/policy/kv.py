"""Compare-and-set over JetStream KV, the one primitive every piece of shared policy state is built on.

``cas`` reads a key, lets a pure function decide the new value, and writes it
only if nobody wrote in between (``update(last=revision)``, or ``create`` for a
missing key); on a conflict it reads again, with a short jittered pause so
contending replicas spread out. Any failure to reach the bucket — a timeout, a
lost connection, a deleted bucket — is a ``ServiceUnavailable``, which policy
turns into a denial: it fails closed.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Callable, Generic, TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.errors import ServiceUnavailable

T = TypeVar("T")
R = TypeVar("R")

NO_MESSAGE = 10037  # JetStream: no message for the subject (the key does not exist)


async def kv_get(kv: KeyValue | None, key: str, what: str = "policy store") -> KeyValue.Entry | None:
    """The entry, or None when the key does not exist; ServiceUnavailable when the bucket cannot answer.

    nats-py reports a missing *bucket* with the same KeyNotFoundError as a missing key; the
    JetStream error underneath tells them apart (10037: no such message; 10059: no such stream).
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


async def read(kv: KeyValue | None, key: str, codec: Codec[T], what: str = "policy store") -> T | None:
    entry = await kv_get(kv, key, what)
    if entry is None or not entry.value:
        return None
    return codec.decode(entry.value)


async def cas(kv: KeyValue | None, key: str, codec: Codec[T], change: Callable[[T | None], tuple[T | None, R]], *,
              timeout_s: float = 5.0, what: str = "policy store") -> R:
    """Apply ``change`` atomically: ``change(current) -> (new or None to leave it, result)``; returns the result.

    ``change`` may run several times (once per conflict): it must depend only on its input (and the clock).
    Gives up with ServiceUnavailable after ``timeout_s`` of conflicts.
    """
    give_up = time.monotonic() + timeout_s
    conflicts = 0
    while True:
        entry = await kv_get(kv, key, what)
        current = codec.decode(entry.value) if entry is not None and entry.value else None
        new, result = change(current)
        if new is None:
            return result
        try:
            if entry is None:
                await kv.create(key, codec.encode(new))
            else:
                await kv.update(key, codec.encode(new), last=entry.revision)
            return result
        except KeyWrongLastSequenceError:
            conflicts += 1
        except Exception as exc:  # noqa: BLE001 - the bucket is gone or unreachable
            raise ServiceUnavailable(f"the {what} is unavailable") from exc
        if time.monotonic() > give_up:
            raise ServiceUnavailable(f"the {what} is too contended right now; try again")
        # Contending writers back off by a random slice of a growing window, so they stop colliding.
        await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(conflicts, 6))))


async def create_or_read(kv: KeyValue | None, key: str, codec: Codec[T], value: T,
                         what: str = "policy store") -> tuple[T, bool]:
    """Create ``key`` with ``value`` unless it exists: (what is stored, whether this call created it).

    One round trip in the common case (the key is new) instead of a read and a write.
    """
    if kv is None:
        raise ServiceUnavailable(f"the {what} is not configured")
    try:
        await kv.create(key, codec.encode(value))
        return value, True
    except KeyWrongLastSequenceError:
        pass
    except Exception as exc:  # noqa: BLE001
        raise ServiceUnavailable(f"the {what} is unavailable") from exc
    current = await read(kv, key, codec, what)
    if current is None:  # deleted (or expired) between the two calls: try once more
        return await create_or_read(kv, key, codec, value, what)
    return current, False


def scope_label(key: str) -> str:
    """A budget or rate-limit scope for messages: ``team.<tenant>.<team>`` → ``team acme/ml``, ``key.<id>`` → ``key <id>``."""
    kind, _, rest = key.partition(".")
    return f"team {rest.replace('.', '/')}" if kind == "team" else f"key {rest}"
