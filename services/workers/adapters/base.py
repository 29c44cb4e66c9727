"""The provider adapter interface, and the HTTP base most adapters build on.

An adapter knows one wire format: it builds the upstream request from the
canonical one, parses the answer into canonical form with token usage, and
maps the provider's errors onto the error hierarchy. Transport (pooling,
timeouts, connection errors) is shared in ``HttpAdapter``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import httpx
import msgspec

from shared.canonical import ChatRequest, ChatResponse
from shared.catalog import ProviderSpec
from shared.errors import (
    ContextLengthExceeded,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shared.events import Target

_SECRETS = re.compile(r"(sk-[A-Za-z0-9_-]{6,}|Bearer\s+[A-Za-z0-9._~+/=-]+|AKIA[0-9A-Z]{12,}|key=[A-Za-z0-9_-]{10,})")
MAX_RETRY_AFTER_S = 120.0


class ProviderAdapter(Protocol):
    """One provider wire format behind one interface."""

    async def complete(self, request: ChatRequest, target: Target, timeout_s: float) -> ChatResponse:
        """Run a non-streaming chat completion; raise an ``UpstreamError`` when the provider fails."""
        ...

    async def aclose(self) -> None:
        ...


@dataclass
class UpstreamRequest:
    """An HTTP request to a provider."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    params: dict[str, str] | None = None


def scrub(text: str, limit: int = 500) -> str:
    """A provider message fit for operators: no credentials, bounded length."""
    return _SECRETS.sub("[redacted]", text)[:limit]


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` (seconds form) or ``retry-after-ms``, capped."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return min(MAX_RETRY_AFTER_S, max(0.0, float(value) * scale))
            except ValueError:
                continue
    return None


def classify(provider: str, status: int, message: str, headers: Mapping[str, str]) -> UpstreamError:
    """Map a provider's HTTP status onto the hierarchy; the provider's message is kept, scrubbed."""
    text = f"{provider} returned {status}: {scrub(message)}"
    lowered = message.lower()
    if status in (400, 404, 413, 422):
        if "context" in lowered and ("length" in lowered or "window" in lowered) or "too many tokens" in lowered:
            return ContextLengthExceeded(text)  # type: ignore[return-value]
        return UpstreamRejected(text)
    if status in (401, 403):
        return UpstreamAuthFailed(text)
    if status == 408:
        return UpstreamTimeout(text)
    if status == 429:
        return UpstreamRateLimited(text, retry_after=retry_after(headers))
    if status >= 500:
        return UpstreamUnavailable(text, retry_after=retry_after(headers))
    return UpstreamBadResponse(text)


class HttpAdapter:
    """Shared transport for adapters that speak HTTP: subclasses build, parse and read error bodies."""

    def __init__(self, spec: ProviderSpec, client: httpx.AsyncClient) -> None:
        self.spec = spec
        self.client = client
        self.api_key = spec.credential()

    # -- the wire format: subclasses implement these --
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        raise NotImplementedError

    def parse_response(self, data: bytes, target: Target) -> ChatResponse:
        raise NotImplementedError

    def error_message(self, data: bytes) -> str:
        """The human message inside a provider error body."""
        try:
            body = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return data.decode(errors="replace")
        return _find_message(body) or data.decode(errors="replace")

    def map_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return classify(self.spec.name, status, self.error_message(data), headers)

    # -- transport --
    async def send(self, up: UpstreamRequest, timeout_s: float) -> httpx.Response:
        timeout = httpx.Timeout(timeout_s, connect=min(self.spec.connect_timeout_s, timeout_s))
        try:
            resp = await self.client.request(up.method, up.url, headers=up.headers, content=up.body,
                                             params=up.params, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"{self.spec.name} did not answer within {timeout_s:.1f}s "
                                  f"({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"{self.spec.name} unreachable: {type(exc).__name__}: {scrub(str(exc))}") \
                from None
        if resp.status_code >= 400:
            raise self.map_error(resp.status_code, resp.content, resp.headers)
        return resp

    async def complete(self, request: ChatRequest, target: Target, timeout_s: float) -> ChatResponse:
        resp = await self.send(self.build_request(request, target), timeout_s)
        try:
            return self.parse_response(resp.content, target)
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamBadResponse(f"{self.spec.name} sent an unreadable response: {scrub(str(exc))}") from None

    async def aclose(self) -> None:
        """The client is shared per provider and closed by the worker."""


def _find_message(body: Any) -> str | None:
    """Providers nest their message differently: {"error": {"message"}}, {"message"}, {"detail"} ..."""
    if isinstance(body, dict):
        for key in ("message", "detail", "error_description"):
            if isinstance(body.get(key), str):
                return body[key]
        err = body.get("error")
        if isinstance(err, str):
            return err
        if err is not None:
            return _find_message(err)
    if isinstance(body, list) and body:
        return _find_message(body[0])
    return None
