"""``natsfast.withdraw`` against nats-py's outgoing buffer, no server needed: what a reconnecting client holds
can be taken out again, and only the publish asked for (``shared/bus/natsfast.py`` lists the reliance)."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from shared.bus.natsfast import withdraw


def reconnecting_client() -> Client:
    # A client between connections: publishes wait in ``_pending`` (as after a lost connection).
    nc = Client()
    nc._flush_queue = asyncio.Queue()
    nc._max_pending_size = 1 << 20
    nc._status = Client.RECONNECTING
    return nc


async def test_a_publish_held_while_reconnecting_can_be_withdrawn_and_only_that_one():
    nc = reconnecting_client()
    await nc.publish("sy.evt.requested", b"a", reply="_INBOX.gw.1", headers={"Nats-Msg-Id": "e1"})
    await nc.publish("sy.evt.requested", b"bb", reply="_INBOX.gw.11")
    held = nc._pending_data_size
    assert len(nc._pending) == 2 and held > 0
    assert withdraw(nc, "sy.evt.requested", "_INBOX.gw.1")
    assert len(nc._pending) == 1 and nc._pending[0].startswith(b"PUB sy.evt.requested _INBOX.gw.11 ")
    assert nc._pending_data_size == len(nc._pending[0]) < held
    assert not withdraw(nc, "sy.evt.requested", "_INBOX.gw.1")  # gone (or already sent): nothing to take
    assert withdraw(nc, "sy.evt.requested", "_INBOX.gw.11") and nc._pending_data_size == 0
