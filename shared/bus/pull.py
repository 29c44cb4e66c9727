"""The pull loop: how a durable consumer's messages reach the bus, one long-lived pull request at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.bus.contract import Subscription
from shared.settings import NatsSettings

log = logging.getLogger("switchyard.bus")


class Owner(Protocol):
    """What a pull loop uses of the bus that runs it."""

    nc: NATS
    settings: NatsSettings

    async def subscribe(self, subject: str, fn: Callable[[Msg], None], queue: str = "") -> Any: ...

    async def ensure_consumer(self, sub: Subscription) -> None: ...

    def start(self, coro: Awaitable) -> asyncio.Task: ...


class PullLoop:
    """A durable consumer read with one long-lived pull request topped up as messages arrive.

    Instead of a request/response ``fetch`` per batch, a pull for up to ``max_outstanding`` messages
    stays open on the server (``expires`` long, with idle heartbeats); whenever the messages still
    owed plus those being handled drop to half the window, another pull asks for the difference.
    Status messages keep the count honest: 408 (pull expired) and 409 (pull cancelled) return the
    messages they say were not delivered; a missed heartbeat or a reconnect starts over.
    """

    EXPIRES_S = 30.0
    HEARTBEAT_S = 5.0

    def __init__(self, bus: Owner, sub: Subscription, max_outstanding: int, deliver: Callable[[Msg], None],
                 limit: Callable[[int], int] | None = None) -> None:
        """``limit``: the window to read with now, given the full one (a batch lane yielding to the API of its
        process, ``shared/bus/serving.py``); messages already asked for still arrive."""
        self.bus = bus
        self.sub = sub
        self.window = max(1, max_outstanding)
        self._limit = limit
        self.owed = 0  # messages requested and not yet delivered or released by a status
        self.busy = 0  # messages delivered and not yet finished
        self.deliver = deliver
        self.last_seen = 0.0
        self._inbox = ""
        self._nsub = None
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{bus.settings.stream}.{sub.durable}"
        self._watch: asyncio.Task | None = None
        self._reconnects = 0
        self.draining = False  # no more pulls; anything still arriving is handed back

    async def start(self) -> None:
        nc = self.bus.nc
        self._inbox = nc.new_inbox()
        self._nsub = await self.bus.subscribe(self._inbox, self._on_msg)
        self._watch = asyncio.ensure_future(self._watchdog())
        await self._refill()

    async def drain(self) -> None:
        """Stop pulling (the process is shutting down): no new pull requests, and the open one withdrawn.

        The inbox is unsubscribed and a round trip made, so every message the server sent before it knew is
        seen here and handed back (nak) for another replica; once the server has processed the unsubscribe
        it drops the pull request, having no one to deliver to.
        """
        self.draining = True
        if self._watch is not None:
            self._watch.cancel()
        if self._nsub is not None:
            try:
                await self._nsub.drain()
            except Exception as exc:  # noqa: BLE001 - connection gone: its messages come back after ack_wait
                log.debug("pull %s: drain failed: %r", self.sub.durable, exc)
            self._nsub = None

    async def stop(self) -> None:
        self.draining = True  # for good: a late kick asks for nothing
        if self._watch is not None:
            self._watch.cancel()
        if self._nsub is not None:
            try:
                await self._nsub.unsubscribe()
            except Exception:  # noqa: BLE001 - connection already gone
                pass

    def _on_msg(self, msg: Msg) -> None:
        self.last_seen = time.monotonic()
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self.owed = max(0, self.owed - 1)
            if self.draining:
                self.bus.start(_hand_back(msg))
                return
            self.busy += 1
            self.deliver(msg)
            return
        if status == "100":  # idle heartbeat: the pull is alive
            return
        pending = msg.headers.get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            self.owed = max(0, self.owed - int(pending))
        else:
            self.owed = 0
        if status not in ("408", "404"):
            log.info("pull %s: status %s %s", self.sub.durable, status, msg.headers.get("Description", ""))
        self.bus.start(self._refill())

    def _window(self) -> int:
        return self.window if self._limit is None else max(1, self._limit(self.window))

    async def _refill(self) -> None:
        window = self._window()
        want = window - self.owed - self.busy
        if self.draining or want <= 0 or (self.owed + self.busy > window // 2 and self.owed > 0):
            return
        req = {"batch": want, "expires": int(self.EXPIRES_S * 1e9), "idle_heartbeat": int(self.HEARTBEAT_S * 1e9)}
        self.owed += want
        try:
            await self.bus.nc.publish(self._api, msgspec.json.encode(req), reply=self._inbox)
        except Exception as exc:  # noqa: BLE001 - the watchdog asks again
            self.owed -= want
            log.debug("pull request failed: %r", exc)

    async def _watchdog(self) -> None:
        """Start over when the server stops answering (a lost pull, a reconnect, a restarted consumer)."""
        while True:
            await asyncio.sleep(self.HEARTBEAT_S)
            stale = time.monotonic() - self.last_seen > 2 * self.HEARTBEAT_S + 1
            reconnected = self.bus.nc.stats.get("reconnects", 0) != self._reconnects
            if (stale and self.owed) or reconnected:
                self._reconnects = self.bus.nc.stats.get("reconnects", 0)
                self.owed = 0
                if reconnected:
                    try:
                        await self.bus.ensure_consumer(self.sub)
                    except Exception as exc:  # noqa: BLE001 - try again next round
                        log.warning("consumer %s not recreated yet: %r", self.sub.durable, exc)
                        continue
            await self._refill()

    def done(self, _: object = None) -> None:
        """One delivered message is finished: make room for more."""
        self.busy -= 1
        if self.owed + self.busy <= self._window() // 2 and not self.draining:
            self.bus.start(self._refill())

    def kick(self) -> None:
        """The window may have grown: ask for the difference now rather than at the next finished message."""
        if not self.draining:
            self.bus.start(self._refill())


async def _hand_back(msg: Msg) -> None:
    """A message that arrived after draining began: straight back to the stream for another replica."""
    try:
        await msg.nak()
    except Exception as exc:  # noqa: BLE001 - connection gone: redelivered after ack_wait instead
        log.debug("hand back failed: %r", exc)
