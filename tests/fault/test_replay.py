"""Already-handled messages delivered again as first deliveries (issue 17, defect 4): no stage acts twice.

A nats-server SIGKILLed before its acknowledgements reached the disk delivers messages its consumers had
handled again, with a delivery count of 1: before, the worker called the provider again (its answer then
dropped as a duplicate terminal: an unbilled call with nothing in the trace), and a stale failure could make
the router decide anew after the request had ended. Here the same replay is made certain: router and worker
run as their own replicas, the requests are answered, both are stopped and their durable consumers deleted,
and restarted replicas create them again from the start of the stream (the sweep is off, so every event is
still there): every admission, attempt and failure comes back as a first delivery.

Safe outcome: the provider is not called again (the attempt marks, ``shared.state.attempts``, say each
attempt's outcome is in the stream), the router publishes nothing new for a replayed failure, and the
stream gains no event at all from the replay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import nats
import pytest
import yaml

from shared.natsd import NatsServer
from tests.fakes.providers import Fault, FakeProviders
from tests.support.system import ADMIN_KEY, make_settings, start_replica, start_system
from tests.support.upstream import catalog
from tests.support.wait import eventually

pytestmark = pytest.mark.fault
ANSWERED = 6
REFUSED = 2  # the provider refuses them (400): the router ends each after its failed attempt
BODY = {"model": "up-1", "messages": [{"role": "user", "content": "replay"}], "max_tokens": 8}


async def test_replayed_messages_do_not_call_the_provider_or_dispatch_again(tmp_path: Path):
    fakes = FakeProviders().start()
    server = NatsServer(tmp_path / "nats").start()
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog(fakes)))
    settings = make_settings(server, tmp_path / "data", catalog_path=str(tmp_path / "catalog.yaml"),
                             shutdown_grace_s=1)
    settings = settings.model_copy(update={"nats": settings.nats.model_copy(update={"sweep_s": 0})})
    system = await start_system(settings, targets="gateway,policy,audit")
    stages = [await start_replica(settings, "router"), await start_replica(settings, "worker:up")]
    operator = await nats.connect(**server.connect_options())
    js = operator.jetstream()
    try:
        http = httpx.AsyncClient(base_url=system.base_url, timeout=30,
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"})
        answers = [await http.post("/v1/chat/completions", json=BODY) for _ in range(ANSWERED)]
        assert [r.status_code for r in answers] == [200] * ANSWERED
        fakes.fail("openai", Fault(status=400), times=REFUSED)
        refused = [await http.post("/v1/chat/completions", json=BODY) for _ in range(REFUSED)]
        assert [r.status_code for r in refused] == [400] * REFUSED, [r.text for r in refused]
        calls = len(fakes.requests_to("openai"))
        assert calls == ANSWERED + REFUSED

        async def settled(name: str) -> bool:
            info = await js.consumer_info(settings.nats.stream, name)
            return info.num_pending == 0 and info.num_ack_pending == 0

        for name in ("router", "worker-up"):
            await eventually(lambda n=name: settled(n), timeout=10)
        for stage in stages:
            await stage.stop()
        last = (await js.stream_info(settings.nats.stream)).state.last_seq
        # As after a server that lost its acknowledgements: everything comes back as first deliveries.
        for name in ("router", "worker-up"):
            await js.delete_consumer(settings.nats.stream, name)
        published: list[str] = []

        async def seen(msg) -> None:
            published.append(msg.subject)

        watch = [await operator.subscribe(s, cb=seen) for s in ("sy.evt.attempt.>", "sy.evt.attempt_failed",
                                                                 "sy.evt.done.>")]
        stages = [await start_replica(settings, "router"), await start_replica(settings, "worker:up")]
        for name in ("router", "worker-up"):
            await eventually(lambda n=name: settled(n), timeout=15)
        replayed = await js.consumer_info(settings.nats.stream, "worker-up")
        assert replayed.delivered.stream_seq > 0  # the worker did get the attempts again
        await asyncio.sleep(0.3)  # anything the replay set off has reached the server
        assert len(fakes.requests_to("openai")) == calls, "a replayed attempt called the provider again"
        assert (await js.stream_info(settings.nats.stream)).state.last_seq == last
        # The router re-routes a replayed admission (the stream drops it as the duplicate it is), but decides
        # nothing anew for a replayed failure: no attempt and no terminal published for it.
        assert not [s for s in published if s.startswith("sy.evt.done") or s == "sy.evt.attempt_failed"], published
        for w in watch:
            await w.unsubscribe()
        await http.aclose()
    finally:
        for stage in stages:
            await stage.stop()
        await operator.close()
        await system.close()
        server.stop()
        fakes.stop()
