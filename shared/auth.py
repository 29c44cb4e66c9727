"""Who is calling: API keys resolved to a principal (tenant, team, role), kept in JetStream KV.

Keys are never stored, logged or compared in clear. The ``sy_keys`` bucket holds
one entry per key, named by the key id, whose value is a ``KeyRecord``:

    <key_id>  →  {hash: HMAC-SHA256(server secret, key), tenant, team, role,
                  prefix, last4, expires_at, revoked_at, allowed_models,
                  allowed_providers, limits, ...}

The key id is the first 16 hex digits of the hash, so a configured key keeps
its id (and its ledger rows their attribution) across restarts.

Every process that authenticates keeps a local index (hash → record) fresh
with a KV watch: ``authenticate`` stays synchronous and a revocation reaches
every replica as fast as NATS delivers the watch update (milliseconds; the
contract is one second). The index is *current* only while its watch is live
on the connection it was loaded on: a lost connection (nats-server restarted)
ends that at once, and the watch starts again as soon as the connection is
back (``Bus.on_reconnect``). While it is not current, policy's ``fetch`` and
the gateway (``refresh`` before ``authenticate``, ``services.gateway.web.
CurrentKeys``) read the key from KV, where an unreachable KV denies (503)
rather than admits: a revocation holds within a second even right after a
restart.

Keys given in configuration (``SWITCHYARD_ADMIN_KEY``, ``SWITCHYARD_API_KEYS``)
are seeded into the bucket at start: created when missing, their attributes
brought in line with the configuration when they changed. A configured key
revoked through the admin API stays revoked.

A bearer that is no API key may be a JWT of a configured OpenID Connect
issuer (``shared.oidc``): its principal is the token's subject, with
``issuer`` set.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Callable, Iterable, Literal

import msgspec
from msgspec import Meta, Struct

from shared.errors import ServiceUnavailable
from shared.ids import SAFE_KEY_ID, check_name
from shared.state.buckets import KEYS
from shared.state.kv import Codec, cas, create, read

if TYPE_CHECKING:  # type hints only
    from nats.js.kv import KeyValue

    from shared.bus import Bus

log = logging.getLogger("switchyard.auth")

Role = Literal["admin", "member", "viewer"]
ROLES = ("admin", "member", "viewer")
MAX_KEY_LENGTH = 256


@dataclass(frozen=True)
class Principal:
    """The identity a request is attributed to; taken only from the key, never from the body."""

    key_id: str  # the key's id, or an OIDC subject's stable id (``shared.oidc.subject_id``)
    tenant: str
    team: str
    role: Role = "member"
    operator: bool = False  # may manage every tenant (the configured admin key)
    issuer: str | None = None  # the OIDC issuer whose token this is (None: an API key)


class KeyLimits(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A key's own limits, applied on top of its team's."""

    rpm: Annotated[int, Meta(ge=1)] | None = None
    tpm: Annotated[int, Meta(ge=1)] | None = None
    daily_usd: Annotated[float, Meta(ge=0)] | None = None
    monthly_usd: Annotated[float, Meta(ge=0)] | None = None


class KeyRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A key as stored: its HMAC and attributes, never the key itself."""

    id: str
    hash: str
    tenant: str
    team: str
    role: Role = "member"
    prefix: str = ""
    last4: str = ""
    name: str = ""
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    allowed_models: list[str] | None = None
    allowed_providers: list[str] | None = None
    limits: KeyLimits | None = None
    operator: bool = False
    source: str = "api"  # api / config
    rotated_from: str | None = None
    rotated_to: str | None = None

    def active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def principal(self) -> Principal:
        return Principal(key_id=self.id, tenant=self.tenant, team=self.team, role=self.role, operator=self.operator)

    def public(self, now: float | None = None) -> dict:
        """The key as the admin API lists it: prefix and last four characters, never the hash."""
        now = time.time() if now is None else now
        status = "revoked" if self.revoked_at is not None else (
            "expired" if self.expires_at is not None and now >= self.expires_at else "active")
        return {
            "object": "api_key", "id": self.id, "tenant": self.tenant, "team": self.team, "role": self.role,
            "name": self.name, "display": f"{self.prefix}…{self.last4}", "prefix": self.prefix, "last4": self.last4,
            "status": status, "created_at": self.created_at, "expires_at": self.expires_at,
            "revoked_at": self.revoked_at, "allowed_models": self.allowed_models,
            "allowed_providers": self.allowed_providers,
            "limits": msgspec.to_builtins(self.limits) if self.limits else None,
            "operator": self.operator, "source": self.source,
            "rotated_from": self.rotated_from, "rotated_to": self.rotated_to,
        }


_CODEC: Codec[KeyRecord] = Codec(KeyRecord)


@dataclass(frozen=True)
class KeyEntry:
    """A key given in configuration (hashed on load)."""

    key: str
    tenant: str = "default"
    team: str = "default"
    role: Role = "member"
    operator: bool = False
    name: str = ""
    expires_at: float | None = None
    allowed_models: list[str] | None = None
    allowed_providers: list[str] | None = None
    limits: KeyLimits | None = None


def generate_key(prefix: str = "sk-sy-") -> str:
    return prefix + secrets.token_urlsafe(32)


def display_parts(key: str) -> tuple[str, str]:
    """Prefix and tail shown in listings; short keys show less so most of a key is never displayed."""
    if len(key) >= 24:
        return key[:7], key[-4:]
    return key[: len(key) // 4], key[-(len(key) // 6):] if len(key) >= 6 else ""


class KeyRing:
    """The read side every key source offers: an in-memory index of records by hash and by id.

    ``KeyStore`` keeps one fresh from KV; unit tests build one directly from ``KeyEntry``s.
    """

    def __init__(self, secret: bytes, entries: Iterable[KeyEntry] = (), clock: Callable[[], float] = time.time):
        self._secret = secret
        self._clock = clock
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        for e in entries:
            self._index(self.record_for(e, source="config"))

    def hash(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    def record_for(self, e: KeyEntry, *, source: str = "api", created_at: float | None = None,
                   rotated_from: str | None = None) -> KeyRecord:
        h = self.hash(e.key)
        prefix, last4 = display_parts(e.key)
        return KeyRecord(id=h[:16], hash=h, tenant=check_name(e.tenant, "tenant"), team=check_name(e.team, "team"),
                         role=e.role, prefix=prefix, last4=last4, name=e.name,
                         created_at=self._clock() if created_at is None else created_at, expires_at=e.expires_at,
                         allowed_models=e.allowed_models, allowed_providers=e.allowed_providers, limits=e.limits,
                         operator=e.operator, source=source, rotated_from=rotated_from)

    def _index(self, record: KeyRecord) -> None:
        old = self._by_id.get(record.id)
        if old is not None and old.hash != record.hash:
            self._by_hash.pop(old.hash, None)
        self._by_id[record.id] = record
        self._by_hash[record.hash] = record

    def _forget(self, key_id: str) -> None:
        old = self._by_id.pop(key_id, None)
        if old is not None:
            self._by_hash.pop(old.hash, None)

    def authenticate(self, key: str | None) -> Principal | None:
        """The principal of an active key; None for a missing, malformed, unknown, revoked or expired one."""
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            return None
        h = self.hash(key)
        record = self._by_hash.get(h)
        # The dict finds the candidate; the comparison that decides is constant-time.
        if record is None or not hmac.compare_digest(record.hash, h) or not record.active(self._clock()):
            return None
        return record.principal()

    def by_id(self, key_id: str) -> Principal | None:
        """The principal of an active key by its id (from the local index)."""
        record = self._by_id.get(key_id)
        return record.principal() if record is not None and record.active(self._clock()) else None

    def record(self, key_id: str) -> KeyRecord | None:
        """The stored record of a key in any state (from the local index)."""
        return self._by_id.get(key_id)

    async def fetch(self, key_id: str) -> KeyRecord | None:
        """The record as stored now (the in-memory ring has nothing fresher than its index)."""
        return self._by_id.get(key_id)

    @property
    def current(self) -> bool:
        """The index is known to hold every key as stored now (an in-memory ring always does)."""
        return True

    async def refresh(self, key: str | None) -> None:
        """Bring the index's entry for ``key`` up to date before ``authenticate`` (a no-op while current)."""

    def list(self, tenant: str, team: str | None = None) -> list[KeyRecord]:
        return sorted((r for r in self._by_id.values() if r.tenant == tenant and (team is None or r.team == team)),
                      key=lambda r: (r.created_at, r.id))

    def teams(self, tenant: str) -> set[str]:
        """Teams that have at least one key."""
        return {r.team for r in self._by_id.values() if r.tenant == tenant}


class KeyStore(KeyRing):
    """Keys in JetStream KV, with a watched local index so every replica sees changes within a second."""

    RESYNC_S = 60.0  # a fresh watch (full reload) this often, should a watch ever stall unnoticed

    def __init__(self, secret: bytes, seed: Iterable[KeyEntry] = (), clock: Callable[[], float] = time.time):
        super().__init__(secret, (), clock)
        self._seed = list(seed)
        for e in self._seed:  # refuse a bad configuration at start, before anything connects
            check_name(e.tenant, "tenant")
            check_name(e.team, "team")
        self._kv: KeyValue | None = None
        self._synced = asyncio.Event()
        self._live = False  # the watch is following the bucket right now
        self._bus: Bus | None = None
        self._epoch = -1  # the bus's connection epoch the live watch was loaded on
        self._resume = asyncio.Event()  # the connection is back: start the watch again now
        self.started = False

    async def start(self, bus: "Bus", timeout: float = 10.0, *, seed: bool = True) -> None:
        """Open the bucket, seed the configured keys (``seed``: a process whose role writes keys), load every key
        and keep watching."""
        self._kv = await bus.kv(KEYS)
        self._bus = bus
        for entry in self._seed if seed else ():
            await self._seed_one(entry)
        bus.on_reconnect(self._resume.set)
        bus.start(self._watch())
        await asyncio.wait_for(self._synced.wait(), timeout)
        self.started = True

    async def _seed_one(self, entry: KeyEntry) -> None:
        wanted = self.record_for(entry, source="config")

        def change(stored: KeyRecord | None) -> tuple[KeyRecord | None, None]:
            if stored is None:
                return wanted, None
            merged = msgspec.structs.replace(wanted, created_at=stored.created_at, revoked_at=stored.revoked_at,
                                             rotated_to=stored.rotated_to)
            if stored.source != "config" or merged == stored:
                return None, None  # made through the API, or already as configured
            return merged, None

        await cas(self._kv, wanted.id, _CODEC, change, what="key store")

    async def _watch(self) -> None:
        """Follow the bucket: a full load first (swapped in at once), then every change as it happens."""
        while True:
            watcher = None
            try:
                self._resume.clear()
                epoch = self._bus.epoch  # a connection lost from here on makes this load not current
                watcher = await self._kv.watchall()
                fresh: dict[str, KeyRecord] | None = {}
                loop = asyncio.get_running_loop()
                renew_at = loop.time() + self.RESYNC_S
                me = asyncio.current_task()
                while loop.time() < renew_at and not self._resume.is_set():
                    if me.cancelling():
                        # nats-py's ``updates`` uses asyncio.wait_for, which (Python 3.11) returns an update
                        # that arrived together with our cancellation instead of raising it: stop here.
                        raise asyncio.CancelledError
                    try:
                        # Short waits: a reconnection (``_resume``) starts a fresh watch within this long.
                        entry = await watcher.updates(timeout=min(0.2, max(0.05, renew_at - loop.time())))
                    except Exception:  # noqa: BLE001 - nats TimeoutError: nothing changed; maybe renew
                        continue
                    if entry is None:  # the initial values are all in
                        if fresh is not None:
                            self._by_id, self._by_hash = fresh, {r.hash: r for r in fresh.values()}
                            fresh = None
                            self._epoch = epoch
                            self._live = True
                            self._synced.set()
                        continue
                    if fresh is not None:
                        self._apply_to(fresh, entry)
                    else:
                        self._apply(entry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - watch again after a pause
                self._live = False  # until the next full load, reads go to KV
                log.warning("key watch failed, restarting: %r", exc)
                await asyncio.sleep(0.2)
            finally:
                if watcher is not None:
                    try:
                        await watcher.stop()
                    except Exception:  # noqa: BLE001 - the connection may be gone
                        pass

    @staticmethod
    def _apply_to(index: dict[str, KeyRecord], entry) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            index.pop(entry.key, None)
            return
        try:
            record = _CODEC.decode(entry.value)
        except msgspec.DecodeError:
            log.error("undecodable key record %s", entry.key)
            return
        index[record.id] = record

    def _apply(self, entry) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._forget(entry.key)
            return
        try:
            self._index(_CODEC.decode(entry.value))
        except msgspec.DecodeError:
            log.error("undecodable key record %s", entry.key)

    # ---- reads straight from KV ------------------------------------------------------------

    @property
    def current(self) -> bool:
        """The watched index holds every key as stored now: its watch is live, on the connection it loaded on."""
        bus = self._bus
        return self._live and bus is not None and bus.epoch == self._epoch and bus.connected

    async def fetch(self, key_id: str) -> KeyRecord | None:
        """The record as stored now: from the watched index while it is current (it follows every change
        within milliseconds), else straight from KV; raises ServiceUnavailable when KV cannot answer."""
        if not SAFE_KEY_ID.match(key_id or ""):
            return None
        if self.current:
            return self._by_id.get(key_id)
        return await read(self._kv, key_id, _CODEC, "key store")

    async def refresh(self, key: str | None) -> None:
        """While the index is not current, bring ``key``'s entry in it up to date from KV, so the synchronous
        ``authenticate`` that follows decides on the stored record; ServiceUnavailable (503, fail closed) when
        KV cannot answer."""
        if self.current or not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            return
        if self._bus is not None and not self._bus.connected:  # no KV to ask: refuse now, not after a timeout
            raise ServiceUnavailable("Not accepted: the event bus is unavailable, so the API key cannot be checked; "
                                     "the request will never run. Retrying is safe.", code="not_accepted",
                                     retry_after=1)
        key_id = self.hash(key)[:16]
        record = await read(self._kv, key_id, _CODEC, "key store")
        if record is None:
            self._forget(key_id)
        else:
            self._index(record)

    # ---- writes (admin API) ----------------------------------------------------------------

    async def create(self, entry: KeyEntry, rotated_from: str | None = None) -> KeyRecord:
        """Store a new key (``entry.key`` is the clear key, shown to its owner once and never kept)."""
        record = self.record_for(entry, rotated_from=rotated_from)
        if not await create(self._kv, record.id, _CODEC, record, "key store"):  # KV down: ServiceUnavailable (503)
            raise ValueError("a key with this hash exists already")
        self._index(record)  # read-your-writes here; other replicas get it from the watch
        return record

    async def change(self, key_id: str, fn: Callable[[KeyRecord], KeyRecord | None]) -> KeyRecord | None:
        """Compare-and-set ``fn`` over the stored record; None when there is no such key."""

        def step(current: KeyRecord | None) -> tuple[KeyRecord | None, KeyRecord | None]:
            if current is None:
                return None, None
            new = fn(current)
            if new is None or new == current:
                return None, current
            return new, new

        # Read-your-writes here; other replicas get the change from the watch.
        return await cas(self._kv, key_id, _CODEC, step, what="key store",
                         written=lambda new, _revision: self._index(new))

    async def revoke(self, key_id: str) -> KeyRecord | None:
        now = self._clock()
        return await self.change(key_id, lambda r: r if r.revoked_at is not None else
                                 msgspec.structs.replace(r, revoked_at=now))

    async def rotate(self, key_id: str, grace_s: float = 0.0) -> tuple[str, KeyRecord] | None:
        """A new key with the same attributes; the old one is revoked now, or expires after ``grace_s``."""
        old = await self.fetch(key_id)
        if old is None:
            return None
        if not old.active(self._clock()):
            raise ValueError("only an active key can be rotated")
        clear = generate_key()
        new = await self.create(KeyEntry(key=clear, tenant=old.tenant, team=old.team, role=old.role,
                                         operator=old.operator, name=old.name, expires_at=old.expires_at,
                                         allowed_models=old.allowed_models,
                                         allowed_providers=old.allowed_providers, limits=old.limits),
                                rotated_from=old.id)
        now = self._clock()

        def retire(r: KeyRecord) -> KeyRecord:
            if grace_s <= 0:
                return msgspec.structs.replace(r, rotated_to=new.id, revoked_at=r.revoked_at or now)
            ends = now + grace_s if r.expires_at is None else min(r.expires_at, now + grace_s)
            return msgspec.structs.replace(r, rotated_to=new.id, expires_at=ends)

        await self.change(key_id, retire)
        return clear, new
