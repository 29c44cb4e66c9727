"""Switchyard in this process in front of one fake OpenAI upstream (model ``up-1``), for tests that count or
read the calls that reach the provider."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import yaml

from shared.natsd import NatsServer
from tests.fakes.providers import FakeProviders
from tests.support.system import RunningSystem, make_settings, start_system


def catalog(fakes: FakeProviders) -> dict:
    """The built-in catalog plus provider ``up`` (the fake's OpenAI routes) serving model ``up-1``."""
    return {"providers": [{"name": "up", "type": "openai", "base_url": fakes.base_url("openai"),
                           "api_key": fakes.api_key, "timeout_s": 10}],
            "models": [{"name": "up-1", "input_per_mtok": 1.0, "output_per_mtok": 2.0, "capabilities": ["streaming"],
                        "deployments": [{"provider": "up", "upstream_model": "gpt-up"}]}]}


@asynccontextmanager
async def system_on_fake_upstream(tmp: Path, **overrides) -> AsyncIterator[tuple[RunningSystem, FakeProviders]]:
    """A running system (settings ``overrides`` applied) and its fake upstream; everything stopped on the way out."""
    fakes = FakeProviders().start()
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog(fakes)))
    nats = NatsServer(tmp / "nats").start()
    try:
        system = await start_system(make_settings(nats, tmp / "data", catalog_path=str(path), **overrides))
        try:
            yield system, fakes
        finally:
            await system.close()
    finally:
        nats.stop()
        fakes.stop()
