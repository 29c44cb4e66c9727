"""The response cache in JetStream KV (``sy_cache``): answers by key, coalescing locks, a semantic index per team.

KV layout (every key starts with the tenant and team, so a team's purge is one
subject filter and nothing is ever shared between teams)::

    <tenant>.<team>.e.<key>          CacheEntry      an answer (``shared.cache.cache_key``), served until expires_at
    <tenant>.<team>.l.<key>          CacheLock       who is asking upstream for that key right now, and until when
    <tenant>.<team>.s.<deployment>   SemanticIndex   the team's latest entries on that deployment: packed prompt
                                                     vectors, their parameters' key and expiry (bounded)

Expiry: every record carries its own ``expires_at`` (the team's TTL under the
operator's ceiling) and a reader treats an expired one as absent; the bucket's
own age limit (``buckets.CACHE``) removes whatever nobody rewrote, so nothing
outlives the longest TTL an operator may set. A purge removes the team's
records from the stream (not a delete marker per key): they are gone at rest.

Coalescing: the first worker to find a key missing takes its lock (create-only
through ``kv.cas``) and asks upstream; the others poll for the entry (``wait``)
until the lock is released, has expired (its holder died) or their own bound
is reached, then go upstream themselves. Every write goes through
``shared.state.kv.cas``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import msgspec
from msgspec import Struct
from nats.js.kv import KeyValue

from shared.cache import CacheEntry
from shared.errors import ServiceUnavailable
from shared.state.health import token
from shared.state.kv import Codec, Known, cas, kv_get

WHAT = "response cache"


class CacheLock(Struct, frozen=True, kw_only=True):
    """The worker asking upstream for one key; ``until`` 0 means released."""

    owner: str
    until: float


class IndexItem(Struct, frozen=True, array_like=True):
    """One entry as the semantic index knows it: its key, its parameters' key, its packed vector, its expiry."""

    key: str
    params: str
    vector: str
    expires_at: float


class SemanticIndex(Struct, kw_only=True):
    """A team's latest entries on one deployment, oldest first."""

    items: list[IndexItem] = msgspec.field(default_factory=list)


def _size(item: IndexItem) -> int:
    return len(item.key) + len(item.params) + len(item.vector) + 32  # its JSON, give or take


def added(index: SemanticIndex | None, item: IndexItem, now: float, bound: int,
          max_bytes: int = 768 * 1024) -> SemanticIndex:
    """The index with ``item`` appended (replacing the same key) and expired items dropped, keeping the newest
    ``bound`` items that fit in ``max_bytes`` (one KV value)."""
    live = [i for i in (index.items if index else []) if i.expires_at > now and i.key != item.key]
    live.append(item)
    kept: list[IndexItem] = []
    size = 0
    for i in reversed(live[-bound:]):
        size += _size(i)
        if size > max_bytes and kept:
            break
        kept.append(i)
    return SemanticIndex(items=kept[::-1])


class CacheStore:
    """The cache bucket, for one process: reads, writes through compare-and-set, waits, purges."""

    def __init__(self, kv: KeyValue | None, *, clock: Callable[[], float] = time.time, cas_timeout_s: float = 5.0,
                 purge: Callable[[str], Awaitable[object]] | None = None) -> None:
        self.kv = kv
        self.clock = clock
        self.cas_timeout_s = cas_timeout_s
        self._purge = purge  # removes every record under a key filter from the bucket's stream
        self.entries = Codec(CacheEntry)
        self.locks = Codec(CacheLock)
        self.indexes = Codec(SemanticIndex)

    @staticmethod
    def _key(tenant: str, team: str, kind: str, rest: str) -> str:
        return f"{tenant}.{team}.{kind}.{rest}"

    async def _read(self, key: str, codec: Codec):
        entry = await kv_get(self.kv, key, WHAT)
        return codec.decode(entry.value) if entry is not None and entry.value else None

    # ---- entries -------------------------------------------------------------------------

    async def get(self, tenant: str, team: str, key: str) -> CacheEntry | None:
        """The stored answer, or None when there is none or it has expired."""
        entry = await self._read(self._key(tenant, team, "e", key), self.entries)
        return entry if entry is not None and entry.expires_at > self.clock() else None

    async def put(self, tenant: str, team: str, key: str, entry: CacheEntry) -> None:
        """Store (or replace) the answer for ``key``."""
        # A new key is one create; an existing one (a refresh, an expired entry) is read and replaced.
        await cas(self.kv, self._key(tenant, team, "e", key), self.entries, lambda _: (entry, None),
                  timeout_s=self.cas_timeout_s, what=WHAT, known=Known(None, None))

    # ---- coalescing ----------------------------------------------------------------------

    async def lock(self, tenant: str, team: str, key: str, owner: str, until: float) -> CacheLock | None:
        """Take the key's lock until ``until``: None when taken, else the lock someone else holds."""
        now = self.clock()

        def change(current: CacheLock | None):
            if current is None or current.until <= now or current.owner == owner:
                return CacheLock(owner=owner, until=until), None
            return None, current

        return await cas(self.kv, self._key(tenant, team, "l", key), self.locks, change,
                         timeout_s=self.cas_timeout_s, what=WHAT, known=Known(None, None))

    async def unlock(self, tenant: str, team: str, key: str, owner: str) -> None:
        """Release the lock if ``owner`` still holds it."""

        def change(current: CacheLock | None):
            if current is None or current.owner != owner or current.until == 0:
                return None, None
            return CacheLock(owner=owner, until=0), None

        await cas(self.kv, self._key(tenant, team, "l", key), self.locks, change, timeout_s=self.cas_timeout_s,
                  what=WHAT)

    async def wait(self, tenant: str, team: str, key: str, holder: CacheLock, until: float,
                   first_poll_s: float = 0.005, max_poll_s: float = 0.05) -> CacheEntry | None:
        """The entry ``holder`` is producing, once it is stored; None when the holder let go without one (it
        failed, or died and its lock expired) or at ``until``."""
        pause = first_poll_s
        while True:
            entry = await self.get(tenant, team, key)
            if entry is not None:
                return entry
            now = self.clock()
            if now >= until or now >= holder.until:
                return None
            lock = await self._read(self._key(tenant, team, "l", key), self.locks)
            if lock is None or lock.owner != holder.owner or lock.until <= now:
                # Released: the entry is stored first, so look once more before giving up.
                return await self.get(tenant, team, key)
            await asyncio.sleep(min(pause, max(0.0, until - now)))
            pause = min(max_poll_s, pause * 2)

    # ---- semantic index ------------------------------------------------------------------

    async def index(self, tenant: str, team: str, deployment: str) -> list[IndexItem]:
        """The team's live index items on ``deployment``."""
        index = await self._read(self._key(tenant, team, "s", token(deployment)), self.indexes)
        now = self.clock()
        return [i for i in (index.items if index else []) if i.expires_at > now]

    async def add_to_index(self, tenant: str, team: str, deployment: str, item: IndexItem, bound: int,
                           max_bytes: int) -> None:
        now = self.clock()
        await cas(self.kv, self._key(tenant, team, "s", token(deployment)), self.indexes,
                  lambda current: (added(current, item, now, bound, max_bytes), None), timeout_s=self.cas_timeout_s,
                  what=WHAT)

    # ---- purge ---------------------------------------------------------------------------

    async def purge(self, tenant: str, team: str) -> None:
        """Remove every entry, lock and index of the team from the bucket."""
        if self._purge is None:
            raise ServiceUnavailable(f"the {WHAT} cannot be purged from this process")
        try:
            await self._purge(f"{tenant}.{team}.>")
        except Exception as exc:  # noqa: BLE001 - a timeout, a lost connection, a missing stream
            raise ServiceUnavailable(f"the {WHAT} is unavailable") from exc
