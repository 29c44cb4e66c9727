"""The security tests' own Switchyard: fake upstream providers (whose errors and received requests the tests
inspect), a mock provider that does not allow fault injection, and short HTTP read deadlines; a private
nats-server. Tests that need nothing of that use the session ``system`` (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest
import yaml

from services.http_limits import HttpServerSettings
from shared.natsd import NatsServer
from tests.fakes.providers import FakeProviders
from tests.support.system import RunningSystem, make_settings, start_system

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
MAX_HEAD_BYTES = 16 * 1024


def security_catalog(fakes: FakeProviders) -> dict:
    """``m-openai`` on the fake OpenAI (whose answers and errors the tests choose), ``closed-1`` on a mock that
    keeps fault injection off (the default)."""
    return {
        "providers": [
            {"name": "fake-openai", "type": "openai", "base_url": fakes.base_url("openai"), "api_key": fakes.api_key,
             "timeout_s": 10, "breaker": {"enabled": False}},
            {"name": "mock-closed", "type": "mock"},
        ],
        "models": [
            {"name": "m-openai", "input_per_mtok": 1.0, "output_per_mtok": 2.0,
             "capabilities": ["streaming", "tools", "json", "vision"],
             "deployments": [{"provider": "fake-openai", "upstream_model": "gpt-4o-mini", "id": "fake-openai/main"}]},
            {"name": "closed-1", "input_per_mtok": 1.0, "output_per_mtok": 2.0,
             "deployments": [{"provider": "mock-closed", "upstream_model": "closed-1"}]},
        ],
    }


@pytest.fixture(scope="package")
def fakes() -> FakeProviders:
    with FakeProviders() as running:
        yield running


@pytest.fixture(scope="package")
async def secure(tmp_path_factory, fakes) -> AsyncIterator[RunningSystem]:
    tmp = Path(tmp_path_factory.mktemp("security"))
    catalog = tmp / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(security_catalog(fakes)))
    nats = NatsServer(tmp / "nats").start()
    limits = HttpServerSettings(header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S,
                                max_head_bytes=MAX_HEAD_BYTES)
    system = await start_system(make_settings(nats, tmp / "data", catalog_path=str(catalog), http=limits))
    yield system
    await system.close()
    nats.stop()
