"""The adapter registry: catalog provider ``type`` → adapter class. Adding a provider is one line here."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from services.workers.adapters.anthropic import AnthropicAdapter
from services.workers.adapters.azure import AzureOpenAIAdapter
from services.workers.adapters.base import ProviderAdapter
from services.workers.adapters.bedrock import BedrockAdapter
from services.workers.adapters.gemini import GeminiAdapter
from services.workers.adapters.mistral import MistralAdapter
from services.workers.adapters.mock import MockAdapter
from services.workers.adapters.openai import OpenAIAdapter

ADAPTERS: Mapping[str, type] = MappingProxyType({
    "mock": MockAdapter,
    "openai": OpenAIAdapter,
    "openai-compatible": OpenAIAdapter,
    "azure": AzureOpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
    "mistral": MistralAdapter,
    "bedrock": BedrockAdapter,
})


def adapter_class(provider_type: str) -> type:
    try:
        return ADAPTERS[provider_type]
    except KeyError:
        raise ValueError(f"no adapter for provider type {provider_type!r}; known: {sorted(ADAPTERS)}") from None


__all__ = ["ADAPTERS", "ProviderAdapter", "adapter_class"]
