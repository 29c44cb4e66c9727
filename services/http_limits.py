"""How long, and how much, a client may take to send a request: the HTTP server's side of slow clients.

uvicorn times out only an idle keep-alive connection. A new connection that
sends nothing, or sends its request head a byte at a time, or its body a byte
at a time, would stay open for as long as the client liked, each one holding a
socket and a parser; and llhttp (under ``httptools``) puts no bound on the size
of a request head. ``GuardedHttpToolsProtocol`` is uvicorn's httptools
protocol with three limits (``SWITCHYARD_HTTP__*``, ``HttpServerSettings``):

- the head deadline, ``header_timeout_s``: from the connection (or from the
  first byte of the next request on a kept-alive one) to the end of its headers;
- the body deadline, ``body_timeout_s``: from the end of the headers to the end
  of the body;
- the head size, ``max_head_bytes``: request line and headers together.

A client past a limit gets ``408`` or ``431`` in OpenAI's error shape when
nothing has been answered on that request yet, and its connection is closed.
How large a body may be is the gateway's business (``read_body`` in
``services/gateway/web.py``).

Closing a connection whose client is still sending (the rest of a body just
refused) makes the kernel answer with a reset, and the reset can overtake the
refusal: the client sees a broken connection instead of its 413. So a close
lingers (``_LingeringTransport``): the answer goes out, then the end of the
stream, and what the client still sends is read and dropped until it closes
too, for at most ``LINGER_S`` and ``LINGER_BYTES``.

The class relies on these parts of uvicorn's ``HttpToolsProtocol``:
``connection_made``, ``connection_lost``, ``on_message_begin``, ``on_url``,
``on_header``, ``on_headers_complete``, ``on_body``, ``on_message_complete``,
``data_received``, ``shutdown``; its ``transport`` (every use of which goes
through the protocol's attribute, so a wrapper sees them all), ``loop`` and
``cycle`` (``response_started``, ``response_complete``, ``disconnected``,
``message_event``); and the protocol factory uvicorn calls with ``config``,
``server_state``, ``app_state`` and ``_loop``. ``tests/unit/test_http_limits.py``
fails loudly when a uvicorn release changes them.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable

import msgspec
from pydantic import BaseModel, Field
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HttpServerSettings(BaseModel):
    """Limits on how a client sends a request, for every HTTP server of the process (API and ops)."""

    header_timeout_s: float = Field(10.0, gt=0, description="a request's line and headers must arrive within this "
                                                            "(from the connection or the request's first byte)")
    body_timeout_s: float = Field(60.0, gt=0, description="a request's body must arrive within this after its "
                                                          "headers")
    max_head_bytes: int = Field(64 * 1024, ge=1024, description="request line and headers together (more: 431)")
    keep_alive_s: float = Field(30.0, gt=0, description="an idle kept-alive connection is closed after this")


def _refusal(status: int, reason: str, code: str, message: str) -> bytes:
    body = msgspec.json.encode({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                          "code": code}})
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


_HEAD_TIMEOUT = _refusal(408, "Request Timeout", "request_timeout",
                         "the request's headers did not arrive in time; the connection is closed")
_BODY_TIMEOUT = _refusal(408, "Request Timeout", "request_timeout",
                         "the request's body did not arrive in time; the connection is closed")
_HEAD_TOO_LARGE = _refusal(431, "Request Header Fields Too Large", "request_header_fields_too_large",
                           "the request line and headers are too large; the connection is closed")

LINGER_S = 2.0  # after the answer and the end of the stream, how long a closing connection drains the client
LINGER_BYTES = 64 * 1024 * 1024  # ... and how much of it


class _LingeringTransport:
    """A connection's transport as uvicorn's protocol sees it, but for ``close``, which lingers (see above)."""

    __slots__ = ("_transport", "_protocol", "lingering")

    def __init__(self, transport: asyncio.Transport, protocol: "GuardedHttpToolsProtocol") -> None:
        self._transport = transport
        self._protocol = protocol
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            return
        self.lingering = True
        self._protocol._linger(self._transport)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a body deadline and a head size cap."""

    def __init__(self, *args: Any, limits: HttpServerSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_head = False
        self._refused = False  # past a limit: the connection is closing and nothing more is parsed into a request
        self._drained = 0
        self._linger_timer: asyncio.TimerHandle | None = None

    # -- the deadline: one timer, for the head and then the body of the request being read --
    def _arm(self, seconds: float, answer: bytes) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, answer)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, answer: bytes) -> None:
        self._deadline = None
        self._refuse(answer)

    def _refuse(self, answer: bytes) -> None:
        """Answer (when nothing was answered on this request yet) and close the connection."""
        self._refused = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = self.cycle
        if self._in_head or cycle is None or cycle.response_complete or not cycle.response_started:
            # The request being read has no answer started: this one is it. (While the head is read, any
            # earlier request's response is complete, or pipelined behind it and never started.)
            transport.write(answer)
        if cycle is not None and not cycle.response_complete:
            # The application still waiting on this request's body hears the client is gone, and whatever it
            # would still send is dropped: the connection is answered (or closed) already.
            cycle.disconnected = True
            cycle.message_event.set()
        transport.close()

    # -- the lingering close --
    def _linger(self, transport: asyncio.Transport) -> None:
        self._refused = True
        self._disarm()
        try:
            if transport.can_write_eof():
                transport.write_eof()  # after whatever is still buffered: the answer, then the end of the stream
            transport.resume_reading()
        except (OSError, RuntimeError):
            transport.close()
            return
        self._linger_timer = self.loop.call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if isinstance(transport, _LingeringTransport) and transport.lingering:
            self._drained += len(data)  # dropped unread: the answer is out, nothing more is served here
            if self._drained > LINGER_BYTES:
                transport._transport.close()
            return
        super().data_received(data)

    def shutdown(self) -> None:
        """The server is stopping: an idle (or lingering) connection closes at once, not after a linger."""
        transport = self.transport
        if isinstance(transport, _LingeringTransport) and (self.cycle is None or self.cycle.response_complete):
            transport._transport.close()
            return
        super().shutdown()

    # -- uvicorn's protocol hooks --
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._in_head = True
        self._arm(self._limits.header_timeout_s, _HEAD_TIMEOUT)  # a new connection must send a head in time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    # Once refused, the rest of the bytes already received are parsed without effect: no request is started
    # from a head cut short, and nothing is written to the closing connection.
    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._head_bytes = 0
        if not self._in_head:  # the next request on a kept-alive connection: its first byte starts the clock
            self._in_head = True
            self._arm(self._limits.header_timeout_s, _HEAD_TIMEOUT)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self._limits.max_head_bytes and not self._refused:
            self._disarm()
            self._refuse(_HEAD_TOO_LARGE)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._arm(self._limits.body_timeout_s, _BODY_TIMEOUT)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_message_complete()


def guarded_protocol(limits: HttpServerSettings) -> Callable[..., GuardedHttpToolsProtocol]:
    """The protocol factory to hand uvicorn as its ``http`` setting."""
    return functools.partial(GuardedHttpToolsProtocol, limits=limits)
