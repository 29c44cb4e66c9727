"""The key store on a real nats-server: hashes only, seeded configuration, revocation on every replica in < 1 s."""

from __future__ import annotations

import time

import pytest

from shared.auth import KeyEntry, KeyLimits, KeyStore
from shared.bus import Bus
from shared.state.buckets import KEYS
from shared.natsd import NatsServer
from shared.settings import NatsSettings, TelemetrySettings
from shared.telemetry import Telemetry
from tests.support.wait import eventually

SECRET = b"integration-secret"
CONFIGURED = [KeyEntry(key="sk-configured-admin-0123456789", role="admin", operator=True),
              KeyEntry(key="sk-configured-member-0123456789", tenant="acme", team="ml")]


@pytest.fixture(scope="module")
async def nats_url(tmp_path_factory):
    """Settings connecting as the gateway, the role that owns the keys (the fixture kept its old name)."""
    server = NatsServer(tmp_path_factory.mktemp("nats-keys")).start()
    yield server.client_settings("gateway")
    server.stop()


async def replica(nats: NatsSettings, seed=CONFIGURED, secret=SECRET, clock=time.time) -> tuple[Bus, KeyStore]:
    bus = await Bus(nats, Telemetry(TelemetrySettings())).connect()
    store = KeyStore(secret, seed, clock=clock)
    await store.start(bus)
    return bus, store


@pytest.fixture
async def two(nats_url, clock):
    a_bus, a = await replica(nats_url, clock=clock)
    b_bus, b = await replica(nats_url)
    yield a, b, a_bus
    await a_bus.close()
    await b_bus.close()


async def test_configured_keys_are_seeded_and_only_their_hmac_is_stored(two):
    a, b, bus = two
    p = b.authenticate("sk-configured-member-0123456789")
    assert (p.tenant, p.team, p.role, p.operator) == ("acme", "ml", "member", False)
    assert b.authenticate("sk-configured-admin-0123456789").operator
    kv = await bus.kv(KEYS)
    for key in await kv.keys():
        raw = (await kv.get(key)).value.decode()
        assert "sk-configured" not in raw  # never the key itself ...
        assert a.hash("sk-configured-member-0123456789") in raw or a.hash("sk-configured-admin-0123456789") in raw


@pytest.mark.parametrize("bad", [None, "", "sk-unknown", "x" * 300, "sk-configured-member-0123456789\n"])
async def test_unknown_and_malformed_keys_are_refused(two, bad):
    a, _, _ = two
    assert a.authenticate(bad) is None


async def test_created_keys_reach_other_replicas_and_revocation_within_a_second(two):
    a, b, _ = two
    record = await a.create(KeyEntry(key="sk-sy-fresh-key-abcdefghijklmnop", tenant="acme", team="ml",
                                     limits=KeyLimits(rpm=5)))
    assert record.prefix == "sk-sy-f" and record.last4 == "mnop"
    await eventually(lambda: b.authenticate("sk-sy-fresh-key-abcdefghijklmnop") is not None, timeout=1.0,
                     interval=0.005, message="the new key did not reach the other replica within 1 s")
    await a.revoke(record.id)
    await eventually(lambda: b.authenticate("sk-sy-fresh-key-abcdefghijklmnop") is None, timeout=1.0,
                     interval=0.005, message="revocation did not reach the other replica within 1 s")
    assert a.authenticate("sk-sy-fresh-key-abcdefghijklmnop") is None  # the revoking replica at once
    assert (await b.fetch(record.id)).revoked_at is not None
    assert b.by_id(record.id) is None and b.record(record.id).public()["status"] == "revoked"


async def test_rotation_with_and_without_grace(two, clock):
    a, b, _ = two
    old = await a.create(KeyEntry(key="sk-sy-rotate-me-abcdefghijklmnop", tenant="acme", team="ml"))
    clear, new = await a.rotate(old.id, grace_s=0)
    assert new.rotated_from == old.id and (new.tenant, new.team, new.role) == ("acme", "ml", "member")
    assert a.authenticate("sk-sy-rotate-me-abcdefghijklmnop") is None and a.authenticate(clear) is not None
    clear2, newer = await a.rotate(new.id, grace_s=30)
    assert a.authenticate(clear) is not None and a.authenticate(clear2) is not None  # both during the grace
    assert 25 < (await a.fetch(new.id)).expires_at - clock() <= 30
    with pytest.raises(ValueError):
        await a.rotate(old.id)  # a revoked key cannot be rotated


async def test_expired_keys_are_refused(two, clock):
    a, _, _ = two  # ``a`` reads ``clock``
    rec = await a.create(KeyEntry(key="sk-sy-short-lived-abcdefghijklm", tenant="acme", team="ml",
                                  expires_at=clock() + 0.3))
    assert a.authenticate("sk-sy-short-lived-abcdefghijklm") is not None
    clock.advance(0.4)
    assert a.authenticate("sk-sy-short-lived-abcdefghijklm") is None and a.by_id(rec.id) is None
    assert a.record(rec.id).public(clock())["status"] == "expired"


async def test_listing_shows_prefix_and_last4_never_the_hash(two):
    a, _, _ = two
    listed = [r.public() for r in a.list("acme", "ml")]
    assert listed and all("hash" not in item for item in listed)
    assert all(item["display"] == f"{item['prefix']}…{item['last4']}" for item in listed)


async def test_reseeding_follows_configuration_but_keeps_a_revocation(nats_url):
    entry = KeyEntry(key="sk-reconfigured-key-0123456789", tenant="acme", team="ml")
    bus1, first = await replica(nats_url, [entry])
    rid = first.authenticate(entry.key).key_id
    await first.revoke(rid)
    moved = KeyEntry(key=entry.key, tenant="acme", team="research")
    bus2, second = await replica(nats_url, [moved])  # a restart with the key moved to another team
    record = await second.fetch(rid)
    assert record.team == "research" and record.revoked_at is not None
    assert second.authenticate(entry.key) is None
    await bus1.close()
    await bus2.close()


async def test_a_configured_name_outside_the_safe_alphabet_is_refused():
    with pytest.raises(ValueError):
        KeyStore(SECRET, [KeyEntry(key="sk-x", team="Team A")])
