"""Azure OpenAI: the Chat Completions dialect addressed by deployment, not model.

``POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…``
with an ``api-key`` header. The deployment name is the catalog's
``upstream_model``; the API version comes from ``options.api_version``; the
endpoint is ``base_url`` or, when that is unset, the environment variable
named by ``options.endpoint_env`` (default ``AZURE_OPENAI_ENDPOINT``), so one
catalog serves every region. A missing deployment is the operator's
configuration, not the client's request, so it falls back like bad
credentials do.
"""

from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import quote

from services.workers.adapters.base import classify
from services.workers.adapters.openai import OpenAIAdapter
from shared.canonical import ChatRequest, EmbeddingRequest
from shared.errors import UpstreamAuthFailed, UpstreamError
from shared.events import Target

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIAdapter(OpenAIAdapter):
    """Azure OpenAI deployments behind the OpenAI wire format."""

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", **self.spec.headers}
        if self.api_key:
            h["api-key"] = self.api_key
        return h

    def base(self) -> str:
        endpoint = self.spec.base_url or os.environ.get(self.spec.options.get("endpoint_env",
                                                                            "AZURE_OPENAI_ENDPOINT"), "")
        if not endpoint:
            raise UpstreamAuthFailed(f"{self.spec.name}: no endpoint configured (set base_url or "
                                     f"{self.spec.options.get('endpoint_env', 'AZURE_OPENAI_ENDPOINT')})")
        return endpoint.rstrip("/")

    def query(self) -> dict[str, str]:
        return {"api-version": str(self.spec.options.get("api_version", DEFAULT_API_VERSION))}

    def _deployment(self, target: Target) -> str:
        return f"{self.base()}/openai/deployments/{quote(target.upstream_model, safe='')}"

    def chat_url(self, target: Target) -> str:
        return f"{self._deployment(target)}/chat/completions"

    def embed_url(self, target: Target) -> str:
        return f"{self._deployment(target)}/embeddings"

    def chat_body(self, request: ChatRequest, target: Target, stream: bool) -> dict[str, Any]:
        body = super().chat_body(request, target, stream)
        body.pop("model", None)  # the deployment in the URL decides the model
        return body

    def embed_body(self, request: EmbeddingRequest, target: Target) -> dict[str, Any]:
        body = super().embed_body(request, target)
        body.pop("model", None)
        return body

    def map_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> UpstreamError:
        if status == 404 and b"DeploymentNotFound" in data:
            return UpstreamAuthFailed(f"{self.spec.name} returned 404: {self.error_message(data)}")
        return classify(self.spec.name, status, self.error_message(data), headers)
