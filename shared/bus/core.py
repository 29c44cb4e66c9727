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
event ids make the publishes idempotent. How messages travel through nats-py
(the read-loop subscriptions, lean publishes and KV reads) is ``shared.bus.natsfast``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable

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
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind

from shared.bus.busypoll import BusyPoll
from shared.bus.serving import Serving
from shared.bus.capacity import StreamCapacity, full_error, is_full
from shared.bus.contract import (
    BatchHandler,
    Bucket,
    Handler,
    PoisonHandler,
    PubAck,
    Subscription,
    backoff,
    delivery_of,
)
from shared.bus.credentials import connect_options, identity
from shared.bus.natsfast import NotSent, Replies, key_value, subscribe_direct
from shared.bus.pull import PullLoop
from shared.errors import Defer, NotAccepted, OutcomeUnknown, ServiceUnavailable, SwitchyardError
from shared.events import STREAM_SUBJECTS, AnyEvent, Event, decoder, encoder
from shared.settings import NatsSettings
from shared.telemetry import Telemetry

if TYPE_CHECKING:  # the role table imports the buckets, which import this package
    from shared.bus.permissions import Access

log = logging.getLogger("switchyard.bus")


class Bus:
    """A connection to NATS with the stream, consumers and KV buckets Switchyard uses."""

    def __init__(self, settings: NatsSettings, telemetry: Telemetry, name: str = "switchyard",
                 busy_poll_s: float = 0.0, access: "Access | None" = None) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.name = name
        # The role this process plays on the bus (None: unrestricted, as the operator's tools connect); what it
        # may reconfigure follows from it, and the server enforces the rest (shared.bus.permissions).
        self.access = access
        self.capacity = StreamCapacity(self)
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.replies: Replies | None = None
        self._kv: dict[str, KeyValue] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        # Draining (SIGTERM): consume loops stop pulling and finish or hand back what they hold by the deadline.
        self._draining = asyncio.Event()
        self._drain_deadline = 0.0
        self._loops: set[asyncio.Future] = set()  # one per running consume loop, done once it has drained
        # The setting wins; unset, the process's shape decides (``busy_poll_s``, from bootstrap).
        us = settings.busy_poll_us
        self.poll = BusyPoll(us / 1e6 if us is not None else busy_poll_s)
        # Requests this process's API is answering: a yielding consumer (the batch lane) reads less meanwhile.
        self.serving = Serving(settings.batch_yield_at, settings.batch_yield_window)
        # Moves on at every disconnection and reconnection: what was read under one value (a KV watch's
        # index) is not known to be current under another (``shared.auth.KeyStore``).
        self.epoch = 0
        self._on_reconnect: list[Callable[[], None]] = []

    # ---- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> "Bus":
        """Connect (retrying while the server cannot be reached); refused credentials fail at once."""
        loop = asyncio.get_running_loop()
        refused: asyncio.Future = loop.create_future()

        async def on_error(exc: Exception) -> None:
            if self.nc is None and "authorization violation" in str(exc).lower() and not refused.done():
                refused.set_result(str(exc))
            await _log_error(exc)

        async def on_disconnect() -> None:
            self.epoch += 1

        async def on_reconnect() -> None:
            self.epoch += 1
            for fn in list(self._on_reconnect):
                fn()

        connecting = asyncio.ensure_future(nats.connect(
            self.settings.servers,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            name=self.name,
            connect_timeout=self.settings.connect_timeout_s,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            pending_size=64 * 1024 * 1024,
            error_cb=on_error,
            **connect_options(self.settings, self.access),
        ))
        await asyncio.wait([connecting, refused], return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            user, _ = identity(self.settings, self.access)
            who = f"user {user}" if user else ("a .creds file" if self.settings.creds_file else "no credentials")
            raise RuntimeError(f"NATS refused this process ({who}): {refused.result()}; see docs/security.md")
        self.nc = connecting.result()
        self.js = self.nc.jetstream(timeout=self.settings.connect_timeout_s)
        self.poll.start()
        self.replies = Replies(self.nc, self.poll.poke)
        await self.replies.start()
        return self

    async def drain(self, timeout_s: float) -> None:
        """Stop pulling; let in-flight messages finish within ``timeout_s`` and hand the rest back (nak).

        What a process does on SIGTERM before it closes: afterwards every message it took is acked, or
        nak'd so another replica has it at once rather than after ``ack_wait``. Publishing, KV and core
        subscriptions keep working until ``close``.
        """
        loop = asyncio.get_running_loop()
        self._drain_deadline = loop.time() + max(0.0, timeout_s)
        self._draining.set()
        if self._loops:
            # Each loop keeps the deadline itself; the margin covers handing back what was cancelled.
            await asyncio.wait(set(self._loops), timeout=max(0.0, timeout_s) + 2.0)

    async def close(self) -> None:
        self._stopping.set()
        self._draining.set()
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

    def on_reconnect(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (synchronous, cheap) each time the connection is back after a loss."""
        self._on_reconnect.append(fn)

    async def ensure_stream(self) -> None:
        """Create the event stream, or bring an existing one to the configured shape.

        A full stream refuses new events (discard new) instead of dropping its oldest: accepted work is never
        evicted to make room (``shared.bus.capacity``). Only the role that keeps the stream (audit, or the
        operator) changes an existing stream's configuration; any other takes it as it is.
        """
        s = self.settings
        cfg = StreamConfig(
            name=s.stream,
            subjects=STREAM_SUBJECTS,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            max_age=s.max_age_s,
            max_bytes=s.max_bytes,
            max_msgs=s.max_msgs,
            duplicate_window=s.duplicate_window_s,
            num_replicas=s.replicas,
        )
        try:
            await self.js.add_stream(cfg)
        except BadRequestError:
            if self.access is not None and not self.access.keeps_stream:
                log.info("stream %s exists with another configuration: the role that keeps it updates it", s.stream)
                return
            await self.js.update_stream(cfg)

    async def ensure_consumer(self, sub: Subscription) -> None:
        cs = sub.settings
        cfg = ConsumerConfig(
            # Named as well as durable: the create request then names its filter in its subject, which is what
            # the bus permissions hold a role to (shared.bus.permissions).
            name=sub.durable,
            durable_name=sub.durable,
            filter_subjects=list(sub.subjects) if len(sub.subjects) > 1 else None,
            filter_subject=sub.subjects[0] if len(sub.subjects) == 1 else None,
            # Explicit acks only: replicas share a consumer, and an "ack all" from one would acknowledge
            # messages another replica is still handling.
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=cs.ack_wait_s,
            max_deliver=cs.max_deliver,
            max_ack_pending=cs.max_ack_pending or max(cs.concurrency * 4, cs.batch * 2),
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
        """The KV bucket, created on first use, read and written through ``natsfast.LeanJetStream``."""
        if bucket.name in self._kv:
            return self._kv[bucket.name]
        stream = f"KV_{bucket.name}"
        ttl = getattr(self.settings, bucket.ttl_setting) if bucket.ttl_setting else bucket.ttl_s
        try:
            info = await self.js.stream_info(stream)
            # Buckets made by earlier versions (direct gets are served by the stream itself), or with another
            # expiry than configured now: an owner of the bucket brings it up to date.
            stale = not info.config.allow_direct or abs((info.config.max_age or 0) - (ttl or 0)) > 0.001
            if stale and (self.access is None or self.access.writes(bucket.name)):
                info.config.allow_direct = True
                info.config.max_age = ttl or 0
                await self.js.update_stream(info.config)
        except NotFoundError:
            await self.js.create_key_value(KeyValueConfig(
                bucket=bucket.name, history=bucket.history, ttl=ttl, description=bucket.description,
                storage=StorageType.FILE, replicas=self.settings.kv_replicas, direct=True))
        kv = key_value(self.js, self.replies, bucket.name, self.settings.connect_timeout_s)
        self._kv[bucket.name] = kv
        return kv

    async def subscribe(self, subject: str, fn: Callable[[Msg], None], queue: str = ""):
        """A core NATS subscription handled in the client's read loop (``subscribe_direct``)."""
        return await subscribe_direct(self.nc, subject, fn, queue=queue, poke=self.poll.poke)

    # ---- publishing -----------------------------------------------------------------------

    async def publish_new(self, event: Event, attempts: int = 5) -> PubAck:
        """Publish a request's first event, so that an answer of "not accepted" is true: the request never runs.

        Refused at once (503, not accepted) while the stream is too full to take new work, so what it holds can
        still move on (``shared.bus.capacity``). The publish never waits in nats-py's reconnect buffer: while
        the connection is down it is not sent (``connected_only``), and one given up on unsent is withdrawn
        (``natsfast.withdraw``), so it cannot go out when the connection comes back. ``NotAccepted`` when no
        attempt left this process; ``OutcomeUnknown`` (the request id, its fate queryable) when one was sent
        and never acknowledged: the stream may hold it (retries carry the same ``Nats-Msg-Id``, so at most one).
        """
        self.capacity.check()
        data = encoder.encode(event)
        headers = self.telemetry.inject({"Nats-Msg-Id": event.event_id})
        subject = event.subject()
        sent = False
        for i in range(attempts):
            try:
                return await self.replies.publish(subject, data, headers, self.settings.connect_timeout_s,
                                                  connected_only=True)
            except NotSent:
                pass
            except (NatsTimeoutError, asyncio.TimeoutError):
                sent = True  # on the wire (or in the socket's buffer) and unanswered: the stream may have it
            except (nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
                    nats.errors.OutboundBufferLimitError):
                pass  # refused before it was stored
            except APIError as exc:
                if is_full(exc):
                    raise full_error(self.settings.full_retry_after_s) from exc
                raise
            if i < attempts - 1:
                await asyncio.sleep(min(1.0, 0.05 * 2**i))
        if sent:
            raise OutcomeUnknown(event.request_id)
        raise NotAccepted(event.request_id)

    async def publish(self, event: Event, attempts: int = 5) -> PubAck:
        """Publish one event durably (PubAck awaited); retried publishes are de-duplicated by event id.

        The returned PubAck's ``duplicate`` says the stream already had an event with this id. A stream at its
        limits refuses the event (``ServiceUnavailable``, code ``stream_full``): nothing is dropped to make room.
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
            except APIError as exc:
                if is_full(exc):
                    raise full_error(self.settings.full_retry_after_s) from exc
                raise

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

    async def _pull(self, sub: Subscription, max_outstanding: int, deliver: Callable[[Msg], None]) -> PullLoop:
        await self.ensure_consumer(sub)
        loop = PullLoop(self, sub, max_outstanding, deliver, limit=self.serving.window if sub.yields else None)
        if sub.yields:
            self.serving.on_quiet(loop.kick)
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
        """Run ``handler`` on every message of ``sub``, up to ``concurrency`` at once, until drained or closed."""
        pull: PullLoop
        inflight: set[asyncio.Task] = set()

        def dispatch(msg: Msg) -> None:
            # Straight from the subscription callback to a handler task: no queue hop, no per-message timer.
            task = asyncio.ensure_future(self._handle_one(service, sub, msg, handler, on_poison))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            task.add_done_callback(pull.done)

        pull = await self._pull(sub, sub.settings.concurrency, dispatch)
        self.telemetry.metrics.redeliveries.labels(service)  # at 0 from the start: rate() sees the first one
        drained = self._loop_started()
        try:
            await self._draining.wait()
            if not self._stopping.is_set():
                await pull.drain()
                late = set(inflight)
                if late:
                    _, late = await asyncio.wait(late, timeout=self._drain_left())
                for task in late:
                    task.cancel()  # ``_handle_one`` hands its message back
                if late:
                    await asyncio.wait(late, timeout=1.0)
                    log.warning("%s: %d message(s) still in flight at the drain deadline handed back",
                                service, len(late))
        finally:
            await pull.stop()
            self._loop_done(drained)

    def _loop_started(self) -> asyncio.Future:
        drained = asyncio.get_running_loop().create_future()
        self._loops.add(drained)
        return drained

    def _loop_done(self, drained: asyncio.Future) -> None:
        self._loops.discard(drained)
        if not drained.done():
            drained.set_result(None)

    def _drain_left(self) -> float:
        return max(0.0, self._drain_deadline - asyncio.get_running_loop().time())

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
        if delivery.num_delivered > 1:
            metrics.redeliveries.labels(service).inc()
        started = time.perf_counter()
        keepalive = _Keepalive(msg, sub.settings.ack_wait_s)
        try:
            with self.telemetry.span(f"{service} {kind}", delivery.headers, kind=SpanKind.CONSUMER,
                                     **{"switchyard.request_id": event.request_id}):
                out = await handler(event, delivery)
                await self.publish_all(out)
            await msg.ack()
            result = "ack"
        except Exception as exc:  # noqa: BLE001 - mapped to an acknowledgement below
            result = await self._settle_failure(service, sub, msg, event, exc, on_poison)
        except asyncio.CancelledError:
            # Stopped before it finished (the drain deadline passed): hand the message back now so another
            # replica takes it at once; its outcome so far is unknown, which redelivery already allows for.
            await _quiet(msg.nak())
            raise
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
        self.telemetry.metrics.redeliveries.labels(service)  # at 0 from the start: rate() sees the first one
        loop = asyncio.get_running_loop()
        drained = self._loop_started()

        async def stop_pulling() -> None:
            await self._draining.wait()
            if not self._stopping.is_set():
                await pull.drain()
            arrived.set()  # wake the loop: it handles what it holds, then returns

        watcher = asyncio.ensure_future(stop_pulling())
        try:
            while not self._stopping.is_set():
                if not pull.draining:
                    await arrived.wait()
                if pull.draining and (not buffer or not self._drain_left()):
                    break
                close_at = loop.time() + (0.0 if pull.draining else cs.linger_s)
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
            watcher.cancel()
            # Taken but not handled (the drain deadline passed, or closed): back to the stream at once.
            await asyncio.gather(*(_quiet(m.nak()) for m in buffer))
            await pull.stop()
            self._loop_done(drained)

    async def _handle_batch(self, service: str, sub: Subscription, msgs: list[Msg], handler: BatchHandler) -> None:
        items = []
        for msg in msgs:
            event = self._decode(msg)
            if event is None:
                await _quiet(msg.term())
                continue
            items.append((event, delivery_of(msg)))
        redelivered = sum(1 for _, d in items if d.num_delivered > 1)
        if redelivered:
            self.telemetry.metrics.redeliveries.labels(service).inc(redelivered)
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


async def _log_error(exc: Exception) -> None:
    """nats-py's asynchronous errors: a permissions violation means this role tried what it may not."""
    text = str(exc)
    if "permissions violation" in text.lower():
        log.error("NATS refused this process: %s", text)
    else:
        log.warning("NATS error: %r", exc)
