"""Attempt marks: what has become of each attempt of a request, so no stage acts twice on one.

A JetStream server killed before its acknowledgements reached the disk
delivers already-handled messages again as *first* deliveries: the delivery
count cannot tell a replay from new work. The stages that act on the world
(a worker calls a provider; a router dispatches the next attempt or ends the
request) therefore keep one mark per attempt in ``sy_attempts``, key
``<request_id>.<attempt>``, and read it before acting:

    calling <until>   a worker claimed the attempt (compare-and-set create) and calls
                      the provider; ``until`` is when that call must be over
    done              the worker published the attempt's outcome
    ended             the router ended the request after the attempt before this one
                      (no attempt with this number may run)

A worker calls the provider only for an attempt it claims: a mark ``done`` or
``ended`` means the outcome is in the stream already (the message is only
acknowledged); ``calling`` by a delivery the server still counts as the first
means another call may be running (the message waits, ``Defer``), and one
whose time ran out, or that the server redelivered, was abandoned: its call
is made again knowingly (``AttemptAbandoned``, as before). A router that
finds the next attempt marked (claimed or ended) has decided on this failure
already and does nothing. Each mark is written after what it says is durable
in the stream (the outcome, the terminal), so a process that dies in between
leaves a mark that errs on the side of acting again, never of losing an end.

Costs on the request path: one create per attempt before the call (a round
trip, ~0.15 ms on a local server), and after its outcome one ``done`` sent
without waiting for the server's acknowledgement (``send``: a plain publish to
the key's subject, which the bucket stores all the same; should it be lost, a
replay finds the claim and, once its time is out, calls again knowingly). The
router touches marks only after a failure. Marks expire after an hour: a
replay can only come from messages still within their deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from nats.js.kv import KeyValue

from shared.errors import ServiceUnavailable
from shared.state.buckets import ATTEMPTS
from shared.state.kv import is_conflict, kv_get

CALLING = "calling"
DONE = "done"
ENDED = "ended"


@dataclass(frozen=True)
class Mark:
    """An attempt's mark as read: its state, when a call must be over (``calling``), and its revision."""

    state: str
    until: float = 0.0
    revision: int = 0

    @classmethod
    def parse(cls, value: bytes, revision: int) -> "Mark":
        state, _, until = value.decode().partition(" ")
        return cls(state=state, until=float(until) if until else 0.0, revision=revision)


_CREATE = {"Nats-Expected-Last-Subject-Sequence": "0"}


def key(request_id: str, attempt: int) -> str:
    return f"{request_id}.{attempt}"


class AttemptMarks:
    """The marks of one process's stages (``kv``: the ``sy_attempts`` bucket)."""

    def __init__(self, kv: KeyValue, send: Callable[[str, bytes], Awaitable[None]] | None = None,
                 publish: Callable[[str, bytes, dict[str, str]], Awaitable[object]] | None = None) -> None:
        self.kv = kv
        self.send = send  # a plain (unacknowledged) publish, for the marks nothing waits on
        self.publish = publish  # the bus's lean acknowledged publish, for the claim on the request path

    async def claim(self, request_id: str, attempt: int, until: float) -> Mark | None:
        """Claim the attempt for a call that ends by ``until``: None when claimed, else the mark that stands."""
        value = f"{CALLING} {until:.3f}".encode()
        try:
            if self.publish is None:
                await self.kv.create(key(request_id, attempt), value)
            else:  # what KeyValue.create sends, without its per-call overhead: "only if the key has no value"
                await self.publish(f"$KV.{ATTEMPTS.name}.{key(request_id, attempt)}", value, _CREATE)
            return None
        except Exception as exc:  # noqa: BLE001 - a conflict is an answer; anything else means "unknown"
            if not is_conflict(exc):
                raise ServiceUnavailable("the attempt marks are unavailable") from exc
        mark = await self.get(request_id, attempt)
        if mark is None:  # gone between the two calls (expired): claim again
            return await self.claim(request_id, attempt, until)
        return mark

    async def retake(self, request_id: str, attempt: int, mark: Mark, until: float) -> bool:
        """Take over an abandoned claim (compare-and-set on its revision); False when another took it first."""
        try:
            await self.kv.update(key(request_id, attempt), f"{CALLING} {until:.3f}".encode(), last=mark.revision)
            return True
        except Exception as exc:  # noqa: BLE001
            if is_conflict(exc):
                return False
            raise ServiceUnavailable("the attempt marks are unavailable") from exc

    async def get(self, request_id: str, attempt: int) -> Mark | None:
        entry = await kv_get(self.kv, key(request_id, attempt), "attempt marks")
        return None if entry is None or not entry.value else Mark.parse(entry.value, entry.revision or 0)

    async def done(self, request_id: str, attempt: int) -> None:
        """The attempt's outcome is in the stream."""
        if self.send is None:
            await self.kv.put(key(request_id, attempt), DONE.encode())
        else:
            await self.send(f"$KV.{ATTEMPTS.name}.{key(request_id, attempt)}", DONE.encode())

    async def ended(self, request_id: str, attempt: int) -> None:
        """The request ended before attempt ``attempt`` (the router's terminal is in the stream): none may run."""
        try:
            await self.kv.create(key(request_id, attempt), ENDED.encode())
        except Exception as exc:  # noqa: BLE001 - already marked (claimed meanwhile): the claim stands
            if not is_conflict(exc):
                raise ServiceUnavailable("the attempt marks are unavailable") from exc
