"""Busy polling: the event loop keeps turning for a short window after each message instead of sleeping.

Plain asyncio, nothing of nats-py: the bus pokes it on every message it reads, the gateway on every request.
"""

from __future__ import annotations

import asyncio
import os
import time


class BusyPoll:
    """Keeps the event loop polling, not sleeping, for ``window_s`` after each message.

    A request crosses a Switchyard process several times, a few hundred microseconds apart (a PubAck, the
    next stage's delivery, the provider's answer). Sleeping through each gap and being woken for the next
    message is what an event loop does, and on a virtual machine it is expensive: the idle vCPU halts, and
    waking it costs more CPU and time than handling the message. Measured with everything in one process
    on a small VM, against an identical system without it, polling lowered latency at the same CPU per
    request, its own polling included (figures in docs/performance/).

    So each message re-opens a short window during which a callback re-queued on every turn makes the loop
    poll without blocking (yielding the core to any other runnable thread each time). Once a window passes
    with no message the loop sleeps as usual: an idle process costs nothing, and under load the loop never
    sleeps anyway. ``window_s`` 0 turns it off.

    It pays only where the process has a core to itself while it waits: one process running the whole
    request path. With one process per target sharing the same cores it cost more than it saved, in both
    latency and CPU per request, each process polling while another needed the core; so by default
    (``busy_poll_us`` unset) only a process with gateway, policy, router and worker polls, and in
    Kubernetes, where each pod's CPU is a quota, a split process does not burn it.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._until = 0.0
        self._armed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def poke(self) -> None:
        """A message arrived (or a request came in): keep polling for another window."""
        if self.window_s <= 0 or self._loop is None:
            return
        self._until = time.monotonic() + self.window_s
        if not self._armed:
            self._armed = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        if time.monotonic() < self._until:
            os.sched_yield()  # let another runnable thread of this core go first
            self._loop.call_soon(self._turn)
        else:
            self._armed = False
