"""Shared fixtures: a real nats-server per session, and Switchyard running in-process against it."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from shared.natsd import NatsServer
from tests.support.clock import SteppedClock
from tests.support.system import RunningSystem, make_settings, start_system


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory) -> NatsServer:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> SteppedClock:
    """A clock the test moves forward: handed to what checks expiry instead of ``time.time``."""
    return SteppedClock()


@pytest.fixture(scope="session")
async def system(nats_server, tmp_path_factory) -> AsyncIterator[RunningSystem]:
    """One Switchyard for the end-to-end tests of this session."""
    settings = make_settings(nats_server, tmp_path_factory.mktemp("data"))
    running = await start_system(settings)
    yield running
    await running.close()
