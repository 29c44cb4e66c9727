"""Two hot-path helpers without a server: a JetStream publish's reply waited for with a plain timer (answered,
timed out, cancelled: no timer or pending entry left behind), and metric children handed back from a memo."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import generate_latest

from shared.aio import wait_future
from shared.bus.natsfast import Replies
from shared.telemetry import Metrics


class FakeNats:
    """What ``Replies`` uses of a client: an inbox, ``publish`` and ``is_connected``; answers when told to."""

    is_connected = True

    def __init__(self, answer_after: float | None) -> None:
        self.answer_after = answer_after
        self.replies: Replies | None = None

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def publish(self, subject: str, data: bytes, reply: str = "", headers=None) -> None:
        if self.answer_after is not None:
            msg = Msg(self, subject=reply, data=b'{"stream":"s","seq":7}')
            asyncio.get_running_loop().call_later(self.answer_after, self.replies._on_reply, msg)


def replies_for(nc: FakeNats) -> Replies:
    nc.replies = Replies(nc)
    return nc.replies


def timers() -> int:
    """Timers still armed on the running loop (asyncio's own, whose heap this reads)."""
    return sum(not h.cancelled() for h in asyncio.get_running_loop()._scheduled)


def on_own_loop(test):
    """Run ``test`` on an event loop of its own: the timers it counts are only its own, whatever else the
    session's loop holds (other tests' buses)."""
    def run() -> None:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:  # asyncio's loop, not uvloop
            runner.run(test())
    run.__name__ = test.__name__
    return run


@on_own_loop
async def test_an_answered_request_leaves_no_timer_and_no_pending_entry():
    r = replies_for(FakeNats(answer_after=0.01))
    before = timers()
    ack = await r.publish("sy.x", b"{}", None, timeout=5.0)
    assert (ack.stream, ack.seq) == ("s", 7)
    assert r._pending == {}
    await asyncio.sleep(0)
    assert timers() == before  # the 5 s timer was cancelled, not left to fire


async def test_an_unanswered_request_times_out_as_nats_py_would():
    r = replies_for(FakeNats(answer_after=None))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NatsTimeoutError):
        await r.request("sy.x", b"{}", None, timeout=0.05)
    assert 0.04 <= loop.time() - started < 1.0
    assert r._pending == {}


@on_own_loop
async def test_a_cancelled_wait_cancels_its_timer():
    r = replies_for(FakeNats(answer_after=None))
    before = timers()
    task = asyncio.ensure_future(r.request("sy.x", b"{}", None, timeout=30.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert timers() == before and r._pending == {}


def test_labels_hand_back_the_same_child_and_count_into_it():
    m = Metrics()
    child = m.requests.labels("chat", "success")
    assert m.requests.labels("chat", "success") is child
    child.inc()
    m.requests.labels("chat", "success").inc(2)
    m.requests.labels("chat", "error").inc()
    text = generate_latest(m.registry).decode()
    assert 'switchyard_requests_total{api="chat",outcome="success"} 3.0' in text
    assert 'switchyard_requests_total{api="chat",outcome="error"} 1.0' in text
    assert m.requests.labels(api="chat", outcome="success") is child  # by name: prometheus_client's own lookup
    with pytest.raises(ValueError):
        m.requests.labels("chat")  # a wrong number of values is still refused


@on_own_loop
async def test_wait_future_fails_the_future_at_its_timeout_and_disarms_on_an_answer():
    loop = asyncio.get_running_loop()
    late = loop.create_future()
    with pytest.raises(TimeoutError):
        await wait_future(late, 0.02)
    assert isinstance(late.exception(), TimeoutError)  # a resolver that comes later sees it done
    before = timers()
    soon = loop.create_future()
    loop.call_later(0.01, soon.set_result, "ok")
    assert await wait_future(soon, 10.0) == "ok"
    assert timers() == before
