"""Who is calling: API keys resolved to a principal (tenant, team, role).

Until the governance work moves keys into JetStream KV, keys come from
configuration. Keys are never kept or logged in clear: the ring stores
``HMAC-SHA256(secret, key)`` and compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Iterable, Literal

Role = Literal["admin", "member", "viewer"]


@dataclass(frozen=True)
class Principal:
    """The identity a request is attributed to; taken only from the key, never from the body."""

    key_id: str
    tenant: str
    team: str
    role: Role = "member"


@dataclass(frozen=True)
class KeyEntry:
    """A configured key (the secret itself is hashed on load)."""

    key: str
    tenant: str = "default"
    team: str = "default"
    role: Role = "member"


def generate_key(prefix: str = "sk-sy-") -> str:
    return prefix + secrets.token_urlsafe(32)


class KeyRing:
    """Looks keys up by their HMAC; holds no clear-text key."""

    def __init__(self, secret: bytes, entries: Iterable[KeyEntry]) -> None:
        self._secret = secret
        self._by_hash: dict[str, Principal] = {}
        for e in entries:
            h = self.hash(e.key)
            self._by_hash[h] = Principal(key_id=h[:16], tenant=e.tenant, team=e.team, role=e.role)
        self._by_id = {p.key_id: p for p in self._by_hash.values()}

    def hash(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    def authenticate(self, key: str | None) -> Principal | None:
        if not key or len(key) > 256:
            return None
        h = self.hash(key)
        for known, principal in self._by_hash.items():
            # Constant-time comparison; the ring is small until keys move to KV.
            if hmac.compare_digest(known, h):
                return principal
        return None

    def by_id(self, key_id: str) -> Principal | None:
        return self._by_id.get(key_id)
