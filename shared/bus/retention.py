"""Retention: an event leaves the stream once every service that reads it has acknowledged it.

The events carry payloads (the prompt before redaction, the redacted prompt
on every attempt, the completion), which are needed only until the services
that read them have handled them. ``Sweeper`` (run by audit, the stream's
keeper, every ``NatsSettings.sweep_s``; one stream-state and one consumer-list
call a round, nothing per message) removes them then:

- a consumer's *floor* is its ack floor (it has acknowledged everything it
  reads at or below). Holding nothing unacknowledged, it is raised to just
  before the next event the consumer reads, found in the stream itself (or to
  the stream's last event when there is none): a consumer whose filter matched
  nothing lately would otherwise hold everything back, and its own count of
  pending messages cannot be used for this, because the server acknowledges a
  publish before it tells the consumers about it;
- everything below the lowest floor of all consumers is purged stream-wide, which
  the server does by dropping whole blocks;
- when that floor lags (a reader ``SUBJECT_LAG`` events behind, or a subject
  waiting for its reader), each subject is also purged below the lowest floor of
  the consumers that read it, so one slow reader (a provider's backlog) keeps
  only its own subject's events (the server removes those one by one, so this
  is kept for when it matters);
- a subject that some role reads (``shared.bus.permissions.ROLES``) but none of
  that role's consumers reads yet is left alone: it is accepted work waiting for
  its reader (a provider whose worker has not started);
- an optional consumer (the audit export's, ``Role.optional``) holds events back
  like any other while it exists: what it has not exported is never purged; when
  it is not configured there is no such consumer and nothing waits for it;
- nats-server moves the read position of a consumer whose filter lies inside a
  purged subject to that subject's first remaining event, which for a consumer
  with several filters would skip its other filters' events: such subjects
  (the router's, policy settlement's) are left to the stream-wide purge, which
  no consumer can lose anything to.

Nothing a reader has not acknowledged is removed, and ``max_age_s`` still
bounds everything else. The server keeps its ``Nats-Msg-Id`` de-duplication
window apart from the messages, so a retried publish after a purge is still
recognised as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from nats.js.errors import NotFoundError

from shared.bus.permissions import ANY_DURABLE, ROLES

if TYPE_CHECKING:
    from shared.bus.core import Bus

log = logging.getLogger("switchyard.bus")

SUBJECT_LAG = 1000  # events the slowest reader may be behind before subjects are purged one by one


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


@dataclass(frozen=True)
class Reader:
    """A durable consumer as the sweep sees it."""

    name: str
    filters: tuple[str, ...]
    floor: int  # every message it reads at or below this sequence is acknowledged

    def reads(self, subject: str) -> bool:
        return any(subject_matches(f, subject) for f in self.filters)


def floor_of(acked: int, outstanding: int, next_unread: int | None, last_seq: int) -> int:
    """A consumer's floor from its ack floor, how many messages it holds unacknowledged and, when none, the
    sequence of the next event it reads (None: none up to now); ``last_seq`` is the stream's, read first."""
    if outstanding:
        return min(acked, last_seq)
    return last_seq if next_unread is None else min(last_seq, next_unread - 1)


async def reader_of(js, stream: str, info, last_seq: int) -> Reader:
    """A nats-py ``ConsumerInfo`` as a ``Reader`` (looking up its next event when it holds none)."""
    cfg = info.config
    filters = tuple(cfg.filter_subjects or ()) or ((cfg.filter_subject,) if cfg.filter_subject else (">",))
    acked = (info.ack_floor.stream_seq if info.ack_floor is not None else 0) or 0
    outstanding = info.num_ack_pending or 0
    next_unread = None if outstanding else await _next_event(js, stream, filters, acked + 1)
    return Reader(info.name, filters, floor_of(acked, outstanding, next_unread, last_seq))


async def _next_event(js, stream: str, filters: tuple[str, ...], seq: int) -> int | None:
    """The sequence of the first event at or after ``seq`` on any of ``filters`` (None: there is none)."""
    found = []
    for subject in filters:
        try:
            found.append((await js.get_msg(stream, seq=seq, subject=subject, next=True)).seq)
        except NotFoundError:
            continue
    return min(found, default=None)


def waiting_for_reader(subject: str, readers: Iterable[Reader]) -> bool:
    """Whether a role should read ``subject`` and none of that role's consumers does yet."""
    readers = list(readers)
    named = {d for r in ROLES.values() for d in r.durables if d != ANY_DURABLE}
    for role in ROLES.values():
        for durable, filters in role.durables.items():
            if not any(subject_matches(f, subject) for f in filters):
                continue
            if durable in role.optional:
                continue  # exists only when configured; while it exists, its floor holds the stream like any other
            mine = [r for r in readers if (r.name == durable if durable != ANY_DURABLE else r.name not in named)]
            if not any(r.reads(subject) for r in mine):
                return True
    return False


def plan(subjects: Iterable[str], readers: list[Reader], last_seq: int,
         subject_lag: int = SUBJECT_LAG) -> tuple[dict[str, int], int | None]:
    """What to purge: ``{subject: keep from this sequence}`` and the stream-wide sequence (None: not now).

    Subjects are purged one by one only when the stream-wide purge is held back: by a reader more than
    ``subject_lag`` events behind, or by a subject waiting for its reader.
    """
    subjects = list(subjects)
    waiting = [s for s in subjects if waiting_for_reader(s, readers)]
    overall = None if waiting else min((r.floor for r in readers), default=last_seq) + 1
    if overall is not None and last_seq + 1 - overall <= subject_lag:
        return {}, overall
    per_subject: dict[str, int] = {}
    for subject in subjects:
        if subject in waiting:
            continue
        # A consumer with several filters, one of them this very subject: only the stream-wide purge is safe.
        if any(len(r.filters) > 1 and subject in r.filters for r in readers):
            continue
        floor = min((r.floor for r in readers if r.reads(subject)), default=last_seq)
        if floor > 0:
            per_subject[subject] = floor + 1
    return per_subject, overall


class Sweeper:
    """Purges what every reader acknowledged, round after round (see the module docstring)."""

    def __init__(self, bus: "Bus", subject_lag: int = SUBJECT_LAG) -> None:
        self.bus = bus
        self.subject_lag = subject_lag
        self._done: dict[str, int] = {}  # the sequence each subject was last purged below (no repeated calls)
        self._warned: set[str] = set()

    async def run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.bus.settings.sweep_s)
            try:
                await self.sweep()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again; max_age still bounds the stream
                if not failing:
                    log.warning("stream sweep failed (retrying every %gs): %r", self.bus.settings.sweep_s, exc)
                failing = True

    async def sweep(self) -> None:
        js, stream = self.bus.js, self.bus.settings.stream
        info = await js.stream_info(stream, subjects_filter=">")
        self.bus.capacity.observe(info)  # the keeper reports the stream's fill as well
        last = info.state.last_seq
        readers = [await reader_of(js, stream, c, last) for c in await _all_consumers(js, stream)]
        subjects = [s for s, n in (info.state.subjects or {}).items() if n]
        per_subject, overall = plan(subjects, readers, last, self.subject_lag)
        waiting = {s for s in subjects if waiting_for_reader(s, readers)} - self._warned
        for s in waiting:
            log.warning("stream sweep: events on %s wait for a reader that has no consumer yet; kept", s)
        self._warned |= waiting
        self._done = {k: v for k, v in self._done.items() if k in per_subject or k == ""}
        for subject, keep_from in per_subject.items():
            if keep_from > self._done.get(subject, 0):
                await js.purge_stream(stream, seq=keep_from, subject=subject)
                self._done[subject] = keep_from
        if overall is not None and overall > (info.state.first_seq or 0) and overall > self._done.get("", 0):
            await js.purge_stream(stream, seq=overall)
            self._done[""] = overall


async def _all_consumers(js, stream: str) -> list:
    out: list = []
    while True:
        page = await js.consumers_info(stream, offset=len(out) or None)
        out.extend(page)
        if len(page) < 256:
            return out
