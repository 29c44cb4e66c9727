"""Fault test: nats-server down while clients call. An answer of "not accepted" must mean the request never runs.

nats-py keeps what is published while it reconnects and sends it once connected again; a gateway that gave
up on such a publish (503) used to see the request run and be billed when NATS came back (issue 17, defect
1). Here nats-server is SIGKILLed, sync, streamed, Anthropic and job requests are sent during the outage,
the server is restarted, and the fake upstream's call count, the traces and the ledger show none of them ran.
With the server frozen instead (SIGSTOP: the connection looks alive, publishes are written and never
acknowledged) the answer cannot promise that, so it says ``outcome_unknown`` with the request id, and after
the thaw each such request's fate is queryable and it ran at most once.
The lower-level check shows the mechanism itself on a real server: a publish left in the reconnect buffer
goes out on reconnect unless ``natsfast.withdraw`` took it out.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
import yaml

from shared.bus.natsfast import withdraw
from shared.natsd import NatsServer
from tests.fakes.providers import FakeProviders
from tests.support.system import make_settings, start_system
from tests.support.upstream import catalog
from tests.support.wait import eventually

pytestmark = pytest.mark.fault
CHAT = {"model": "up-1", "messages": [{"role": "user", "content": "hello"}]}


async def test_publish_withdrawn_from_the_reconnect_buffer_never_goes_out(tmp_path: Path):
    server = NatsServer(tmp_path / "nats", auth=False, encrypt=False).start()
    received: list[bytes] = []
    listener = sender = None
    try:
        sender = await nats.connect(server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        server.stop(kill=True)
        await eventually(lambda: sender.is_reconnecting, timeout=5, interval=0.02)
        # Both wait in nats-py's buffer while it reconnects; one is withdrawn, as a gateway does on giving up.
        await sender.publish("outage.kept", b"kept", reply="_INBOX.kept")
        await sender.publish("outage.dropped", b"dropped", reply="_INBOX.dropped")
        assert withdraw(sender, "outage.dropped", "_INBOX.dropped")
        assert not withdraw(sender, "outage.dropped", "_INBOX.dropped")
        server.start()
        listener = await nats.connect(server.url)

        async def got(msg) -> None:
            received.append(msg.data)

        await listener.subscribe("outage.>", cb=got)
        await listener.flush()
        await eventually(lambda: sender.is_connected, timeout=10, interval=0.05)
        await sender.flush()
        await listener.flush()
        await eventually(lambda: received, timeout=5, interval=0.02)
        await asyncio.sleep(0.3)  # anything else that was going to arrive has arrived over one local hop
        assert received == [b"kept"]
    finally:
        for nc in (sender, listener):
            if nc is not None:
                await asyncio.gather(nc.close(), return_exceptions=True)
        server.stop()


@asynccontextmanager
async def rig(tmp_path: Path, bus_timeout_s: float | None = None):
    """A system in this process on its own nats-server (whose handle the test keeps) and a fake upstream."""
    fakes = FakeProviders().start()
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog(fakes)))
    server = NatsServer(tmp_path / "nats").start()
    try:
        settings = make_settings(server, tmp_path / "data", catalog_path=str(path))
        if bus_timeout_s is not None:
            settings.nats.connect_timeout_s = bus_timeout_s
        system = await start_system(settings)
        try:
            assert (await system.http.post("/v1/chat/completions", json=CHAT)).status_code == 200
            yield system, fakes, server
        finally:
            await system.close()
    finally:
        server.stop()
        fakes.stop()


async def marker_recorded(http) -> None:
    """A request after the fault, recorded: so is anything the stream took before it (one stream, read in order
    by audit)."""
    marker = await http.post("/v1/chat/completions", json=CHAT)
    assert marker.status_code == 200, marker.text
    await eventually(lambda: _has_trace(http, marker.headers["x-request-id"]), timeout=30, interval=0.1)


async def test_requests_refused_during_a_nats_outage_never_run(tmp_path: Path):
    async with rig(tmp_path) as (system, fakes, server):
        http, bus = system.http, system.deps.bus
        calls_before = len(fakes.requests_to("openai"))

        server.stop(kill=True)
        await eventually(lambda: not bus.connected, timeout=5, interval=0.02)
        calls = [http.post("/v1/chat/completions", json=CHAT) for _ in range(5)]
        calls += [http.post("/v1/chat/completions", json={**CHAT, "stream": True}) for _ in range(2)]
        calls += [http.post("/v1/messages", json={**CHAT, "max_tokens": 16}) for _ in range(2)]
        calls += [http.post("/v1/jobs", json=CHAT) for _ in range(5)]
        answers = await asyncio.gather(*calls)
        refused = []
        for r in answers:
            assert r.status_code == 503, r.text
            assert "not accepted" in r.text.lower(), r.text  # OpenAI code not_accepted; Anthropic has no code
            rid = r.headers.get("x-request-id")
            if rid is not None:  # refused after it had an id (at its publish): the body names it too
                assert rid in r.text, r.text
                refused.append(rid)

        server.start()
        await eventually(lambda: bus.connected, timeout=15, interval=0.05)
        await marker_recorded(http)  # the system works again
        assert len(fakes.requests_to("openai")) == calls_before + 1
        for rid in refused:
            assert (await http.get(f"/v1/requests/{rid}")).status_code == 404, rid
            if rid.startswith("job_"):
                assert (await http.get(f"/v1/jobs/{rid}")).status_code == 404, rid
        ledger = (await http.get("/v1/ledger", params={"limit": 1000})).json()["data"]
        assert not {row["request_id"] for row in ledger} & set(refused)


async def _has_trace(http, rid: str) -> bool:
    r = await http.get(f"/v1/requests/{rid}")
    return r.status_code == 200 and r.json().get("status") not in (None, "queued", "in_progress")


async def test_unacknowledged_requests_carry_their_id_and_run_at_most_once(tmp_path: Path):
    # A short bus timeout: each of the gateway's publish attempts gives up after a second.
    async with rig(tmp_path, bus_timeout_s=1.0) as (system, fakes, server):
        http = system.http
        calls_before = len(fakes.requests_to("openai"))
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            sending = asyncio.ensure_future(asyncio.gather(
                *(http.post("/v1/chat/completions", json={**CHAT, "messages": [
                    {"role": "user", "content": f"frozen {i}"}]}) for i in range(3)),
                *(http.post("/v1/jobs", json={**CHAT, "messages": [
                    {"role": "user", "content": f"frozen job {i}"}]}) for i in range(3))))
            # Frozen long enough for every publish attempt of the gateway (1 s each) to give up.
            await asyncio.sleep(8)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        answers = await sending
        unknown, refused = [], []
        for r in answers:
            rid = r.headers.get("x-request-id")
            assert rid, (r.status_code, r.text)  # an answer that cannot promise "never runs" names its request
            if r.status_code == 503 and "not_accepted" in r.text:
                refused.append(rid)  # never sent (withdrawn): must never run
                continue
            assert r.status_code in (200, 202, 503, 504), r.text
            if r.status_code == 503:
                assert "outcome_unknown" in r.text and rid in r.text, r.text
            unknown.append(rid)
        assert unknown, [r.text for r in answers]

        await marker_recorded(http)  # then each unacknowledged request has run to its end or never will

        async def ended() -> bool:
            for rid in unknown:
                t = await http.get(f"/v1/requests/{rid}")
                if t.status_code == 200 and t.json().get("status") in ("queued", "in_progress", None):
                    return False
            return True
        await eventually(ended, timeout=30, interval=0.2)
        ran = [rid for rid in unknown if (await http.get(f"/v1/requests/{rid}")).status_code == 200]
        for rid in refused:
            assert (await http.get(f"/v1/requests/{rid}")).status_code == 404, rid
        # At most one provider call per request, whatever the gateway's retried publishes did.
        prompts = [r.json["messages"][0]["content"] for r in fakes.requests_to("openai")[calls_before:]
                   if r.json["messages"][0]["content"].startswith("frozen")]
        assert len(prompts) == len(set(prompts)) == len(ran), (prompts, ran)
        print(f"\nunacknowledged: {len(unknown)}, of which ran after the thaw: {len(ran)}")
