"""The adapter registry: catalog provider ``type`` → adapter class. Adding a provider is one line here."""

from __future__ import annotations

from services.workers.adapters.base import ProviderAdapter
from services.workers.adapters.mock import MockAdapter
from services.workers.adapters.openai import OpenAIAdapter

ADAPTERS: dict[str, type] = {
    "mock": MockAdapter,
    "openai": OpenAIAdapter,
}


def adapter_class(provider_type: str) -> type:
    try:
        return ADAPTERS[provider_type]
    except KeyError:
        raise ValueError(f"no adapter for provider type {provider_type!r}; known: {sorted(ADAPTERS)}") from None


__all__ = ["ADAPTERS", "ProviderAdapter", "adapter_class"]
