"""Fixtures for the adapter tests: one fake-provider server per session, a fresh httpx client per test."""

from __future__ import annotations

from typing import AsyncIterator, Iterator

import httpx
import pytest

from tests.fakes.providers import FakeProviders


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeProviders]:
    with FakeProviders() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeProviders) -> Iterator[FakeProviders]:
    """The shared fake with no faults, replies or recorded requests left over from other tests."""
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c
