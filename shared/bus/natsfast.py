"""The fast path through nats-py: every use of its private attributes and internal behaviour, in one place.

Written against and checked with nats-py 2.16 (``NATS_PY``, the range pinned in pyproject.toml);
``tests/unit/test_bus_natsfast.py`` fails, naming what moved, if the installed nats-py no longer does
what these patches rely on. Re-check them before widening the pin.

What this module relies on, beyond nats-py's public API:

``nats.aio.subscription.Subscription``
    ``_pending_queue``       replaced by ``_DirectQueue``; the client's read loop hands each message to its
                             ``put_nowait``, and the subscription itself calls ``qsize`` (``pending_msgs``),
                             ``empty`` (``unsubscribe``), ``task_done`` and ``join`` (``drain``, which also
                             tests the queue's truth value)
    ``_wait_for_msgs_task``  the per-subscription task that reads the queue; cancelled
    ``_pending_size``        bytes counted in by the read loop before ``put_nowait``; ``_DirectQueue``
                             counts them out
``nats.aio.client.Client._pending`` / ``_pending_data_size``
    the outgoing buffer: commands wait there for the flusher and, while the client reconnects, until it is
    connected again, when they all go out. ``withdraw`` takes a publish out again (found by the head nats-py's
    ``pub_cmd``/``hpub_cmd`` give it: ``HPUB <subject> <reply> ``), so one its caller gave up on never goes
    out later; ``is_connected`` says whether a publish would wait there
``nats.aio.client.Client._process_msg``
    adds a message's size to ``_pending_size`` and calls ``_pending_queue.put_nowait`` for a callback
    subscription (the read-loop behaviour ``subscribe_direct`` takes over)
``nats.js.kv.KeyValue``
    ``KeyValue(name=, stream=, pre=, js=, direct=)``  built directly, over ``LeanJetStream``
    ``_js``                  every write goes through ``_js.publish(subject, payload, headers=, msg_ttl=)``, a
                             latest-value read through ``_js.get_msg(stream, subject=, seq=None, direct=)``,
                             and anything else (``stream_info``, ``purge_stream``, ``subscribe``,
                             ``_timeout`` for watches) through the ``__getattr__`` proxy to nats-py's context
    ``_get``                 turns ``NotFoundError`` into ``KeyNotFoundError`` raised while handling it, so the
                             JetStream error code stays reachable as ``__context__.err_code``
``nats.js.errors``
    ``Error.from_error(dict)`` raises the ``APIError`` subclass for a JetStream API error body;
    ``APIError`` / ``NotFoundError`` take ``code=``, ``err_code=``, ``description=``
``nats.js.api.RawStreamMsg(subject=, seq=, data=, headers=)``
    what ``get_msg`` returns, built from a direct get's headers
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, NotFoundError
from nats.js.kv import KeyValue

from shared.aio import wait_future
from shared.bus.contract import NO_MESSAGE, PubAck

log = logging.getLogger("switchyard.bus")

NATS_PY = ">=2.16,<2.17"  # the nats-py versions these patches were checked against (pyproject.toml pins the same)


def _nothing() -> None:
    pass


class _DirectQueue:
    """Stands in for a nats-py subscription's pending queue: each message goes to ``fn`` as it is parsed."""

    def __init__(self, sub, fn: Callable[[Msg], None], poke: Callable[[], None]) -> None:
        self._sub = sub
        self._fn = fn
        self._poke = poke

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)
        self._poke()
        try:
            self._fn(msg)
        except Exception:  # noqa: BLE001 - never into the client's read loop
            log.exception("message handler for %s failed", msg.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        return None


async def subscribe_direct(nc: NATS, subject: str, fn: Callable[[Msg], None], queue: str = "",
                           poke: Callable[[], None] = _nothing):
    """A core subscription whose messages go to ``fn`` straight from the client's read loop.

    nats-py hands every message of a callback subscription to an ``asyncio.Queue`` read by a task of its
    own: a queue put, a task wake-up and one more turn of the event loop per message, on each hop of each
    request. ``fn`` is synchronous and cheap (it resolves a future or starts a task), so it takes the
    queue's place. Should nats-py's internals not look as expected, its ordinary callback path is kept.
    Each message also calls ``poke`` (a ``BusyPoll``'s).
    """

    async def cb(msg: Msg) -> None:
        poke()
        fn(msg)

    sub = await nc.subscribe(subject, queue=queue, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
    task, pending = getattr(sub, "_wait_for_msgs_task", None), getattr(sub, "_pending_queue", None)
    if isinstance(task, asyncio.Task) and isinstance(pending, asyncio.Queue) and hasattr(sub, "_pending_size"):
        task.cancel()
        sub._pending_queue = direct = _DirectQueue(sub, fn, poke)
        while not pending.empty():  # anything that arrived before the swap
            direct.put_nowait(pending.get_nowait())
    return sub


class NotSent(NatsTimeoutError):
    """A request that never left this process: refused while disconnected, or withdrawn unsent on giving up."""


def withdraw(nc: NATS, subject: str, reply: str) -> bool:
    """Take a publish out of nats-py's outgoing buffer if it is still there; True when it was (never sent).

    While the client reconnects, a publish waits in ``_pending`` and goes out once it is connected again, long
    after its caller gave up on it. Taken out, it never goes out: a request the caller was told was not
    accepted does not run later.
    """
    heads = (f"HPUB {subject} {reply} ".encode(), f"PUB {subject} {reply} ".encode())
    pending = nc._pending
    for i, cmd in enumerate(pending):
        if cmd.startswith(heads):
            del pending[i]
            nc._pending_data_size -= len(cmd)
            return True
    return False


class _PubAckReply(PubAck, frozen=True):
    error: dict | None = None


_puback_decoder = msgspec.json.Decoder(_PubAckReply)


class Replies:
    """Request/reply for JetStream publishes over one wildcard inbox subscription.

    nats-py's ``js.publish`` spends more per call than the publish itself: a random token from the OS,
    ``asyncio.wait_for``, the stdlib JSON parser and a dataclass per acknowledgement. Here a reply's token is
    a counter, its future is looked up in one dict, and the acknowledgement is decoded by msgspec.
    """

    def __init__(self, nc: NATS, poke: Callable[[], None] = _nothing) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox() + "."
        self._pending: dict[str, asyncio.Future] = {}
        self._n = 0
        self._poke = poke

    async def start(self) -> None:
        await subscribe_direct(self.nc, self.prefix + "*", self._on_reply, poke=self._poke)

    def _on_reply(self, msg: Msg) -> None:
        fut = self._pending.pop(msg.subject[len(self.prefix):], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def request(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float,
                      connected_only: bool = False) -> Msg:
        """Publish and wait for the reply.

        ``connected_only`` (a request's first event, which a client is told was not accepted if this fails):
        refused at once (``NotSent``) while the client is not connected, and when given up on (``timeout``)
        while nats-py still holds it unsent, withdrawn (``NotSent``) so it never goes out later. Anything else
        stays in nats-py's reconnect buffer and goes out once connected again: a stage's event sent late is
        de-duplicated by its id and keeps what happened (a provider's answer) on the record."""
        if connected_only and not self.nc.is_connected:
            raise NotSent
        self._n += 1
        token = f"{self._n:x}"
        fut = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        try:
            await self.nc.publish(subject, data, reply=self.prefix + token, headers=headers)
            msg = await wait_future(fut, timeout)  # every publish and KV write: a timer, not asyncio.timeout
        except TimeoutError:
            if connected_only and withdraw(self.nc, subject, self.prefix + token):
                raise NotSent from None
            raise NatsTimeoutError from None
        finally:
            self._pending.pop(token, None)
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float,
                      connected_only: bool = False) -> PubAck:
        """A JetStream publish: the stream's acknowledgement, or the API's error raised as nats-py raises it."""
        ack = _puback_decoder.decode((await self.request(subject, data, headers, timeout, connected_only)).data)
        if ack.error is not None:
            APIError.from_error(ack.error)
        return PubAck(stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate, domain=ack.domain)


class LeanJetStream:
    """The JetStream context a ``KeyValue`` uses, with its two hot calls made lean.

    ``publish`` (every put, create and compare-and-set) goes through ``Replies``; ``get_msg`` for a key's
    latest value is a direct get (served by the stream, not the JSON API) through the same inbox, with no
    timestamp parsing. Everything else (watches, stream info) is nats-py's. A missing key raises what
    nats-py's non-direct path raises (``NotFoundError`` with error code ``NO_MESSAGE``), which callers use to
    tell a missing key from a missing bucket (no responders: the bucket is gone).
    """

    def __init__(self, js: JetStreamContext, replies: Replies, timeout: float) -> None:
        self._js = js
        self._replies = replies
        self._timeout = timeout

    def __getattr__(self, name: str):
        return getattr(self._js, name)

    async def publish(self, subject: str, payload: bytes = b"", timeout: float | None = None,
                      stream: str | None = None, headers: dict | None = None,
                      msg_ttl: float | None = None) -> PubAck:
        hdrs = dict(headers or {})
        if stream is not None:
            hdrs["Nats-Expected-Stream"] = stream
        if msg_ttl is not None:
            hdrs["Nats-TTL"] = str(int(msg_ttl))
        return await self._replies.publish(subject, payload, hdrs or None, timeout or self._timeout)

    async def get_msg(self, stream_name: str, seq: int | None = None, subject: str | None = None,
                      direct: bool | None = False, next: bool | None = False):
        if not (direct and subject and seq is None and not next):
            return await self._js.get_msg(stream_name, seq=seq, subject=subject, direct=False, next=next)
        msg = await self._replies.request(f"$JS.API.DIRECT.GET.{stream_name}.{subject}", b"", None, self._timeout)
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            raise NotFoundError(code=404, err_code=NO_MESSAGE, description="no message found")
        if status:
            raise APIError(code=int(status), description=headers.get("Description", ""))
        return RawStreamMsg(subject=headers.get("Nats-Subject", subject), seq=int(headers["Nats-Sequence"]),
                            data=msg.data, headers=headers)


def key_value(js: JetStreamContext, replies: Replies, bucket: str, timeout: float) -> KeyValue:
    """nats-py's ``KeyValue`` for an existing bucket (with direct gets allowed), over ``LeanJetStream``."""
    return KeyValue(name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.",
                    js=LeanJetStream(js, replies, timeout), direct=True)
