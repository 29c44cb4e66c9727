"""The audit export end to end: a Splunk HEC receiver that is down while requests and admin actions happen, then
up — every audit event reaches it exactly once, in order per request, in HEC format with the token, and the
rotating JSONL file holds the same records; the stream sweep never purges what the export has not delivered."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
from aiohttp import web

from services.audit.settings import AuditSettings, ExportSettings
from shared.bus.permissions import AUDIT_EXPORT_DURABLE
from shared.natsd import NatsServer, free_port
from tests.support.system import ADMIN_KEY, MEMBER_KEY, make_settings, start_system
from tests.support.wait import eventually

TOKEN = "hec-token-never-logged-7f3a"
PROMPT = "secret-prompt-words-qx81"


class Receiver:
    """A Splunk HTTP Event Collector stand-in on a fixed port, started and stopped at will."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: list[dict] = []
        self.auth: set[str] = set()
        self.runner: web.AppRunner | None = None

    async def collect(self, request: web.Request) -> web.Response:
        self.auth.add(request.headers.get("Authorization", ""))
        body = await request.text()
        for line in body.splitlines():
            self.events.append(json.loads(line))
        return web.json_response({"text": "Success", "code": 0})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/services/collector", self.collect)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_export_survives_a_receiver_outage_and_delivers_everything_once_in_order(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="switchyard")
    nats = NatsServer(tmp_path / "nats").start()
    receiver = Receiver(free_port())
    files = tmp_path / "export"
    settings = make_settings(
        nats, tmp_path / "data",
        audit=AuditSettings(export=ExportSettings(
            webhook_url=f"http://127.0.0.1:{receiver.port}/services/collector", webhook_format="splunk",
            webhook_token=TOKEN, splunk_host="sy-test", file_dir=str(files), file_max_bytes=4096, file_keep=50,
            batch=20, linger_s=0.05, backoff_s=0.05, backoff_max_s=0.3)))
    # The stream is swept every 0.2 s: during the outage it must keep what the export has not delivered.
    settings = settings.model_copy(update={"nats": nats.client_settings(user=None, sweep_s=0.2)})
    system = await start_system(settings)
    admin = httpx.AsyncClient(base_url=system.base_url, timeout=30, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    member = httpx.AsyncClient(base_url=system.base_url, timeout=30, headers={"authorization": f"Bearer {MEMBER_KEY}"})
    try:
        # The receiver is down: requests and admin actions happen all the same.
        for i in range(12):
            r = await member.post("/v1/chat/completions", json={
                "model": "resilient" if i % 4 == 0 else "mock-1", "messages": [{"role": "user", "content": PROMPT}]})
            assert r.status_code == 200, r.text
        key = (await admin.post("/v1/admin/keys", json={"team": "team-a", "role": "viewer"})).json()
        assert (await admin.post(f"/v1/admin/keys/{key['id']}/revoke")).status_code == 200

        async def trail() -> list[dict]:
            return (await admin.get("/v1/audit/events", params={"limit": 1000})).json()["data"]

        recorded = await eventually(lambda: _at_least(trail, 12 * 2 + 2), timeout=15, interval=0.1)
        await asyncio.sleep(1.5)  # several sweep rounds with audit done and the export still failing
        assert receiver.events == []
        js, stream = system.deps.bus.js, settings.nats.stream
        info = await js.consumer_info(stream, AUDIT_EXPORT_DURABLE)
        assert info.num_ack_pending + info.num_pending > 0  # waiting in the stream, not lost
        audit = await js.consumer_info(stream, "audit")
        assert audit.num_ack_pending == audit.num_pending == 0  # audit has every event: only the export holds
        assert (await js.stream_info(stream)).state.first_seq == 1  # nothing purged under the export

        await receiver.start()  # it comes back
        expected = await trail()
        assert len(expected) >= len(recorded)
        await eventually(lambda: len(receiver.events) >= len(expected), timeout=15, interval=0.1,
                         message=lambda: f"{len(receiver.events)} of {len(expected)} delivered")
        await asyncio.sleep(0.5)  # nothing more arrives: exactly once
        # Delivered and acknowledged: now the sweep removes them.
        await eventually(lambda: _purged(js, stream), timeout=10, interval=0.1)

        got = [e["event"] for e in receiver.events]
        assert sorted(e["id"] for e in got) == sorted(e["id"] for e in expected)  # every event, once
        assert len({e["id"] for e in got}) == len(got)
        for e in receiver.events:  # HEC's envelope
            assert set(e) == {"time", "host", "source", "sourcetype", "event"}
            assert e["host"] == "sy-test" and e["sourcetype"] == "switchyard:audit" and e["time"] == e["event"]["ts"]
        assert receiver.auth == {f"Splunk {TOKEN}"}
        for rid in {e["request_id"] for e in got if e["request_id"]}:  # in order per request
            mine = [e for e in got if e["request_id"] == rid]
            assert [e["ts"] for e in mine] == sorted(e["ts"] for e in mine), mine
            assert mine[0]["type"] == "admitted" and mine[-1]["type"] == "completed"
        assert {"key_created", "key_revoked"} <= {e["type"] for e in got}
        assert PROMPT not in json.dumps(got) and key["key"] not in json.dumps(got)  # metadata only

        # The files hold the same records in the same order, rotated by size.
        lines = []
        for path in sorted(files.glob("audit-*.jsonl")) + [files / "audit.jsonl"]:
            lines += [json.loads(x) for x in path.read_text().splitlines()]
        assert [x["id"] for x in lines] == [e["id"] for e in got]
        assert len(list(files.glob("audit-*.jsonl"))) >= 1
        assert (files / "audit.jsonl").stat().st_mode & 0o077 == 0
        assert not any(TOKEN in r.getMessage() for r in caplog.records)  # the token is never logged
    finally:
        await admin.aclose()
        await member.aclose()
        await system.close()
        await receiver.stop()
        nats.stop()


async def _purged(js, stream: str) -> bool:
    return (await js.stream_info(stream)).state.first_seq > 1


async def _at_least(trail, n: int) -> list[dict] | None:
    events = await trail()
    return events if len(events) >= n else None


async def test_plain_json_webhook_gets_a_json_array_with_bearer_token(tmp_path):
    nats = NatsServer(tmp_path / "nats").start()
    receiver_port = free_port()
    got: list[list[dict]] = []
    auth: set[str] = set()

    async def collect(request: web.Request) -> web.Response:
        auth.add(request.headers.get("Authorization", ""))
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver_port).start()
    settings = make_settings(nats, tmp_path / "data", audit=AuditSettings(export=ExportSettings(
        webhook_url=f"http://127.0.0.1:{receiver_port}/hook", webhook_format="json", webhook_token="tok",
        linger_s=0.05)))
    system = await start_system(settings)
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30,
                                     headers={"authorization": f"Bearer {MEMBER_KEY}"}) as c:
            rid = (await c.post("/v1/chat/completions", json={
                "model": "mock-1", "messages": [{"role": "user", "content": "hi"}]})).headers["x-request-id"]
        records = await eventually(lambda: [e for batch in got for e in batch if e["request_id"] == rid and
                                            e["type"] == "completed"], timeout=10, interval=0.05)
        assert records[0]["detail"]["outcome"] == "succeeded" and auth == {"Bearer tok"}
        assert set(records[0]) == {"id", "ts", "type", "tenant", "team", "key_id", "request_id", "actor", "detail"}
    finally:
        await system.close()
        await runner.cleanup()
        nats.stop()
