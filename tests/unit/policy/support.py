"""Builders shared by the governance tests: a private nats-server, Switchyard with several policy replicas,
and small helpers to drive the admin API. Nothing here patches anything: every test runs the real stores on
a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from services.bootstrap import build, parse_targets, run_targets
from services.runtime import Deps
from services.settings import Settings
from shared.natsd import NatsServer
from tests.conftest import ADMIN_KEY, MEMBER_KEY, OTHER_TENANT_KEY, RunningSystem, make_settings, start_system

# The test catalog, plus a provider that is not cleared for confidential data and models on it.
CATALOG = """
providers:
  - name: mock-flaky
    type: mock
    options: {failure_rate: 1.0, failure_status: 503}
  - name: mock-slow
    type: mock
    options: {latency_ms: 300}
  - name: mock-cloud
    type: mock
    max_data_class: internal
models:
  - name: flaky-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{provider: mock-flaky, upstream_model: flaky-1}]
  - name: slow-1
    input_per_mtok: 0.5
    output_per_mtok: 1.0
    deployments: [{provider: mock-slow, upstream_model: slow-1}]
  - name: cloud-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{provider: mock-cloud, upstream_model: cloud-1}]
  - name: hybrid-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{provider: mock-cloud, upstream_model: hybrid-1}, {provider: mock, upstream_model: hybrid-1}]
aliases:
  resilient: [flaky-1, mock-1]
"""


def settings_for(nats_url: str, data_dir: Path, **overrides) -> Settings:
    """The end-to-end test settings (tests/conftest.py) with this module's governance catalog."""
    data_dir.mkdir(parents=True, exist_ok=True)
    catalog = data_dir / "catalog.yaml"
    catalog.write_text(CATALOG)
    return make_settings(nats_url, data_dir, **{"catalog_path": str(catalog), **overrides})


class Replica:
    """Extra targets (a second policy, a second gateway) running in this process on the same bus."""

    def __init__(self, deps: Deps, task: asyncio.Task, stop: asyncio.Event) -> None:
        self.deps, self.task, self.stop_event = deps, task, stop

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 20)


async def start_replica(settings: Settings, targets: str) -> Replica:
    deps = await build(settings, parse_targets(targets))
    stop = asyncio.Event()
    task = asyncio.ensure_future(run_targets(deps, stop))
    for _ in range(400):
        if deps.is_ready():
            break
        await asyncio.sleep(0.025)
    else:
        raise TimeoutError(f"replica {targets} did not become ready")
    return Replica(deps, task, stop)


class Cluster:
    """A private nats-server, Switchyard (all targets) and extra replicas."""

    def __init__(self, nats: NatsServer, system: RunningSystem, replicas: list[Replica], settings: Settings):
        self.nats, self.system, self.replicas, self.settings = nats, system, replicas, settings

    @property
    def http(self) -> httpx.AsyncClient:
        return self.system.http

    async def close(self) -> None:
        for r in reversed(self.replicas):
            await r.stop()
        await self.system.close()
        self.nats.stop()


async def start_cluster(tmp: Path, policy_replicas: int = 2, **overrides) -> Cluster:
    """Switchyard with ``policy_replicas`` policy processes sharing one durable consumer."""
    nats = NatsServer(tmp / "nats").start()
    settings = settings_for(nats.url, tmp / "data", **overrides)
    system = await start_system(settings)
    replicas = [await start_replica(settings, "policy") for _ in range(policy_replicas - 1)]
    return Cluster(nats, system, replicas, settings)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def make_team(http: httpx.AsyncClient, name: str, **settings) -> dict:
    r = await http.post("/v1/admin/teams", json={"name": name, "settings": settings})
    assert r.status_code == 201, r.text
    return r.json()


async def make_key(http: httpx.AsyncClient, team: str, role: str = "member", **extra) -> tuple[str, dict]:
    r = await http.post("/v1/admin/keys", json={"team": team, "role": role, **extra})
    assert r.status_code == 201, r.text
    body = r.json()
    return body["key"], body


def chat(content: str = "hello", model: str = "mock-1", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def wait_for(predicate, timeout: float = 10.0, every: float = 0.05):
    """Poll an async predicate until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(every)
