"""Seeded randomness: every random choice the router makes is a pure function of the request id.

A draw is ``sha256(key | purpose)`` read as a number in [0, 1), so the same
request always draws the same numbers (a redelivered message decides the
same way) and the trace can record them.
"""

from __future__ import annotations

import hashlib
import random


def digest(key: str, purpose: str) -> bytes:
    return hashlib.sha256(f"{key}|{purpose}".encode()).digest()


def uniform(key: str, purpose: str) -> float:
    """A number in [0, 1) determined by ``key`` and ``purpose``."""
    return int.from_bytes(digest(key, purpose)[:8], "big") / 2**64


def rng(key: str, purpose: str) -> random.Random:
    """A generator seeded from ``key`` and ``purpose`` (for draws from Beta and normal distributions)."""
    return random.Random(int.from_bytes(digest(key, purpose)[:16], "big"))


def seed_hex(key: str) -> str:
    """A short fingerprint of the seed, for the trace."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]
