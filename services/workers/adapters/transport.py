"""HTTP transports for provider adapters: aiohttp for the workers, httpx where a caller brings its own client.

Adapters talk to one small interface (a buffered ``request`` and a streaming
``stream``), so the wire formats do not care which client carries them.
Workers use aiohttp: measured against a slow upstream, httpx's connection
pool collapsed as concurrent calls grew while aiohttp kept scaling
(docs/performance/README.md). Transport failures surface as
``TransportTimeout`` or ``TransportError`` whatever the client, and the
adapter maps them onto the error hierarchy.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Mapping, Protocol

import aiohttp
import httpx
from yarl import URL


class TransportTimeout(Exception):
    """The provider did not connect or answer in time."""


class TransportError(Exception):
    """The connection failed: refused, reset, or closed mid-body."""


class Response(Protocol):
    """What adapters read from an HTTP answer."""

    status_code: int
    headers: Mapping[str, str]

    async def aread(self) -> bytes: ...

    def aiter_lines(self) -> AsyncIterator[str]: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...


class Transport(Protocol):
    """A pooled HTTP client."""

    async def request(self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None,
                      params: Mapping[str, str] | None, connect_timeout_s: float) -> tuple[int, Mapping[str, str],
                                                                                             bytes]: ...

    def stream(self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None,
               params: Mapping[str, str] | None, connect_timeout_s: float
               ) -> contextlib.AbstractAsyncContextManager[Response]: ...

    async def aclose(self) -> None: ...


# ---- aiohttp (the workers) -------------------------------------------------------------------

class _AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status_code = resp.status
        self.headers = resp.headers

    async def aread(self) -> bytes:
        try:
            return await self._resp.read()
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None

    async def aiter_lines(self) -> AsyncIterator[str]:
        # Split ourselves: aiohttp's own readline caps line length, and one SSE data line can be large.
        pending = b""
        async for data in self.aiter_bytes():
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.removesuffix(b"\r").decode("utf-8", errors="replace")
        if pending:
            yield pending.removesuffix(b"\r").decode("utf-8", errors="replace")


class AiohttpTransport:
    """One pooled keep-alive ``aiohttp`` session for a provider."""

    def __init__(self, max_connections: int, keepalive_s: float = 30.0) -> None:
        self._connector_args = dict(limit=max_connections, limit_per_host=max_connections,
                                    keepalive_timeout=keepalive_s, enable_cleanup_closed=True)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop that will own it.
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(**self._connector_args),
                                                  auto_decompress=True, skip_auto_headers=("User-Agent",))
        return self._session

    @staticmethod
    def _timeout(connect_timeout_s: float) -> aiohttp.ClientTimeout:
        # Only connecting is bounded here; the adapter bounds the whole call (and each stream read) itself.
        return aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s)

    async def request(self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None,
                      params: Mapping[str, str] | None, connect_timeout_s: float
                      ) -> tuple[int, Mapping[str, str], bytes]:
        try:
            async with self._client().request(method, URL(url, encoded=True), headers=headers, data=content,
                                              params=params, timeout=self._timeout(connect_timeout_s)) as resp:
                return resp.status, resp.headers, await resp.read()
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise TransportTimeout(type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None,
                     params: Mapping[str, str] | None, connect_timeout_s: float) -> AsyncIterator[Response]:
        try:
            resp = await self._client().request(method, URL(url, encoded=True), headers=headers, data=content,
                                                params=params, timeout=self._timeout(connect_timeout_s))
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise TransportTimeout(type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        try:
            yield _AiohttpResponse(resp)
        finally:
            if resp.content.at_eof():
                resp.release()  # read to the end: the connection goes back to the pool
            else:
                resp.close()  # abandoned mid-body (cancel, error): drop the connection, stop the upstream

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


# ---- httpx (a client the caller owns, e.g. in tests) ------------------------------------------

class _HttpxResponse:
    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status_code = resp.status_code
        self.headers = resp.headers

    async def aread(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None

    async def aiter_lines(self) -> AsyncIterator[str]:
        try:
            async for line in self._resp.aiter_lines():
                yield line
        except httpx.TimeoutException as exc:
            raise TransportTimeout(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.aiter_bytes():
                yield data
        except httpx.TimeoutException as exc:
            raise TransportTimeout(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None


class HttpxTransport:
    """Adapts an ``httpx.AsyncClient`` the caller owns (and closes)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @staticmethod
    def _timeout(connect_timeout_s: float) -> httpx.Timeout:
        return httpx.Timeout(None, connect=connect_timeout_s)

    async def request(self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None,
                      params: Mapping[str, str] | None, connect_timeout_s: float
                      ) -> tuple[int, Mapping[str, str], bytes]:
        try:
            resp = await self.client.request(method, url, headers=headers, content=content, params=params,
                                             timeout=self._timeout(connect_timeout_s))
        except httpx.TimeoutException as exc:
            raise TransportTimeout(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        return resp.status_code, resp.headers, resp.content

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None,
                     params: Mapping[str, str] | None, connect_timeout_s: float) -> AsyncIterator[Response]:
        try:
            cm = self.client.stream(method, url, headers=headers, content=content, params=params,
                                    timeout=self._timeout(connect_timeout_s))
            resp = await cm.__aenter__()
        except httpx.TimeoutException as exc:
            raise TransportTimeout(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        try:
            yield _HttpxResponse(resp)
        finally:
            await cm.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """The caller closes its client."""


def as_transport(client: Transport | httpx.AsyncClient) -> Transport:
    """Adapters accept a transport, or an ``httpx.AsyncClient`` (wrapped)."""
    return HttpxTransport(client) if isinstance(client, httpx.AsyncClient) else client
