"""A provider call that answered after its request had ended is billed, not dropped (issue 17, defect 3).

The race behind the report: the cancel's terminal gets into the stream first, and the worker's success, which
shares the terminal's event id, is refused as a duplicate. The worker now looks up what the stream holds and,
when it is another terminal, publishes the call as its own ``AttemptFailed`` (``after_end``) with the usage and
cost, which audit bills and policy settles; a retried publish of the success itself publishes nothing more.
"""

from __future__ import annotations

import asyncio

import pytest

from services.workers.service import publish_outcome
from shared.bus import Bus
from shared.canonical import ChatResponse, Choice, Message, Usage
from shared.errors import ErrorInfo
from shared.events import (
    ATTEMPT_FAILED,
    AttemptDispatched,
    AttemptFailed,
    CompletionCancelled,
    CompletionSucceeded,
    Target,
    decoder,
    lane_subject,
    terminal_id,
)
from shared.natsd import NatsServer
from shared.settings import TelemetrySettings
from shared.telemetry import Telemetry
from tests.support.events import chat, ctx

TARGET = Target(deployment="mock/m", provider="mock", model="mock-1", upstream_model="m")


@pytest.fixture(scope="module")
async def bus(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("afterend")).start()
    b = Bus(server.client_settings(), Telemetry(TelemetrySettings()))
    await b.connect()
    await b.ensure_stream()
    yield b
    await b.close()
    server.stop()


def dispatched(rid: str) -> AttemptDispatched:
    return AttemptDispatched(event_id=f"{rid}.attempt.1", request_id=rid, ctx=ctx(job=True), request=chat(),
                             attempt=1, target=TARGET)


def success(d: AttemptDispatched) -> CompletionSucceeded:
    response = ChatResponse(model="m", choices=[Choice(index=0, message=Message(role="assistant", content="hi"))],
                            usage=Usage(prompt_tokens=10, completion_tokens=5))
    return CompletionSucceeded(event_id=terminal_id(d.request_id), request_id=d.request_id, ctx=d.ctx, attempt=1,
                               target=TARGET, response=response, cost_usd=0.25, latency_ms=12.0)


async def failures(bus: Bus) -> tuple[list[AttemptFailed], object]:
    got: list[AttemptFailed] = []

    async def on_msg(msg) -> None:
        got.append(decoder.decode(msg.data))

    sub = await bus.nc.subscribe(lane_subject(ATTEMPT_FAILED, "batch"), cb=on_msg)
    return got, sub


async def test_an_answer_after_the_cancel_is_billed_as_its_own_outcome(bus):
    d = dispatched("job_afterend1")
    got, sub = await failures(bus)
    cancel = CompletionCancelled(event_id=terminal_id(d.request_id), request_id=d.request_id, ctx=d.ctx,
                                 error=ErrorInfo(status=499, type="cancelled", code="cancelled", message="c",
                                                 outcome="cancelled"))
    await bus.publish(cancel)
    await publish_outcome(bus, d, [success(d)])
    await bus.nc.flush()
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    assert len(got) == 1, got
    late = got[0]
    assert late.after_end and late.event_id == f"{d.request_id}.attempt.1.after_end"
    assert late.cost_usd == 0.25 and late.usage.completion_tokens == 5
    assert late.error.outcome == "cancelled" and late.dispatch.attempt == 1


async def test_a_retried_publish_of_the_answer_itself_adds_nothing(bus):
    d = dispatched("job_afterend2")
    got, sub = await failures(bus)
    answer = success(d)
    await publish_outcome(bus, d, [answer])
    await publish_outcome(bus, d, [answer])  # the same event again: its own duplicate
    await bus.nc.flush()
    await asyncio.sleep(0.2)
    await sub.unsubscribe()
    assert got == []
