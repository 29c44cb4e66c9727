"""Finding 1: the bus is an authenticated trust boundary.

The attacks, each against the running session stack (its nats-server has per-role users, tests/conftest.py):

- any local process connects to NATS (no credentials, a guessed password): refused by the server;
- (a) with the credentials of a role that does not end requests (the gateway's, audit's), publish a forged
  ``CompletionSucceeded`` with ``Nats-Msg-Id: <rid>.done`` to ``sy.evt.done.<gateway>`` while a real request
  is in flight: the server refuses the publish and the client gets its real answer;
- (b) with the worker's credentials, publish a ``CompletionRequested`` carrying another tenant's key: refused,
  and nothing is recorded or billed for it;
- (c) with the worker's (or policy's) credentials, write an operator ``KeyRecord`` into ``sy_keys`` or read
  the keys: refused, and the key does not open the API;
- a role reaching into another's consumer or inbox (pulling policy's requests, reading the gateway's replies):
  refused.

And TLS is a configuration away: a server presenting a certificate, a client given the CA file.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import uuid
from pathlib import Path

import msgspec
import nats
import pytest

from shared.auth import KeyEntry, KeyStore
from shared.bus import Bus
from shared.canonical import ChatResponse, Choice, Message
from shared.events import (
    REQUESTED,
    CompletionRequested,
    CompletionSucceeded,
    Target,
    decoder,
    encoder,
    terminal_id,
)
from shared.natsd import NatsServer
from shared.settings import TelemetrySettings
from shared.telemetry import Telemetry
from tests.support.events import requested
from tests.support.system import OTHER_TENANT_KEY
from tests.support.wait import eventually

FORGED = "FORGED ANSWER"


class Intruder:
    """A NATS client with some role's credentials, collecting what the server refuses it."""

    def __init__(self, nc: nats.NATS, errors: list[str]) -> None:
        self.nc, self.errors = nc, errors

    @classmethod
    async def connect(cls, server: NatsServer, user: str) -> "Intruder":
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(**server.connect_options(user), error_cb=on_error, allow_reconnect=False)
        return cls(nc, errors)

    async def refused(self, what: str, timeout: float = 5.0) -> str:
        """The server's permissions violation naming ``what`` (a subject), once it has arrived."""
        await self.nc.flush()
        return await eventually(lambda: next((e for e in self.errors if "permissions violation" in e.lower()
                                              and what.lower() in e.lower()), None), timeout=timeout,
                                message=lambda: f"no violation for {what}: {self.errors}")

    async def close(self) -> None:
        await self.nc.close()


async def quiet(_exc: Exception) -> None:
    return None


@pytest.mark.parametrize("credentials", [{}, {"user": "gateway", "password": "guessed"},
                                         {"user": "nobody", "password": "x"}], ids=["none", "guessed", "unknown"])
async def test_a_client_without_valid_credentials_is_refused(nats_server, credentials):
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2,
                           error_cb=quiet, **credentials)


async def test_a_forged_answer_is_refused_and_the_client_gets_its_real_one(system, nats_server):
    operator = await nats.connect(**nats_server.connect_options())
    seen: asyncio.Queue[CompletionRequested] = asyncio.Queue()

    async def on_requested(msg) -> None:
        seen.put_nowait(decoder.decode(msg.data))

    sub = await operator.subscribe(REQUESTED, cb=on_requested)
    intruders = [await Intruder.connect(nats_server, role) for role in ("gateway", "audit")]
    try:
        marker = uuid.uuid4().hex
        call = asyncio.ensure_future(system.http.post("/v1/chat/completions", json={
            "model": "mock-1", "messages": [{"role": "user", "content": f"the real question {marker}"}],
            "switchyard": {"mock": {"latency_ms": 1500}}}))
        event = await eventually(lambda: _next_of(seen, marker), timeout=10)
        forged = CompletionSucceeded(
            event_id=terminal_id(event.request_id), request_id=event.request_id, ctx=event.ctx, attempt=1,
            target=Target(deployment="mock/mock-1", provider="mock", model="mock-1", upstream_model="mock-1"),
            response=ChatResponse(model="mock-1", choices=[Choice(message=Message(role="assistant", content=FORGED),
                                                                  finish_reason="stop")]),
            cost_usd=0.0, latency_ms=1.0)
        for intruder in intruders:
            await intruder.nc.publish(forged.subject(), encoder.encode(forged),
                                      headers={"Nats-Msg-Id": forged.event_id})
            await intruder.refused(forged.subject())
        r = await call
        assert r.status_code == 200, r.text
        answer = r.json()["choices"][0]["message"]["content"]
        assert answer != FORGED and FORGED not in answer
        assert r.headers["x-request-id"] == event.request_id
    finally:
        await sub.unsubscribe()
        for intruder in intruders:
            await intruder.close()
        await operator.close()


def _next_of(queue: asyncio.Queue, marker: str):
    while not queue.empty():
        event = queue.get_nowait()
        if any(marker in (m.content if isinstance(m.content, str) else "") for m in event.request.messages):
            return event
    return None


async def test_a_forged_request_billed_to_another_tenant_is_refused_and_never_recorded(system, nats_server):
    victim = system.deps.keyring.authenticate(OTHER_TENANT_KEY)
    forged = requested(rid=f"req_forged{uuid.uuid4().hex[:12]}", tenant=victim.tenant, team=victim.team,
                       key_id=victim.key_id, origin="jobs", job=True)
    intruder = await Intruder.connect(nats_server, "worker")
    try:
        await intruder.nc.publish(REQUESTED, encoder.encode(forged), headers={"Nats-Msg-Id": forged.event_id})
        await intruder.refused(REQUESTED)
        with pytest.raises(nats.errors.TimeoutError):  # a JetStream publish: no acknowledgement, nothing stored
            await intruder.nc.jetstream().publish(REQUESTED, encoder.encode(forged), timeout=1)
    finally:
        await intruder.close()
    # A real request after it: once audit has recorded that one, it would have recorded the forged one too.
    r = await system.http.post("/v1/chat/completions", headers={"authorization": f"Bearer {OTHER_TENANT_KEY}"},
                               json={"model": "mock-1", "messages": [{"role": "user", "content": "after"}]})
    assert r.status_code == 200, r.text
    other = {"authorization": f"Bearer {OTHER_TENANT_KEY}"}
    await eventually(lambda: _traced(system, r.headers["x-request-id"], other), timeout=10)
    assert (await system.http.get(f"/v1/requests/{forged.request_id}", headers=other)).status_code == 404
    ledger = (await system.http.get("/v1/ledger", headers=other)).json()
    assert all(row["request_id"] != forged.request_id for row in ledger["data"])


async def _traced(system, rid: str, headers: dict) -> bool:
    return (await system.http.get(f"/v1/requests/{rid}", headers=headers)).status_code == 200


@pytest.mark.parametrize("role", ["worker", "policy", "audit", "router"])
async def test_only_the_gateway_writes_api_keys(system, nats_server, role):
    key = f"sk-forged-{uuid.uuid4().hex}"
    # The attacker knows the public default HMAC secret; what stops it is the bus, not the secret.
    record = KeyStore(b"switchyard-dev-secret").record_for(
        KeyEntry(key=key, role="admin", operator=True, name="forged"), source="api")
    intruder = await Intruder.connect(nats_server, role)
    try:
        await intruder.nc.publish(f"$KV.sy_keys.{record.id}", msgspec.json.encode(record))
        await intruder.refused("$KV.sy_keys")
    finally:
        await intruder.close()
    r = await system.http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 401


async def test_a_worker_cannot_read_keys_nor_reach_into_other_roles_consumers_and_inboxes(nats_server):
    intruder = await Intruder.connect(nats_server, "worker")
    try:
        await intruder.nc.publish("$JS.API.DIRECT.GET.KV_sy_keys.$KV.sy_keys.anything", b"")
        await intruder.refused("$JS.API.DIRECT.GET.KV_sy_keys")
        await intruder.nc.publish("$JS.API.CONSUMER.MSG.NEXT.SWITCHYARD.policy", b'{"batch": 1}')
        await intruder.refused("CONSUMER.MSG.NEXT.SWITCHYARD.policy")
        await intruder.nc.publish("$JS.API.CONSUMER.CREATE.SWITCHYARD.policy.sy.evt.attempt.mock", b"{}")
        await intruder.refused("CONSUMER.CREATE.SWITCHYARD.policy")
        await intruder.nc.subscribe("_INBOX.gateway.>")
        await intruder.refused("_INBOX.gateway.>")
        await intruder.nc.subscribe("sy.evt.>")
        await intruder.refused("sy.evt.>")
    finally:
        await intruder.close()


async def test_tls_is_a_configuration_away(tmp_path: Path):
    cert, key, ca = _self_signed(tmp_path)
    server = NatsServer(tmp_path / "nats", tls=(str(cert), str(key))).start()
    try:
        bus = await Bus(server.client_settings("gateway", tls_ca_file=str(ca)), Telemetry(TelemetrySettings())).connect()
        try:
            assert bus.connected and bus.nc.client_id is not None
            await bus.ensure_stream()
        finally:
            await bus.close()
        # Without the CA the client does not trust the server (and plain text is not offered).
        with pytest.raises(Exception):  # noqa: B017 - ssl verification, or the server closing a plain connection
            await nats.connect(**server.connect_options("gateway"), allow_reconnect=False, max_reconnect_attempts=0,
                               connect_timeout=2, error_cb=quiet)
    finally:
        server.stop()


def _self_signed(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed (cert, key, CA) in ``tmp``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "switchyard test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    paths = tmp / "server.pem", tmp / "server.key", tmp / "ca.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths
