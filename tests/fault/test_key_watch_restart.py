"""Fault test: key revocation and creation hold within a second right after a nats-server restart.

The key index every gateway and policy keeps is fed by a KV watch that dies with the server; it used to come
back only seconds later while its stale copy was trusted (issue 17, defect 2: a revoked key served for 4-15 s,
a new key unknown to the other gateway for 6 s). Two gateways share one nats-server; the server is SIGKILLed
and restarted; a key is revoked and another created as soon as the admin API can write, and the other gateway
is hammered with both.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from services.gateway.settings import GatewaySettings
from shared.auth import KeyEntry, KeyStore
from shared.bus import Bus
from shared.errors import ServiceUnavailable
from shared.natsd import NatsServer, free_port
from shared.settings import TelemetrySettings
from shared.telemetry import Telemetry
from tests.support.governance import chat, make_key, make_team
from tests.support.system import make_settings, start_replica, start_system
from tests.support.wait import eventually

pytestmark = pytest.mark.fault


async def test_revocation_and_new_keys_within_a_second_after_a_nats_restart(tmp_path: Path):
    server = NatsServer(tmp_path / "nats").start()
    settings = make_settings(server, tmp_path / "data")
    system = await start_system(settings)
    other = await start_replica(settings.model_copy(update={"gateway": GatewaySettings(port=free_port())}),
                                "gateway,policy")
    far = httpx.AsyncClient(base_url=f"http://127.0.0.1:{other.deps.settings.gateway.port}", timeout=10)
    try:
        await make_team(system.http, "restart")
        doomed, meta = await make_key(system.http, "restart")
        bearer = {"authorization": f"Bearer {doomed}"}
        assert (await far.post("/v1/chat/completions", json=chat(), headers=bearer)).status_code == 200

        server.stop(kill=True)
        await eventually(lambda: not system.deps.bus.connected, timeout=5, interval=0.02)
        server.start()

        async def revoked() -> bool:  # as soon as KV takes writes again
            r = await system.http.post(f"/v1/admin/keys/{meta['id']}/revoke")
            return r.status_code == 200
        await eventually(revoked, timeout=20, interval=0.02)
        revoked_at = time.monotonic()
        fresh, _ = await make_key(system.http, "restart")
        created_at = time.monotonic()

        # The other gateway, hammered for 2.5 s: the revoked key (past the 1 s contract) and the new one.
        late_acceptances, fresh_first_ok, seen = 0, None, []
        while time.monotonic() < revoked_at + 2.5:
            sent = time.monotonic()
            # The gateway's own check (models) and the whole path (a completion, which policy admits too) for the
            # revoked key; the new key at the gateway (its completion waits for a pipeline still reconnecting).
            old, old_call, new = await asyncio.gather(
                far.get("/v1/models", headers=bearer),
                far.post("/v1/chat/completions", json=chat(), headers=bearer),
                far.get("/v1/models", headers={"authorization": f"Bearer {fresh}"}))
            if sent > revoked_at + 1.0:
                late_acceptances += (old.status_code == 200) + (old_call.status_code == 200)
            seen.append((round(time.monotonic() - created_at, 2), old.status_code, old_call.status_code,
                         new.status_code, other.deps.keyring.current))
            if new.status_code == 200 and fresh_first_ok is None:
                fresh_first_ok = time.monotonic() - created_at
            assert old.status_code in (200, 401, 503), old.text
        print(f"\nrevoked-key acceptances after revocation + 1 s: {late_acceptances}; "
              f"new key usable on the other gateway after {fresh_first_ok}s")
        assert late_acceptances == 0, seen
        assert fresh_first_ok is not None and fresh_first_ok <= 1.0, seen
        # Both the other gateway and its policy are back on a current index (the watch resumed).
        await eventually(lambda: other.deps.keyring.current, timeout=2, interval=0.02)
    finally:
        await far.aclose()
        await other.stop()
        await system.close()
        server.stop()


async def test_a_lost_connection_ends_the_index_being_trusted_at_once(tmp_path: Path):
    """What policy's ``fetch`` (and the gateway's ``refresh``) rely on: the index stops being current the moment
    the connection is lost, so a key is read from KV (failing closed while KV is gone), never from a stale copy;
    and it is current again right after the connection is back, with the watch reloaded."""
    server = NatsServer(tmp_path / "nats").start()
    bus = await Bus(server.client_settings("gateway", connect_timeout_s=0.5), Telemetry(TelemetrySettings())).connect()
    try:
        store = KeyStore(b"restart-secret", [KeyEntry(key="sk-restart-0123456789", tenant="t", team="a")])
        await store.start(bus)
        key_id = store.hash("sk-restart-0123456789")[:16]
        assert store.current and (await store.fetch(key_id)) is not None

        server.stop(kill=True)
        await eventually(lambda: not store.current, timeout=2, interval=0.01)
        with pytest.raises(ServiceUnavailable):  # no stale answer: KV is asked, and it cannot answer
            await store.fetch(key_id)
        with pytest.raises(ServiceUnavailable):
            await store.refresh("sk-restart-0123456789")

        server.start()
        await eventually(lambda: store.current, timeout=5, interval=0.01)
        assert (await store.fetch(key_id)).tenant == "t"
    finally:
        await bus.close()
        server.stop()
