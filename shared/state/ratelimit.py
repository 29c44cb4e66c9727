"""Requests-per-minute and tokens-per-minute limits shared by every policy replica (GCRA in JetStream KV).

The algorithm is GCRA (the generic cell rate algorithm, a leaky bucket kept
as one timestamp). A limit of ``L`` per minute gives each unit an emission
interval ``T = 60 s / L``; the state is the *theoretical arrival time*
``tat``. A request costing ``c`` units (1 for RPM, its token estimate for TPM)
arriving at ``now`` is admitted iff

    max(tat, now) + c·T − now ≤ 60 s                  (a burst of up to L at once)

and then ``tat`` becomes ``max(tat, now) + c·T``. Starting from rest exactly
``L`` requests fit at once and capacity refills continuously at ``L`` per
minute — no boundary burst as with fixed windows, and exact (unlike
sliding-window estimates). ``remaining`` is how many more units fit now;
``reset`` is when the bucket is back to full (``tat − now``); a refused
request may retry after ``tat + c·T − 60 s − now``.

Each scope — a key (``key.<key_id>``) or a team (``team.<tenant>.<team>``) —
is one entry in ``sy_ratelimits`` holding both timestamps, updated with one
compare-and-set, so RPM and TPM of a scope are taken together or not at all.
All scopes of a request are taken at once (one round trip); when one refuses,
those taken are given back (``tat −= c·T``), so a refused request consumes no
quota anywhere. The bucket's entries expire 2 minutes after their last write, when
their state is "at rest" anyway.

TPM counts what admission can know: the estimated prompt tokens plus the
output cap (``max_tokens``, or the model's maximum), as OpenAI's own limits do.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Callable

from msgspec import Struct
from nats.js.kv import KeyValue

from shared.state.kv import Codec, GroupCommit, read
from shared.state.scopes import scope_label

WINDOW_S = 60.0
EPSILON = 1e-6  # float slack, so L requests at one instant all fit


class RateState(Struct, kw_only=True, omit_defaults=True):
    """A scope's GCRA timestamps (epoch seconds)."""

    rpm_tat: float = 0.0
    tpm_tat: float = 0.0


class RateScope(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A scope and its limits per minute (None: no limit)."""

    key: str
    rpm: int | None = None
    tpm: int | None = None

    @property
    def label(self) -> str:
        return scope_label(self.key)


class Gauge(Struct, frozen=True, kw_only=True):
    """One limit as seen by one request: what the x-ratelimit-* headers report."""

    limit: int
    remaining: int
    reset_s: float


class Verdict(Struct, frozen=True, kw_only=True):
    """The outcome of one scope: admitted or not, and the gauges of both dimensions."""

    allowed: bool
    scope: str
    label: str
    requests: Gauge | None = None
    tokens: Gauge | None = None
    refused: str | None = None  # "requests" / "tokens"
    retry_after: float = 0.0


class RateRefused(Exception):
    """A rate limit refused the request; ``gauges`` are the headers to send with the 429."""

    def __init__(self, verdict: Verdict, gauges: dict[str, Gauge]) -> None:
        what = "requests" if verdict.refused == "requests" else "tokens"
        gauge = verdict.requests if what == "requests" else verdict.tokens
        super().__init__(f"Rate limit of {gauge.limit} {what} per minute for {verdict.label} reached; "
                         f"try again in {verdict.retry_after:.2f}s.")
        self.verdict = verdict
        self.gauges = gauges


def gcra(tat: float, now: float, cost: int, limit: int) -> tuple[bool, float, Gauge, float]:
    """One GCRA decision: (allowed, new tat, gauge, retry_after)."""
    interval = WINDOW_S / limit
    start = max(tat, now)
    new = start + cost * interval
    if new - now <= WINDOW_S + EPSILON:
        remaining = int(math.floor((WINDOW_S - (new - now)) / interval + EPSILON))
        return True, new, Gauge(limit=limit, remaining=max(0, remaining), reset_s=new - now), 0.0
    remaining = int(math.floor((WINDOW_S - (start - now)) / interval + EPSILON))
    return False, tat, Gauge(limit=limit, remaining=max(0, remaining), reset_s=max(0.0, start - now)), \
        new - WINDOW_S - now


def acquire_change(state: RateState | None, scope: RateScope, tokens: int,
                   now: float) -> tuple[RateState | None, Verdict]:
    s = state or RateState()
    rpm_tat, tpm_tat = s.rpm_tat, s.tpm_tat
    req = tok = None
    refused, retry = None, 0.0
    if scope.rpm:
        ok, rpm_tat, req, wait = gcra(s.rpm_tat, now, 1, scope.rpm)
        if not ok:
            refused, retry = "requests", wait
    if scope.tpm:
        ok, tpm_tat, tok, wait = gcra(s.tpm_tat, now, tokens, scope.tpm)
        if not ok and refused is None:
            refused, retry = "tokens", wait
        elif not ok:
            retry = max(retry, wait)
    if refused is not None:
        # Nothing is taken when either dimension refuses; the gauges report the state as it is.
        req = _as_is(s.rpm_tat, now, scope.rpm) if scope.rpm else None
        tok = _as_is(s.tpm_tat, now, scope.tpm) if scope.tpm else None
        return None, Verdict(allowed=False, scope=scope.key, label=scope.label, requests=req, tokens=tok,
                             refused=refused, retry_after=retry)
    return RateState(rpm_tat=rpm_tat, tpm_tat=tpm_tat), Verdict(allowed=True, scope=scope.key, label=scope.label,
                                                                requests=req, tokens=tok)


def _as_is(tat: float, now: float, limit: int) -> Gauge:
    interval = WINDOW_S / limit
    ahead = max(0.0, tat - now)
    return Gauge(limit=limit, remaining=max(0, int(math.floor((WINDOW_S - ahead) / interval + EPSILON))),
                 reset_s=ahead)


def rollback_change(state: RateState | None, scope: RateScope, tokens: int) -> tuple[RateState | None, None]:
    if state is None:
        return None, None
    rpm = state.rpm_tat - (WINDOW_S / scope.rpm if scope.rpm else 0.0)
    tpm = state.tpm_tat - (tokens * WINDOW_S / scope.tpm if scope.tpm else 0.0)
    return RateState(rpm_tat=rpm, tpm_tat=tpm), None


def tightest(verdicts: list[Verdict]) -> dict[str, Gauge]:
    """Per dimension, the gauge with the least remaining across scopes (what the client must respect)."""
    out: dict[str, Gauge] = {}
    for v in verdicts:
        for name, g in (("requests", v.requests), ("tokens", v.tokens)):
            if g is not None and (name not in out or (g.remaining, -g.reset_s) < (out[name].remaining,
                                                                                    -out[name].reset_s)):
                out[name] = g
    return out


def headers(gauges: dict[str, Gauge]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers."""
    out: dict[str, str] = {}
    for name, g in gauges.items():
        out[f"x-ratelimit-limit-{name}"] = str(g.limit)
        out[f"x-ratelimit-remaining-{name}"] = str(g.remaining)
        out[f"x-ratelimit-reset-{name}"] = duration(g.reset_s)
    return out


def duration(seconds: float) -> str:
    """Go-style durations as OpenAI sends them: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{int(round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest_s = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_s}s" if minutes else f"{rest_s}s"


class RateLimiter:
    """Takes RPM/TPM for a request in every scope, all or nothing."""

    def __init__(self, kv: KeyValue | None, *, clock: Callable[[], float] = time.time, cas_timeout_s: float = 5.0):
        self.kv = kv
        self.clock = clock
        self.codec = Codec(RateState)
        self.cas_timeout_s = cas_timeout_s
        # Every request of a key (and of its tenant) writes the same entry: batch concurrent writes (see
        # ``shared.state.kv.GroupCommit``), so a flood is refused with 429s, never with contention 503s.
        self._writes = GroupCommit(kv, self.codec, timeout_s=cas_timeout_s, what="rate-limit store")

    async def _cas(self, key: str, change):
        return await self._writes.cas(key, change)

    async def acquire(self, scopes: list[RateScope], tokens: int) -> dict[str, Gauge]:
        """Take one request and ``tokens`` in every scope; RateRefused (with nothing taken) otherwise.

        The scopes are separate entries, so they are taken concurrently (one round trip, not one per scope);
        when any refuses or cannot be reached, those taken are given back.
        """
        # The clock is read on every compare-and-set attempt: a retried attempt must not judge with the time
        # of its first try (its gauges would be off by a unit).
        outcomes = await asyncio.gather(
            *(self._cas(scope.key, lambda s, sc=scope: acquire_change(s, sc, tokens, self.clock()))
              for scope in scopes), return_exceptions=True)
        verdicts = [o for o in outcomes if isinstance(o, Verdict)]
        failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
        refused = next((v for v in verdicts if not v.allowed), None)
        if failed is not None or refused is not None:
            taken = [sc for sc, o in zip(scopes, outcomes) if isinstance(o, Verdict) and o.allowed]
            await self.rollback(taken, tokens, quiet=True)
            if failed is not None:
                raise failed
            raise RateRefused(refused, tightest(verdicts))
        return tightest(verdicts)

    async def rollback(self, scopes: list[RateScope], tokens: int, quiet: bool = False) -> None:
        """Give back what ``acquire`` took (a later check refused the request)."""
        for scope in scopes:
            try:
                await self._cas(scope.key, lambda s, sc=scope: rollback_change(s, sc, tokens))
            except Exception:  # noqa: BLE001
                if not quiet:
                    raise

    async def state(self, key: str) -> RateState | None:
        return await read(self.kv, key, self.codec, "rate-limit store")

    def gauges(self, state: RateState | None, scope: RateScope) -> dict[str, Gauge]:
        """The scope's gauges right now, without taking anything."""
        s = state or RateState()
        now = self.clock()
        out = {}
        if scope.rpm:
            out["requests"] = _as_is(s.rpm_tat, now, scope.rpm)
        if scope.tpm:
            out["tokens"] = _as_is(s.tpm_tat, now, scope.tpm)
        return out
