"""Switchyard started inside the test process against a real nats-server: test keys, settings, and a handle
with an HTTP client for its gateway."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

import httpx

from services.bootstrap import build, parse_targets, run_targets
from services.gateway.settings import GatewaySettings
from services.runtime import Deps
from services.settings import ApiKeyConfig, Settings
from shared.natsd import NatsServer, free_port
from shared.settings import NatsSettings
from tests.support.catalogs import SYSTEM_CATALOG
from tests.support.wait import eventually

ADMIN_KEY = "sk-test-admin"
MEMBER_KEY = "sk-test-member"
OTHER_TENANT_KEY = "sk-test-other-tenant"


def make_settings(nats: NatsServer | str, data_dir: Path, **overrides) -> Settings:
    """Settings for a test system: test keys, the test catalog, random ports.

    Given the test's ``NatsServer``, every process built from them connects as the bus role of its targets with
    the server's generated passwords (auth on, as in production); given a bare URL, with no credentials.
    """
    values = dict(
        nats=nats.client_settings(user=None) if isinstance(nats, NatsServer) else NatsSettings(url=nats),
        gateway=GatewaySettings(port=free_port()),
        admin_key=ADMIN_KEY,
        api_keys={MEMBER_KEY: ApiKeyConfig(tenant="default", team="team-a"),
                  OTHER_TENANT_KEY: ApiKeyConfig(tenant="tenant-b", team="team-b")},
        data_dir=str(data_dir),
        catalog_path=str(SYSTEM_CATALOG),
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
        async def ready() -> bool:
            if self.task.done():  # it stopped (or failed to start): say why now, not at the timeout
                self.task.result()
                raise RuntimeError("switchyard stopped before it was ready")
            try:
                return (await self.http.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=timeout, interval=0.05, message="switchyard did not become ready")

    async def close(self) -> None:
        await self.http.aclose()
        self.stop.set()
        await asyncio.wait_for(self.task, 20)


async def start_system(settings: Settings, targets: str = "all",
                       clock: Callable[[], float] = time.time) -> RunningSystem:
    """``targets`` started in this process and ready; ``clock`` is the one its key store reads."""
    deps = await build(settings, parse_targets(targets), clock)
    stop = asyncio.Event()
    task = asyncio.ensure_future(run_targets(deps, stop))
    system = RunningSystem(deps, task, stop)
    await system.wait_ready()
    return system


class Replica:
    """Extra targets (a second policy, a second gateway, router replicas) running in this process on the same
    bus."""

    def __init__(self, deps: Deps, task: asyncio.Task, stop: asyncio.Event) -> None:
        self.deps, self.task, self.stop_event = deps, task, stop

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 20)


async def start_replica(settings: Settings, targets: str, clock: Callable[[], float] = time.time) -> Replica:
    """``targets`` started beside a running system (no HTTP client: they need not run a gateway), once ready."""
    deps = await build(settings, parse_targets(targets), clock)
    stop = asyncio.Event()
    task = asyncio.ensure_future(run_targets(deps, stop))
    await eventually(deps.is_ready, timeout=10, interval=0.025, message=f"replica {targets} did not become ready")
    return Replica(deps, task, stop)
