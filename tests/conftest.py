"""Shared fixtures: a real nats-server per session, and Switchyard running in-process against it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from services.bootstrap import build, parse_targets, run_targets
from services.runtime import Deps
from services.gateway.settings import GatewaySettings
from services.settings import ApiKeyConfig, Settings
from shared.natsd import NatsServer, free_port
from shared.settings import NatsSettings

HERE = Path(__file__).parent
ADMIN_KEY = "sk-test-admin"
MEMBER_KEY = "sk-test-member"
OTHER_TENANT_KEY = "sk-test-other-tenant"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory) -> NatsServer:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


def make_settings(nats_url: str, data_dir: Path, **overrides) -> Settings:
    """Settings for a test system: test keys, the test catalog, random ports."""
    values = dict(
        nats=NatsSettings(url=nats_url),
        gateway=GatewaySettings(port=free_port()),
        admin_key=ADMIN_KEY,
        api_keys={MEMBER_KEY: ApiKeyConfig(tenant="default", team="team-a"),
                  OTHER_TENANT_KEY: ApiKeyConfig(tenant="tenant-b", team="team-b")},
        data_dir=str(data_dir),
        catalog_path=str(HERE / "data" / "catalog.yaml"),
    )
    values.update(overrides)
    return Settings(**values)


class RunningSystem:
    """Switchyard started in this test process (all targets), with an HTTP client for its gateway."""

    def __init__(self, deps: Deps, task: asyncio.Task, stop: asyncio.Event) -> None:
        self.deps = deps
        self.task = task
        self.stop = stop
        self.base_url = f"http://127.0.0.1:{deps.settings.gateway.port}"
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=30,
                                      headers={"authorization": f"Bearer {ADMIN_KEY}"})

    async def wait_ready(self, timeout: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            try:
                r = await self.http.get("/readyz")
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError("switchyard did not become ready")

    async def close(self) -> None:
        await self.http.aclose()
        self.stop.set()
        await asyncio.wait_for(self.task, 20)


async def start_system(settings: Settings, targets: str = "all") -> RunningSystem:
    deps = await build(settings, parse_targets(targets))
    stop = asyncio.Event()
    task = asyncio.ensure_future(run_targets(deps, stop))
    system = RunningSystem(deps, task, stop)
    await system.wait_ready()
    return system


@pytest.fixture(scope="session")
async def system(nats_server, tmp_path_factory) -> AsyncIterator[RunningSystem]:
    """One Switchyard for the end-to-end tests of this session."""
    settings = make_settings(nats_server.url, tmp_path_factory.mktemp("data"))
    running = await start_system(settings)
    yield running
    await running.close()


def postgres_url() -> str | None:
    """PostgreSQL for the audit store's second path, when one is reachable on 127.0.0.1:5432."""
    import socket

    url = os.environ.get("SWITCHYARD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex(("127.0.0.1", 5432)) != 0:
            return None
    return url
