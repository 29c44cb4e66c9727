"""The batch lane yields to the API in a process that serves both.

Where the gateway shares its process (and core) with the pipeline (``make run``'s shape), every job the
pipeline drains takes event-loop time from the requests the API is answering: accepting jobs, and
interactive requests waiting on their own lane. Job intake then slows to the pace of its own drain. A split
deployment gets the same priority from the operating system (the pipeline's processes run at a lower CPU
priority, ``SWITCHYARD_NICE``); one event loop has no such thing, so the lane's first stage reads fewer
messages at once while the API is busy. Jobs wait in the stream meanwhile (durable, as they already were),
the lane keeps a window of its own so it never stops, and it reads its full window again once the API is
quiet. A process without the gateway counts no requests and never yields.
"""

from __future__ import annotations

from typing import Callable


class Serving:
    """Requests this process's API is answering now, and the window a yielding consumer reads with.

    ``busy_at`` requests at once make the API busy (0: never); it is quiet again at half that, so the window
    does not flap with every request around the threshold. While busy, a yielding consumer reads at most
    ``window`` messages at once.
    """

    def __init__(self, busy_at: int = 0, window: int = 4) -> None:
        self.busy_at = busy_at
        self.quiet_at = busy_at // 2
        self.floor = max(1, window)
        self.active = 0
        self.busy = False
        self._on_quiet: list[Callable[[], None]] = []

    def started(self) -> None:
        self.active += 1
        if not self.busy and self.busy_at and self.active >= self.busy_at:
            self.busy = True

    def finished(self) -> None:
        self.active -= 1
        if self.busy and self.active <= self.quiet_at:
            self.busy = False
            for fn in self._on_quiet:
                fn()

    def window(self, full: int) -> int:
        """The window a yielding consumer of ``full`` messages reads with now."""
        return min(full, self.floor) if self.busy else full

    def on_quiet(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` whenever the API turns quiet (a yielding consumer reads its full window again at once)."""
        self._on_quiet.append(fn)
