"""Rules every pipeline stage applies the same way: deadlines and poison messages end in a terminal event."""

from __future__ import annotations

import time
from typing import Sequence

from shared.bus import Delivery, Handler
from shared.errors import DeadlineExceeded, InternalError, SwitchyardError
from shared.events import (
    AnyEvent,
    AttemptDispatched,
    AttemptFailed,
    CompletionExpired,
    CompletionFailed,
    Event,
    terminal_id,
)


def history_of(event: AnyEvent) -> list:
    if isinstance(event, AttemptDispatched):
        return list(event.history)
    if isinstance(event, AttemptFailed):
        return list(event.dispatch.history)
    return []


def expired(event: AnyEvent, now: float | None = None) -> CompletionExpired:
    """The terminal event of a request whose deadline passed."""
    now = time.time() if now is None else now
    late = now - event.ctx.deadline
    err = DeadlineExceeded(f"the request's deadline passed {late:.3f}s ago before it could finish")
    return CompletionExpired(event_id=terminal_id(event.request_id), request_id=event.request_id, ctx=event.ctx,
                             error=err.info(), history=history_of(event))


def poison(event: AnyEvent, exc: BaseException) -> Sequence[Event]:
    """A message that failed on every delivery still ends its request: with a terminal failure."""
    if getattr(type(event), "terminal", False):
        return []
    err = exc if isinstance(exc, SwitchyardError) else InternalError(f"processing failed repeatedly: {exc!r}")
    return [CompletionFailed(event_id=terminal_id(event.request_id), request_id=event.request_id, ctx=event.ctx,
                             error=err.info(), history=history_of(event))]


def with_deadline(handler: Handler) -> Handler:
    """Drop work past its deadline with a terminal ``expired`` event instead of doing it."""

    async def guarded(event: AnyEvent, delivery: Delivery) -> Sequence[Event]:
        if not getattr(type(event), "terminal", False) and event.ctx.remaining() <= 0:
            return [expired(event)]
        return await handler(event, delivery)

    return guarded
