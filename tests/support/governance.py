"""Builders shared by the governance tests: a private nats-server, Switchyard with several policy replicas,
and small helpers to drive the admin API. Nothing here patches anything: every test runs the real stores on
a real nats-server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import httpx
import nats as nats_py
import msgspec

from services.policy.handlers import check
from services.policy.handlers import estimate as estimate_admission
from services.settings import Settings
from shared.canonical import ChatRequest
from shared.natsd import NatsServer
from tests.support.catalogs import GOVERNANCE_CATALOG
from tests.support.system import Replica, RunningSystem, make_settings, start_replica, start_system


def settings_for(nats: NatsServer | str, data_dir: Path, **overrides) -> Settings:
    """The end-to-end test settings (tests/support/system.py) with the governance catalog."""
    data_dir.mkdir(parents=True, exist_ok=True)
    catalog = data_dir / "catalog.yaml"
    catalog.write_text(GOVERNANCE_CATALOG)
    return make_settings(nats, data_dir, **{"catalog_path": str(catalog), **overrides})


class Cluster:
    """A private nats-server, Switchyard (all targets) and extra replicas, their key stores on ``clock``."""

    def __init__(self, nats: NatsServer, system: RunningSystem, replicas: list[Replica], settings: Settings,
                 clock: Callable[[], float] = time.time):
        self.nats, self.system, self.replicas, self.settings = nats, system, replicas, settings
        self.clock = clock

    @property
    def http(self) -> httpx.AsyncClient:
        return self.system.http

    async def close(self) -> None:
        for r in reversed(self.replicas):
            await r.stop()
        await self.system.close()
        self.nats.stop()


async def start_cluster(tmp: Path, policy_replicas: int = 2, clock: Callable[[], float] = time.time,
                        **overrides) -> Cluster:
    """Switchyard with ``policy_replicas`` policy processes sharing one durable consumer; every key store reads
    ``clock``."""
    nats = NatsServer(tmp / "nats").start()
    settings = settings_for(nats, tmp / "data", **overrides)
    system = await start_system(settings, clock=clock)
    replicas = [await start_replica(settings, "policy", clock) for _ in range(policy_replicas - 1)]
    return Cluster(nats, system, replicas, settings, clock)


async def delete_bucket(nats: NatsServer, name: str) -> None:
    """Delete a KV bucket with the operator's credentials (no service role may)."""
    nc = await nats_py.connect(**nats.connect_options())
    try:
        await nc.jetstream().delete_key_value(name)
    finally:
        await nc.close()


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


def estimate(cluster: Cluster, body: dict) -> int:
    """The reservation policy makes for ``body`` (nano-USD), computed the same way."""
    catalog = cluster.system.deps.catalog
    request = check(msgspec.convert(body, ChatRequest), cluster.settings.policy, catalog)
    return estimate_admission(request, [catalog.models[t.model] for t in catalog.targets(request.model)])[0]


async def budget(http: httpx.AsyncClient, team: str) -> dict:
    """A team's budget view (``GET /v1/budgets/{team}``)."""
    r = await http.get(f"/v1/budgets/{team}")
    assert r.status_code == 200, r.text
    return r.json()
