"""Compare-and-set over JetStream KV: the one read-decide-write loop every shared store is built on.

``cas`` reads a key, lets a pure function decide the new value, and writes it
only if nobody wrote in between (``update(last=revision)``, or ``create`` for a
missing key); on a conflict it reads again, with a short jittered pause so
contending replicas spread out. A store that keeps a watched copy of its
records may hand that copy in (``known``) to skip the first read, and learn the
revision it wrote (``written``). ``create`` writes a key only if it is new.

``GroupCommit`` is the same loop for a hot key: changes that concurrent callers
of one process make to one key are queued and applied in order, each to the
result of the one before, in one write — so a hundred admissions of one team
cost one compare-and-set round instead of a hundred rounds that mostly lose
races to each other. Each caller still gets its own result, as if it had
written alone; only replicas (other processes) still contend, one batch each.

Any failure to reach the bucket — a timeout, a lost connection, a deleted
bucket — is a ``ServiceUnavailable``: the caller fails closed. A missing *key*
is not a failure; ``kv_get`` tells the two apart.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.bus import NO_MESSAGE
from shared.errors import ServiceUnavailable
from shared.ids import SAFE_REQUEST_ID, check_name

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


def tenant_key(tenant: str, ident: str) -> str | None:
    """``<tenant>.<id>``, the key of a tenant's record: another tenant's id can never name it. None for an id that
    cannot be one (a client's path segment): such a record is simply not found."""
    if not SAFE_REQUEST_ID.match(ident):
        return None
    return f"{check_name(tenant, 'tenant')}.{ident}"


async def write(kv: KeyValue | None, key: str, data: bytes, what: str = "store") -> None:
    """Write ``key`` whatever is there (a record only its creator writes); ServiceUnavailable when the bucket
    cannot be reached."""
    if kv is None:
        raise ServiceUnavailable(f"the {what} is not configured")
    try:
        await kv.put(key, data)
    except Exception as exc:  # noqa: BLE001 - a timeout, a lost connection, a value over the server's limit
        raise ServiceUnavailable(f"the {what} is unavailable") from exc


async def keys_matching(kv: KeyValue | None, pattern: str, what: str = "store") -> list[str]:
    """The keys that match ``pattern`` (``*``/``>`` wildcards), as stored now. The server filters by subject, so
    a tenant's listing (``<tenant>.*``) never reads another tenant's keys."""
    if kv is None:
        raise ServiceUnavailable(f"the {what} is not configured")
    keys: list[str] = []
    try:
        watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=True)
        try:
            async for entry in watcher:
                if entry is None:  # the end of what is stored now
                    break
                keys.append(entry.key)
        finally:
            await watcher.stop()
    except Exception as exc:  # noqa: BLE001 - a timeout, a lost connection
        raise ServiceUnavailable(f"the {what} is unavailable") from exc
    return keys


async def read(kv: KeyValue | None, key: str, codec: Codec[T], what: str = "store") -> T | None:
    """The decoded record, or None when the key does not exist."""
    entry = await kv_get(kv, key, what)
    if entry is None or not entry.value:
        return None
    return codec.decode(entry.value)


class _Raised:
    """A change that raised: the exception goes back to its own caller, the rest of a batch goes on."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _apply(current: T | None, changes: list[Callable[[T | None], tuple[T | None, R]]]) -> tuple[T | None, list]:
    """Run ``changes`` in order, each on what the one before left; (the value to write or None, the results)."""
    value, changed, results = current, False, []
    for change in changes:
        try:
            new, result = change(value)
        except Exception as exc:  # noqa: BLE001 - handed back to the caller whose change it was
            results.append(_Raised(exc))
            continue
        if new is not None:
            value, changed = new, True
        results.append(result)
    return (value if changed else None), results


async def _commit(kv: KeyValue | None, key: str, codec: Codec[T], changes: list, *, timeout_s: float, what: str,
                  known: Known[T] | None = None, written: Callable[[T, int], None] | None = None,
                  confirm_unwritten: bool = False) -> list:
    """The read-decide-write loop for one or more ``changes`` of one key; their results in order (a change that
    raised gives ``_Raised``). ``confirm_unwritten``: when the changes decided on ``known`` to write nothing,
    decide again on the stored value (a copy that may be stale is trusted only when a write confirms it)."""
    if kv is None:
        raise ServiceUnavailable(f"the {what} is not configured")
    give_up = time.monotonic() + timeout_s
    conflicts = 0
    while True:
        from_known = known is not None
        if known is not None:
            current, revision, known = known.value, known.revision, None
        else:
            entry = await kv_get(kv, key, what)
            current = codec.decode(entry.value) if entry is not None and entry.value else None
            revision = entry.revision if entry is not None else None
        new, results = _apply(current, changes)
        if new is None:
            if from_known and confirm_unwritten:
                continue
            return results
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
            return results
        if time.monotonic() > give_up:
            raise ServiceUnavailable(f"the {what} is too contended right now; try again")
        # Contending writers back off by a random slice of a growing window, so they stop colliding.
        await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(conflicts, 6))))


def _unwrap(result):
    if isinstance(result, _Raised):
        raise result.exc
    return result


async def cas(kv: KeyValue | None, key: str, codec: Codec[T], change: Callable[[T | None], tuple[T | None, R]], *,
              timeout_s: float = 5.0, what: str = "store", known: Known[T] | None = None,
              written: Callable[[T, int], None] | None = None) -> R:
    """Apply ``change`` atomically: ``change(current) -> (new or None to leave it, result)``; returns the result.

    ``change`` may run several times (once per conflict): it must depend only on its input (and the clock).
    ``known`` is used instead of the first read; ``written(new, revision)`` is called after the write that
    succeeded. Gives up with ServiceUnavailable after ``timeout_s`` of conflicts.
    """
    results = await _commit(kv, key, codec, [change], timeout_s=timeout_s, what=what, known=known, written=written)
    return _unwrap(results[0])


class GroupCommit(Generic[T]):
    """``cas`` for keys many callers of this process change at once: one write per batch of queued changes.

    The first change to an idle key is written at once; changes that arrive while a write to that key is in
    flight wait for it and then go together in the next one (at most ``max_batch``). Every change runs on the
    value the one before it produced, so the outcome is the one those changes would have had one after
    another. The value and revision this process last wrote to a key stand in for the first read of the next
    batch (``remember`` keys at most): a write another process made meanwhile is a conflict like any other and
    the key is read again, and a batch that would write nothing is decided again on the stored value — the
    copy only ever saves a read, it never decides alone. Changes must not modify the value they are given.
    """

    def __init__(self, kv: KeyValue | None, codec: Codec[T], *, timeout_s: float = 5.0, what: str = "store",
                 max_batch: int = 256, remember: int = 1024) -> None:
        self.kv = kv
        self.codec = codec
        self.timeout_s = timeout_s
        self.what = what
        self.max_batch = max_batch
        self.remember = remember
        self._queues: dict[str, list[tuple[Callable, asyncio.Future]]] = {}
        self._drains: set[asyncio.Task] = set()
        self._written: OrderedDict[str, Known[T]] = OrderedDict()  # key → what this process wrote last

    async def cas(self, key: str, change: Callable[[T | None], tuple[T | None, R]]) -> R:
        """Apply ``change`` to ``key`` atomically (with whatever else is queued for it); returns its result."""
        fut = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = queue = []
            task = asyncio.ensure_future(self._drain(key, queue))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        queue.append((change, fut))
        return _unwrap(await fut)

    def _wrote(self, key: str, value: T, revision: int) -> None:
        self._written[key] = Known(value, revision)
        self._written.move_to_end(key)
        while len(self._written) > self.remember:
            self._written.popitem(last=False)

    async def _drain(self, key: str, queue: list) -> None:
        try:
            while queue:
                batch = queue[:self.max_batch]
                del queue[:len(batch)]
                batch = [(change, fut) for change, fut in batch if not fut.done()]  # callers that gave up
                if not batch:
                    continue
                try:
                    results = await _commit(self.kv, key, self.codec, [change for change, _ in batch],
                                            timeout_s=self.timeout_s, what=self.what,
                                            known=self._written.pop(key, None), confirm_unwritten=True,
                                            written=lambda new, revision: self._wrote(key, new, revision))
                except BaseException as exc:  # noqa: BLE001 - every caller of the batch learns it
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception) else ServiceUnavailable(
                                f"the {self.what} write was interrupted"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, fut), result in zip(batch, results):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            if self._queues.get(key) is queue:
                del self._queues[key]
            for _, fut in queue:  # only left when the drain itself was cancelled
                if not fut.done():
                    fut.set_exception(ServiceUnavailable(f"the {self.what} write was interrupted"))


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
