"""The embedded nats-server's fsync setting (``NatsSettings.store_sync`` → JetStream ``sync_interval``)."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig
from pydantic import ValidationError

from shared.natsd import NatsServer
from shared.settings import NatsSettings


async def test_a_server_with_fsync_always_takes_and_acknowledges_writes(tmp_path: Path):
    # nats-server refuses to start on a configuration it does not understand: starting is the check of the line.
    server = NatsServer(tmp_path / "nats", sync="always", auth=False)
    assert "sync_interval: always" in server.config()
    assert "sync_interval" not in NatsServer(tmp_path / "other", auth=False).config()
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="SYNCED", subjects=["synced.>"], storage=StorageType.FILE))
        ack = await js.publish("synced.x", b"on disk before this ack")
        assert ack.seq == 1
        await nc.close()
    finally:
        server.stop()


def test_the_setting_takes_always_or_a_duration_only():
    assert NatsSettings(store_sync="always").store_sync == "always"
    assert NatsSettings(store_sync="10s").store_sync == "10s"
    with pytest.raises(ValidationError):
        NatsSettings(store_sync="sometimes")
