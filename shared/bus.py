"""The bus: one JetStream stream of lifecycle events, durable pull consumers, KV buckets.

``Bus`` connects, creates or updates what it needs, publishes events with
``Nats-Msg-Id`` (the event id) and W3C trace headers, and runs consume loops
that map a handler's outcome to the acknowledgement:

    handler returned events   → publish them (awaiting PubAck), then ack
    retryable error           → nak with backoff (redelivered later)
    Defer(delay_s)            → nak with that delay (a planned wait, not a failure)
    non-retryable error       → term (the message is given up)
    last delivery still fails → ``on_poison`` turns it into terminal events, then term

Publishing before acking is what makes delivery at-least-once; deterministic
event ids make the publishes idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Sequence

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from shared.errors import Defer, ServiceUnavailable, SwitchyardError
from shared.events import STREAM_SUBJECTS, AnyEvent, Event, decoder, encoder
from shared.settings import ConsumerSettings, NatsSettings
from shared.telemetry import Telemetry

log = logging.getLogger("switchyard.bus")

Handler = Callable[[AnyEvent, "Delivery"], Awaitable[Sequence[Event]]]
BatchHandler = Callable[[list[tuple[AnyEvent, "Delivery"]]], Awaitable[Sequence[Event]]]
PoisonHandler = Callable[[AnyEvent, BaseException], Sequence[Event]]


@dataclass(frozen=True)
class Bucket:
    """A JetStream KV bucket a service needs."""

    name: str
    history: int = 1
    ttl_s: float | None = None
    description: str = ""


@dataclass(frozen=True)
class Subscription:
    """A durable pull consumer and the subjects it reads."""

    durable: str
    subjects: tuple[str, ...]
    settings: ConsumerSettings = field(default_factory=ConsumerSettings)
    # Safe to recreate and replay from the start (an idempotent reader such as audit) when its
    # configuration changes in a way JetStream cannot update in place.
    replayable: bool = False


@dataclass(frozen=True)
class Delivery:
    """What the handler may know about the message that carried its event."""

    num_delivered: int
    headers: dict[str, str]
    stream_seq: int
    msg: Msg | None = None


class PubAck(msgspec.Struct, frozen=True):
    """The stream's acknowledgement of a publish (JetStream's ``PubAck``, decoded by msgspec)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None


class _PubAckReply(PubAck, frozen=True):
    error: dict | None = None


_puback_decoder = msgspec.json.Decoder(_PubAckReply)


def _nothing() -> None:
    pass


class BusyPoll:
    """Keeps the event loop polling, not sleeping, for ``window_s`` after each message.

    A request crosses a Switchyard process several times, a few hundred microseconds apart (a PubAck, the
    next stage's delivery, the provider's answer). Sleeping through each gap and being woken for the next
    message is what an event loop does, and on a virtual machine it is expensive: the idle vCPU halts, and
    waking it costs more CPU and time than handling the message. Measured at concurrency 1 on the bench's
    2-core VM, all targets in one process, alternating runs against an identical system without it: p50
    2.01 against 2.29 ms and 3.30 against 3.71 ms, at the same CPU per request, its own polling included.

    So each message re-opens a short window during which a callback re-queued on every turn makes the loop
    poll without blocking (yielding the core to any other runnable thread each time). Once a window passes
    with no message the loop sleeps as usual: an idle process costs nothing, and under load the loop never
    sleeps anyway. ``window_s`` 0 turns it off.

    It pays only where the process has a core to itself while it waits: one process running the whole
    request path. With one process per target on the same two cores it cost more than it saved (p50 4.39
    against 3.97 ms, 7.5 against 5.6 ms CPU per request), each process polling while another needed the
    core; so by default (``busy_poll_us`` unset) only a process with gateway, policy, router and worker
    polls, and in Kubernetes, where each pod's CPU is a quota, a split process does not burn it.
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

    async def request(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float) -> Msg:
        self._n += 1
        token = f"{self._n:x}"
        fut = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        try:
            await self.nc.publish(subject, data, reply=self.prefix + token, headers=headers)
            async with asyncio.timeout(timeout):
                msg = await fut
        except TimeoutError:
            raise NatsTimeoutError from None
        finally:
            self._pending.pop(token, None)
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float) -> PubAck:
        """A JetStream publish: the stream's acknowledgement, or the API's error raised as nats-py raises it."""
        ack = _puback_decoder.decode((await self.request(subject, data, headers, timeout)).data)
        if ack.error is not None:
            APIError.from_error(ack.error)
        return PubAck(stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate, domain=ack.domain)


class LeanJetStream:
    """The JetStream context a ``KeyValue`` uses, with its two hot calls made lean.

    ``publish`` (every put, create and compare-and-set) goes through ``Replies``; ``get_msg`` for a key's
    latest value is a direct get (served by the stream, not the JSON API) through the same inbox, with no
    timestamp parsing. Everything else (watches, stream info) is nats-py's. A missing key raises what
    nats-py's non-direct path raises (``NotFoundError`` with error code 10037), which callers use to tell a
    missing key from a missing bucket (no responders: the bucket is gone).
    """

    NO_MESSAGE = 10037

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
            raise NotFoundError(code=404, err_code=self.NO_MESSAGE, description="no message found")
        if status:
            raise APIError(code=int(status), description=headers.get("Description", ""))
        return RawStreamMsg(subject=headers.get("Nats-Subject", subject), seq=int(headers["Nats-Sequence"]),
                            data=msg.data, headers=headers)


def delivery_of(msg: Msg) -> Delivery:
    """The delivery count and stream sequence from a JetStream message's reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`` (or the v2 form
    with domain and account hash in front): read straight from the tokens, where nats-py's ``metadata`` builds
    dataclasses and a datetime for every message (a tenth of the audit process's CPU).
    """
    reply = msg.reply or ""
    tokens = reply.split(".")
    if len(tokens) == 9 and reply.startswith("$JS.ACK."):
        delivered, seq = tokens[4], tokens[5]
    elif len(tokens) >= 11 and reply.startswith("$JS.ACK."):
        delivered, seq = tokens[Msg.Ack.NumDelivered], tokens[Msg.Ack.StreamSeq]
    else:
        meta = msg.metadata  # raises NotJSMessageError: not a JetStream delivery
        delivered, seq = meta.num_delivered, meta.sequence.stream
    return Delivery(num_delivered=int(delivered), headers=dict(msg.headers or {}), stream_seq=int(seq), msg=msg)


def backoff(num_delivered: int, base: float = 0.25, cap: float = 10.0) -> float:
    """Redelivery delay after ``num_delivered`` failed deliveries."""
    return min(cap, base * 2 ** max(0, num_delivered - 1))


class Bus:
    """A connection to NATS with the stream, consumers and KV buckets Switchyard uses."""

    def __init__(self, settings: NatsSettings, telemetry: Telemetry, name: str = "switchyard",
                 busy_poll_s: float = 0.0) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.name = name
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.replies: Replies | None = None
        self._kv: dict[str, KeyValue] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        # The setting wins; unset, the process's shape decides (``busy_poll_s``, from bootstrap).
        us = settings.busy_poll_us
        self.poll = BusyPoll(us / 1e6 if us is not None else busy_poll_s)

    # ---- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> "Bus":
        self.nc = await nats.connect(
            self.settings.url,
            name=self.name,
            connect_timeout=self.settings.connect_timeout_s,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            pending_size=64 * 1024 * 1024,
        )
        self.js = self.nc.jetstream(timeout=self.settings.connect_timeout_s)
        self.poll.start()
        self.replies = Replies(self.nc, self.poll.poke)
        await self.replies.start()
        return self

    async def close(self) -> None:
        self._stopping.set()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def ensure_stream(self) -> None:
        """Create the event stream, or bring an existing one to the configured shape."""
        s = self.settings
        cfg = StreamConfig(
            name=s.stream,
            subjects=STREAM_SUBJECTS,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=s.max_age_s,
            max_bytes=s.max_bytes,
            duplicate_window=s.duplicate_window_s,
            num_replicas=s.replicas,
        )
        try:
            await self.js.add_stream(cfg)
        except BadRequestError:
            await self.js.update_stream(cfg)

    async def ensure_consumer(self, sub: Subscription) -> None:
        cs = sub.settings
        cfg = ConsumerConfig(
            durable_name=sub.durable,
            filter_subjects=list(sub.subjects) if len(sub.subjects) > 1 else None,
            filter_subject=sub.subjects[0] if len(sub.subjects) == 1 else None,
            # Explicit acks only: replicas share a consumer, and an "ack all" from one would acknowledge
            # messages another replica is still handling.
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=cs.ack_wait_s,
            max_deliver=cs.max_deliver,
            max_ack_pending=max(cs.concurrency * 4, cs.batch * 2),
            max_waiting=512,
        )
        try:
            await self.js.add_consumer(self.settings.stream, cfg)
        except APIError as exc:
            if "can not be updated" not in (exc.description or "") and "cannot be updated" not in (exc.description or ""):
                raise
            if not sub.replayable:
                raise RuntimeError(
                    f"consumer {sub.durable!r} exists with a configuration that cannot be updated in place "
                    f"({exc.description}); replaying it could re-run old requests, so delete it deliberately "
                    f"(nats consumer rm {self.settings.stream} {sub.durable}) if that is what you want") from exc
            log.warning("recreating consumer %s (it replays from the start; it is idempotent): %s",
                        sub.durable, exc.description)
            await self.js.delete_consumer(self.settings.stream, sub.durable)
            await self.js.add_consumer(self.settings.stream, cfg)

    async def kv(self, bucket: Bucket) -> KeyValue:
        """The KV bucket, created on first use, read and written through ``LeanJetStream``."""
        if bucket.name in self._kv:
            return self._kv[bucket.name]
        stream = f"KV_{bucket.name}"
        try:
            info = await self.js.stream_info(stream)
            if not info.config.allow_direct:
                # Buckets made by earlier versions: direct gets are served by the stream itself.
                info.config.allow_direct = True
                await self.js.update_stream(info.config)
        except NotFoundError:
            await self.js.create_key_value(KeyValueConfig(
                bucket=bucket.name, history=bucket.history, ttl=bucket.ttl_s, description=bucket.description,
                storage=StorageType.FILE, replicas=self.settings.kv_replicas, direct=True))
        kv = KeyValue(name=bucket.name, stream=stream, pre=f"$KV.{bucket.name}.",
                      js=LeanJetStream(self.js, self.replies, self.settings.connect_timeout_s), direct=True)
        self._kv[bucket.name] = kv
        return kv

    async def subscribe(self, subject: str, fn: Callable[[Msg], None], queue: str = ""):
        """A core NATS subscription handled in the client's read loop (``subscribe_direct``)."""
        return await subscribe_direct(self.nc, subject, fn, queue=queue, poke=self.poll.poke)

    # ---- publishing -----------------------------------------------------------------------

    async def publish(self, event: Event, attempts: int = 5) -> PubAck:
        """Publish one event durably (PubAck awaited); retried publishes are de-duplicated by event id.

        The returned PubAck's ``duplicate`` says the stream already had an event with this id.
        """
        data = encoder.encode(event)
        headers = self.telemetry.inject({"Nats-Msg-Id": event.event_id})
        subject = event.subject()
        for i in range(attempts):
            try:
                return await self.replies.publish(subject, data, headers, self.settings.connect_timeout_s)
            except (NatsTimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
                    asyncio.TimeoutError) as exc:
                if i == attempts - 1:
                    raise ServiceUnavailable(f"event bus unavailable: {type(exc).__name__}") from exc
                await asyncio.sleep(min(2.0, 0.05 * 2**i))

    async def publish_all(self, events: Iterable[Event]) -> None:
        events = list(events)
        if len(events) == 1:
            await self.publish(events[0])
        elif events:
            await asyncio.gather(*(self.publish(e) for e in events))

    # ---- consuming ------------------------------------------------------------------------

    def start(self, coro: Awaitable) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pull(self, sub: Subscription, max_outstanding: int, deliver: Callable[[Msg], None]) -> "PullLoop":
        await self.ensure_consumer(sub)
        loop = PullLoop(self, sub, max_outstanding, deliver)
        await loop.start()
        return loop

    def _decode(self, msg: Msg) -> AnyEvent | None:
        try:
            return decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.error("undecodable message on %s (seq %s): %s", msg.subject, delivery_of(msg).stream_seq, exc)
            return None

    async def consume(self, service: str, sub: Subscription, handler: Handler,
                      on_poison: PoisonHandler | None = None) -> None:
        """Run ``handler`` on every message of ``sub``, up to ``concurrency`` at once, until closed."""
        pull: PullLoop

        def dispatch(msg: Msg) -> None:
            # Straight from the subscription callback to a handler task: no queue hop, no per-message timer.
            task = asyncio.ensure_future(self._handle_one(service, sub, msg, handler, on_poison))
            task.add_done_callback(pull.done)

        pull = await self._pull(sub, sub.settings.concurrency, dispatch)
        try:
            await self._stopping.wait()
        finally:
            await pull.stop()

    async def _handle_one(self, service: str, sub: Subscription, msg: Msg, handler: Handler,
                          on_poison: PoisonHandler | None) -> None:
        event = self._decode(msg)
        metrics = self.telemetry.metrics
        if event is None:
            await msg.term()
            metrics.events.labels(service, "undecodable", "term").inc()
            return
        kind = type(event).__name__
        delivery = delivery_of(msg)
        started = time.perf_counter()
        keepalive = _Keepalive(msg, sub.settings.ack_wait_s)
        try:
            with self.telemetry.span(f"{service} {kind}", delivery.headers,
                                     **{"switchyard.request_id": event.request_id}):
                out = await handler(event, delivery)
                await self.publish_all(out)
            await msg.ack()
            result = "ack"
        except Exception as exc:  # noqa: BLE001 - mapped to an acknowledgement below
            result = await self._settle_failure(service, sub, msg, event, exc, on_poison)
        finally:
            keepalive.stop()
        metrics.events.labels(service, kind, result).inc()
        metrics.handler_duration.labels(service, kind).observe(time.perf_counter() - started)

    async def _settle_failure(self, service: str, sub: Subscription, msg: Msg, event: AnyEvent,
                              exc: BaseException, on_poison: PoisonHandler | None) -> str:
        retryable = exc.retryable if isinstance(exc, SwitchyardError) else True
        delivered = delivery_of(msg).num_delivered
        last = delivered >= sub.settings.max_deliver
        if isinstance(exc, Defer) and not last:
            # A planned wait (backoff, Retry-After): the message comes back after exactly this delay.
            log.debug("%s: %s for %s deferred %.3fs: %s", service, type(event).__name__, event.request_id,
                      exc.delay_s, exc.message)
            await _quiet(msg.nak(delay=exc.delay_s))
            return "defer"
        if retryable and not last:
            log.warning("%s: %s for %s failed (delivery %d), will retry: %r", service, type(event).__name__,
                        event.request_id, delivered, exc)
            await _quiet(msg.nak(delay=backoff(delivered)))
            return "nak"
        log.error("%s: giving up %s for %s after %d deliveries: %r", service, type(event).__name__,
                  event.request_id, delivered, exc)
        if on_poison is not None:
            try:
                await self.publish_all(on_poison(event, exc))
            except Exception as pub_exc:  # noqa: BLE001 - keep the message for another try
                log.error("could not publish the terminal event for %s: %r", event.request_id, pub_exc)
                await _quiet(msg.nak(delay=backoff(delivered)))
                return "nak"
        await _quiet(msg.term())
        return "term"

    async def consume_batches(self, service: str, sub: Subscription, handler: BatchHandler) -> None:
        """Hand batches to ``handler`` (for stores that write in bulk) and ack them together.

        A batch closes when it is full or ``linger_s`` after its first message, so a quiet stream costs
        one transaction per linger period rather than one per event.
        """
        cs = sub.settings
        buffer: list[Msg] = []
        arrived = asyncio.Event()

        def collect(msg: Msg) -> None:
            buffer.append(msg)
            arrived.set()

        pull = await self._pull(sub, cs.batch * 2, collect)
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                await arrived.wait()
                close_at = loop.time() + cs.linger_s
                while len(buffer) < cs.batch and loop.time() < close_at:
                    arrived.clear()
                    try:
                        await asyncio.wait_for(arrived.wait(), close_at - loop.time())
                    except asyncio.TimeoutError:
                        break
                msgs, buffer[:] = buffer[: cs.batch], buffer[cs.batch:]
                if not buffer:
                    arrived.clear()
                await self._handle_batch(service, sub, msgs, handler)
                for _ in msgs:
                    pull.done()
        finally:
            await pull.stop()

    async def _handle_batch(self, service: str, sub: Subscription, msgs: list[Msg], handler: BatchHandler) -> None:
        items = []
        for msg in msgs:
            event = self._decode(msg)
            if event is None:
                await _quiet(msg.term())
                continue
            items.append((event, delivery_of(msg)))
        if not items:
            return
        started = time.perf_counter()
        metrics = self.telemetry.metrics
        try:
            out = await handler(items)
            await self.publish_all(out)
        except Exception as exc:  # noqa: BLE001 - the batch is redelivered
            log.warning("%s: batch of %d failed, will retry: %r", service, len(items), exc)
            await asyncio.gather(*(_quiet(d.msg.nak(delay=backoff(d.num_delivered))) for _, d in items))
            metrics.events.labels(service, "batch", "nak").inc(len(items))
            return
        # The acks go out together: one socket write for the batch.
        await asyncio.gather(*(_quiet(d.msg.ack()) for _, d in items))
        metrics.events.labels(service, "batch", "ack").inc(len(items))
        metrics.handler_duration.labels(service, "batch").observe(time.perf_counter() - started)



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

    def __init__(self, bus: "Bus", sub: Subscription, max_outstanding: int, deliver: Callable[[Msg], None]) -> None:
        self.bus = bus
        self.sub = sub
        self.window = max(1, max_outstanding)
        self.owed = 0  # messages requested and not yet delivered or released by a status
        self.busy = 0  # messages delivered and not yet finished
        self.deliver = deliver
        self.last_seen = 0.0
        self._inbox = ""
        self._nsub = None
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{bus.settings.stream}.{sub.durable}"
        self._watch: asyncio.Task | None = None
        self._reconnects = 0

    async def start(self) -> None:
        nc = self.bus.nc
        self._inbox = nc.new_inbox()
        self._nsub = await self.bus.subscribe(self._inbox, self._on_msg)
        self._watch = asyncio.ensure_future(self._watchdog())
        await self._refill()

    async def stop(self) -> None:
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

    async def _refill(self) -> None:
        want = self.window - self.owed - self.busy
        if want <= 0 or (self.owed + self.busy > self.window // 2 and self.owed > 0):
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
        if self.owed + self.busy <= self.window // 2:
            self.bus.start(self._refill())


class _Keepalive:
    """Sends ``in_progress`` for a message whose handler runs longer than a third of ``ack_wait``."""

    def __init__(self, msg: Msg, ack_wait_s: float) -> None:
        self._msg = msg
        self._every = max(0.2, ack_wait_s / 3)
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(self._every, self._tick)
        self._task: asyncio.Task | None = None

    def _tick(self) -> None:
        self._task = asyncio.ensure_future(_quiet(self._msg.in_progress()))
        self._handle = self._loop.call_later(self._every, self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def _quiet(aw: Awaitable) -> None:
    """Await an acknowledgement; a lost connection only means the message is redelivered."""
    try:
        await aw
    except Exception as exc:  # noqa: BLE001
        log.debug("acknowledgement failed: %r", exc)
