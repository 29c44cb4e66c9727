"""The bus against a real nats-server: de-duplication, and handler outcomes mapped to ack / nak / term / poison."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.errors import APIError

from shared.bus import Bus, Bucket, Subscription
from shared.errors import InvalidRequest, UpstreamUnavailable
from shared.events import CompletionFailed, CompletionRequested, decoder, encoder
from shared.state.jobs import advance_job, get_job
from shared.events import JobRecord
from shared.lifecycle import poison
from shared.natsd import NatsServer
from shared.settings import ConsumerSettings, NatsSettings, TelemetrySettings
from shared.telemetry import Telemetry
from tests.support.events import chat, requested
from tests.support.wait import eventually


@pytest.fixture(scope="module")
async def bus(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("busnats")).start()
    b = Bus(server.client_settings(), Telemetry(TelemetrySettings()))  # the operator: test consumers and buckets
    await b.connect()
    await b.ensure_stream()
    yield b
    await b.close()
    server.stop()


async def collect(bus: Bus, subject: str, n: int, timeout: float = 5.0) -> list:
    got: list = []
    done = asyncio.Event()

    async def cb(msg):
        got.append(decoder.decode(msg.data))
        if len(got) >= n:
            done.set()

    sub = await bus.nc.subscribe(subject, cb=cb)
    return got, done, sub


async def test_publish_is_deduplicated_by_event_id(bus):
    e = requested(rid="req_dedupe")
    first = await bus.publish(e)
    second = await bus.publish(e)
    assert not first.duplicate and second.duplicate
    assert second.seq == first.seq


async def test_publish_errors_are_raised_like_nats_py_raises_them(bus):
    # The stream's own error: a publish that expects another stream is refused by the server.
    with pytest.raises(APIError) as refused:
        await bus.replies.publish("sy.evt.requested", b"{}", {"Nats-Expected-Stream": "NOT_THIS_ONE"}, 2.0)
    assert refused.value.err_code == 10060
    # No stream captures the subject: no responders, which the bus reports as unavailable after its retries.
    with pytest.raises(nats.errors.NoRespondersError):
        await bus.replies.publish("outside.every.stream", b"{}", {}, 2.0)
    # An acknowledgement that never comes is a timeout, and its reply slot is given back.
    async def silent(msg) -> None:
        return None

    await bus.nc.subscribe("sy.test.silent", cb=silent)
    with pytest.raises(nats.errors.TimeoutError):
        await bus.replies.request("sy.test.silent", b"", {}, 0.2)
    assert not bus.replies._pending


async def test_handler_outcomes(bus):
    calls: dict[str, int] = {}
    sub = Subscription("t-outcomes", ("sy.evt.requested",),
                       ConsumerSettings(ack_wait_s=5, max_deliver=3, concurrency=8, batch=8))
    got, done, core = await collect(bus, "sy.evt.done.gw-outcomes", 2)

    async def handler(event: CompletionRequested, delivery):
        calls[event.request_id] = calls.get(event.request_id, 0) + 1
        kind = event.request.model
        if kind == "flaky-once" and delivery.num_delivered == 1:
            raise UpstreamUnavailable("first delivery fails")
        if kind == "bad":
            raise InvalidRequest("never retried")
        if kind == "poison":
            raise RuntimeError("always fails")
        return []

    task = bus.start(bus.consume("test", sub, handler, on_poison=poison))
    for rid, model in [("req_ok", "fine"), ("req_flaky", "flaky-once"), ("req_bad", "bad"), ("req_poison", "poison")]:
        await bus.publish(requested(chat(model), rid=rid, origin="gw-outcomes"))
    await asyncio.wait_for(done.wait(), 15)

    async def settled() -> bool:  # every message acknowledged, the redelivered one included
        info = await bus.js.consumer_info(bus.settings.stream, "t-outcomes")
        return (info.num_ack_pending == 0 and info.num_pending == 0 and "req_ok" in calls
                and calls.get("req_flaky", 0) >= 2)

    await eventually(settled, timeout=15, message=lambda: f"handler calls {calls}")
    task.cancel()
    await core.unsubscribe()
    assert calls["req_ok"] == 1
    assert calls["req_flaky"] == 2          # nak → redelivered once
    assert calls["req_poison"] == 3         # every delivery up to max_deliver
    terminals = {e.request_id: e for e in got}
    # Non-retryable and poisoned messages both end their request with a terminal failure.
    assert set(terminals) == {"req_bad", "req_poison"}
    assert all(isinstance(e, CompletionFailed) for e in terminals.values())
    assert terminals["req_bad"].error.status == 400
    assert terminals["req_poison"].error.status == 500
    info = await bus.js.consumer_info(bus.settings.stream, "t-outcomes")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_job_records_only_move_forward(bus):
    kv = await bus.kv(Bucket("t_jobs"))
    base = JobRecord(id="job_1", tenant="t", team="a", model="m", status="queued", created_at=1.0)
    import msgspec

    await advance_job(kv, "job_1", lambda cur: base if cur is None else None)
    done = msgspec.structs.replace(base, status="completed", completed_at=2.0)
    # Two writers race: one completes, one tries to mark in_progress. Order must not matter.
    await asyncio.gather(
        advance_job(kv, "job_1", lambda cur: done),
        advance_job(kv, "job_1", lambda cur: msgspec.structs.replace(base, status="in_progress")),
    )
    assert (await get_job(kv, "job_1")).status == "completed"
    await advance_job(kv, "job_1", lambda cur: msgspec.structs.replace(base, status="cancelled"))
    assert (await get_job(kv, "job_1")).status == "completed"


async def test_consumer_shape_changes(bus):
    """A change JetStream cannot make in place (here: the ack policy) is refused for ordinary consumers, whose
    replay could re-run old requests, and recreated for replayable (idempotent) ones."""
    from nats.js.api import AckPolicy, ConsumerConfig

    settings = ConsumerSettings()

    # A consumer made by an older version, with another ack policy.
    await bus.js.add_consumer(bus.settings.stream, ConsumerConfig(durable_name="t-shape", ack_policy=AckPolicy.ALL,
                                                                  filter_subject="sy.evt.requested"))
    with pytest.raises(RuntimeError, match="cannot be updated in place"):
        await bus.ensure_consumer(Subscription("t-shape", ("sy.evt.requested",), settings))
    await bus.ensure_consumer(Subscription("t-shape", ("sy.evt.requested",), settings, replayable=True))
    info = await bus.js.consumer_info(bus.settings.stream, "t-shape")
    assert str(getattr(info.config.ack_policy, "value", info.config.ack_policy)) == "explicit"
    # A change JetStream can apply in place (ack wait) is just applied.
    await bus.ensure_consumer(Subscription("t-shape", ("sy.evt.requested",), ConsumerSettings(ack_wait_s=7)))
    assert (await bus.js.consumer_info(bus.settings.stream, "t-shape")).config.ack_wait == 7


def test_delivery_counts_come_from_the_reply_subject():
    from nats.aio.msg import Msg

    from shared.bus import delivery_of

    v1 = Msg(_client=None, subject="sy.evt.requested", reply="$JS.ACK.SWITCHYARD.policy.3.1042.77.1700000000000000000.5",
             headers={"traceparent": "x"})
    d = delivery_of(v1)
    assert (d.num_delivered, d.stream_seq, d.headers) == (3, 1042, {"traceparent": "x"})
    v2 = Msg(_client=None, subject="s", reply="$JS.ACK.hub.ACCHASH.SWITCHYARD.audit.2.99.10.1700000000000000000.0.tok")
    assert (delivery_of(v2).num_delivered, delivery_of(v2).stream_seq) == (2, 99)
    assert (delivery_of(v2).num_delivered, delivery_of(v2).stream_seq) == (v2.metadata.num_delivered,
                                                                          v2.metadata.sequence.stream)
    with pytest.raises(Exception):
        delivery_of(Msg(_client=None, subject="s", reply="_INBOX.abc"))


async def test_kv_reads_are_direct_gets_that_tell_a_missing_key_from_a_missing_bucket(bus):
    from nats.js.api import KeyValueConfig

    from shared.errors import ServiceUnavailable
    from shared.state.kv import kv_get

    # A bucket made by an earlier version (no direct gets) is upgraded when the bus opens it.
    await bus.js.create_key_value(KeyValueConfig(bucket="t_direct_old", history=1))
    kv = await bus.kv(Bucket("t_direct_old"))
    assert (await bus.js.stream_info("KV_t_direct_old")).config.allow_direct
    assert await kv_get(kv, "absent") is None
    rev = await kv.put("k", b"v1")
    entry = await kv_get(kv, "k")
    assert (entry.value, entry.revision) == (b"v1", rev)
    await kv.update("k", b"v2", last=rev)
    assert (await kv.get("k")).value == b"v2"
    await kv.delete("k")
    assert await kv_get(kv, "k") is None  # a deleted key reads as missing
    assert await kv.create("k", b"again") > rev  # and can be created again
    await bus.js.delete_key_value("t_direct_old")
    with pytest.raises(ServiceUnavailable):
        await kv_get(kv, "k")  # the bucket is gone: not "no such key"


async def test_direct_subscriptions_deliver_in_order_without_a_task_per_subscription(bus):
    """``Bus.subscribe`` hands messages to a synchronous function from the read loop, in order; a failing
    function is logged and the subscription goes on; unsubscribing and draining still work."""
    got: list[bytes] = []

    def fn(msg):
        if msg.data == b"boom":
            raise RuntimeError("handler bug")
        got.append(msg.data)

    sub = await bus.subscribe("test.direct", fn)
    await eventually(sub._wait_for_msgs_task.done, timeout=1)
    assert sub._wait_for_msgs_task.done()  # nats-py's per-subscription task is gone
    assert not isinstance(sub._pending_queue, asyncio.Queue)
    for i in range(50):
        await bus.nc.publish("test.direct", b"boom" if i == 10 else str(i).encode())
    await bus.nc.flush()
    await eventually(lambda: len(got) >= 49, timeout=5, message=lambda: f"{len(got)} of 49 delivered")
    assert got == [str(i).encode() for i in range(50) if i != 10]
    assert sub.pending_msgs == 0
    await sub.drain()
    await bus.nc.publish("test.direct", b"late")
    await bus.nc.flush()
    # Behaviour under test: nothing arrives after the drain, so the test gives a late message time to (not) come.
    await asyncio.sleep(0.05)
    assert got[-1] == b"49"


async def test_busy_poll_keeps_the_loop_turning_for_its_window_only():
    from shared.bus import BusyPoll

    poll = BusyPoll(0.02)
    poll.start()
    turns = 0
    original = poll._turn

    def counting():
        nonlocal turns
        turns += 1
        original()

    poll._turn = counting
    poll.poke()
    assert poll._armed
    # Behaviour under test: the 20 ms window runs out by itself; this sleep is that window passing.
    await asyncio.sleep(0.05)
    assert not poll._armed  # the window passed with no message: the loop may sleep again
    assert turns > 1
    seen = turns
    # Behaviour under test: an idle loop is not kept turning, so time passes and nothing may happen.
    await asyncio.sleep(0.03)
    assert turns == seen  # nothing keeps an idle loop busy
    off = BusyPoll(0.0)
    off.start()
    off.poke()
    assert not off._armed


def test_busy_poll_is_on_by_default_only_where_one_process_runs_the_request_path():
    from services.bootstrap import BUSY_POLL_S
    from services.targets import REQUEST_PATH

    tel = Telemetry(TelemetrySettings())
    assert Bus(NatsSettings(), tel, busy_poll_s=BUSY_POLL_S).poll.window_s == BUSY_POLL_S
    assert Bus(NatsSettings(), tel, busy_poll_s=0.0).poll.window_s == 0.0
    assert Bus(NatsSettings(busy_poll_us=0), tel, busy_poll_s=BUSY_POLL_S).poll.window_s == 0.0
    assert Bus(NatsSettings(busy_poll_us=2000), tel, busy_poll_s=0.0).poll.window_s == 0.002
    assert set(REQUEST_PATH) == {"gateway", "policy", "router", "worker"}


async def test_a_yielding_consumer_reads_its_small_window_while_the_api_is_busy_and_its_full_one_after(bus):
    """shared/bus/serving.py against a real server: while this process's API answers ``busy_at`` requests, a
    yielding subscription (the batch lane's first stage) holds at most ``window`` messages; once the API is quiet
    it reads its full window at once, without waiting for a message to finish."""
    from shared.bus.serving import Serving

    saved = bus.serving
    bus.serving = Serving(busy_at=1, window=3)
    held, release = set(), asyncio.Event()
    sub = Subscription("t-yield", ("sy.evt.requested.yield",), ConsumerSettings(concurrency=20, ack_wait_s=30),
                       yields=True)

    async def handler(event: CompletionRequested, delivery):
        held.add(event.request_id)
        await release.wait()
        return []

    bus.serving.started()  # one request in flight: busy
    task = bus.start(bus.consume("test-yield", sub, handler))
    try:
        for i in range(40):
            await bus.js.publish("sy.evt.requested.yield", encoder.encode(requested(chat("m"), rid=f"req_y{i}")))
        await eventually(lambda: len(held) == 3, timeout=10, message=lambda: f"held {len(held)}")
        await asyncio.sleep(0.5)
        assert len(held) == 3  # the small window, with 37 waiting in the stream
        bus.serving.finished()  # the API is quiet
        await eventually(lambda: len(held) == 20, timeout=10, message=lambda: f"held {len(held)}")
        release.set()

        async def settled() -> bool:
            info = await bus.js.consumer_info(bus.settings.stream, "t-yield")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(settled, timeout=15)
        assert len(held) == 40
    finally:
        task.cancel()
        bus.serving = saved
