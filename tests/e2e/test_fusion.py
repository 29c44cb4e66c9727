"""Stage fusion end to end: in one process policy routes at admission; every event still reaches the stream.

Reads the stream itself (its sequence numbers) to check that a request's first attempt was stored before the
admission marked as routed, that the marked admission is on the subject no router reads, and that a system
with fusion turned off routes through the router consumer as before.
"""

from __future__ import annotations

import pytest

from services.router.settings import RouterSettings
from shared.events import AttemptDispatched, RequestAdmitted, decoder
from shared.natsd import NatsServer
from tests.support.api import wait_trace
from tests.support.system import make_settings, start_system
from tests.support.wait import eventually


async def stream_events(system, request_id: str) -> list[tuple[int, str, object]]:
    """(stream sequence, subject, event) of every stored event of the request, in stream order."""
    js = system.deps.bus.js
    stream = system.deps.settings.nats.stream
    info = await js.stream_info(stream)
    out = []
    for seq in range(max(1, info.state.last_seq - 200), info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except Exception:  # noqa: BLE001 - purged or deleted sequence
            continue
        event = decoder.decode(msg.data)
        if event.request_id == request_id:
            out.append((seq, msg.subject, event))
    return out


async def stored_admission(system, request_id: str) -> list[tuple[int, str, object]]:
    """The request's stored events, once its admission and an attempt are both on the stream (the admission is
    published after the attempt's PubAck)."""
    async def both():
        events = await stream_events(system, request_id)
        kinds = {type(e) for _, _, e in events}
        return events if {AttemptDispatched, RequestAdmitted} <= kinds else None
    return await eventually(both, message=f"admission and attempt of {request_id} on the stream")


async def complete(system) -> str:
    r = await system.http.post("/v1/chat/completions", json={
        "model": "mock-1", "messages": [{"role": "user", "content": "fuse me"}]})
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


async def test_the_first_attempt_is_stored_before_the_routed_admission(system):
    rid = await complete(system)
    events = await stored_admission(system, rid)
    [(d_seq, d_subject, dispatched)] = [e for e in events if isinstance(e[2], AttemptDispatched)]
    [(a_seq, a_subject, admitted)] = [e for e in events if isinstance(e[2], RequestAdmitted)]
    assert d_seq < a_seq
    assert a_subject == "sy.evt.admitted.routed" and admitted.routed_by and admitted.routed_by.startswith("router-")
    assert d_subject.startswith("sy.evt.attempt.")
    trace = await wait_trace(system, rid, "succeeded")
    assert trace["status"] == "succeeded" and len(trace["attempts"]) == 1


@pytest.fixture(scope="module")
async def system(tmp_path_factory):
    """Switchyard on its own nats-server that keeps every event (these tests read a finished request's events
    back from the stream, which the sweep would have removed: shared.bus.retention)."""
    server = NatsServer(tmp_path_factory.mktemp("nats-fusion")).start()
    settings = make_settings(server, tmp_path_factory.mktemp("data-fusion"))
    settings.nats.sweep_s = 0
    running = await start_system(settings)
    yield running
    await running.close()
    server.stop()


@pytest.fixture
async def unfused(tmp_path):
    """A second Switchyard on its own nats-server (one stream per server captures ``sy.evt.>``)."""
    server = NatsServer(tmp_path / "nats").start()
    settings = make_settings(server, tmp_path / "data", router=RouterSettings(fuse_with_policy=False))
    settings.nats.sweep_s = 0  # the test reads the request's events back from the stream
    running = await start_system(settings)
    yield running
    await running.close()
    server.stop()


async def test_without_fusion_the_router_consumer_routes(unfused):
    rid = await complete(unfused)
    events = await stored_admission(unfused, rid)
    [(_, a_subject, admitted)] = [e for e in events if isinstance(e[2], RequestAdmitted)]
    assert a_subject == "sy.evt.admitted" and admitted.routed_by is None
    assert any(isinstance(e[2], AttemptDispatched) for e in events)
    trace = await wait_trace(unfused, rid, "succeeded")
    assert trace["status"] == "succeeded"
