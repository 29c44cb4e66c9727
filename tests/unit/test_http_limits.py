"""services/http_limits.py subclasses uvicorn's httptools protocol: these tests fail loudly when a uvicorn
release changes what it relies on, and check the limits on a bare server (no NATS, no Switchyard)."""

from __future__ import annotations

import asyncio
import inspect

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from services.http_limits import GuardedHttpToolsProtocol, HttpServerSettings, guarded_protocol
from shared.natsd import free_port

HOOKS = ("connection_made", "connection_lost", "on_message_begin", "on_url", "on_header", "on_headers_complete",
         "on_body", "on_message_complete", "data_received", "shutdown")


def test_uvicorn_still_has_what_the_guarded_protocol_overrides_and_reads():
    for name in HOOKS:
        assert callable(getattr(HttpToolsProtocol, name, None)), name
        assert name in GuardedHttpToolsProtocol.__dict__, name
    params = inspect.signature(HttpToolsProtocol.__init__).parameters
    assert list(params)[1:5] == ["config", "server_state", "app_state", "_loop"]
    init = inspect.getsource(HttpToolsProtocol.__init__) + inspect.getsource(HttpToolsProtocol.connection_made)
    for attribute in ("self.loop", "self.transport", "self.cycle"):
        assert attribute in init, attribute
    cycle = inspect.getsource(RequestResponseCycle.__init__)
    for attribute in ("self.response_started", "self.response_complete", "self.disconnected", "self.message_event"):
        assert attribute in cycle, attribute
    # An application waiting on the body is woken by message_event and sees disconnected; send() then drops.
    assert "if self.disconnected" in inspect.getsource(RequestResponseCycle.receive)
    assert "if self.disconnected" in inspect.getsource(RequestResponseCycle.send)
    # uvicorn builds each connection's protocol from config.http_protocol_class with these keywords.
    startup = inspect.getsource(uvicorn.Server.startup)
    assert "http_protocol_class(" in startup and "server_state=" in startup and "app_state=" in startup


async def _app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_limits_on_a_bare_server():
    port = free_port()
    limits = HttpServerSettings(header_timeout_s=0.3, body_timeout_s=0.3, max_head_bytes=2048)
    server = uvicorn.Server(uvicorn.Config(_app, host="127.0.0.1", port=port, loop="none", lifespan="off",
                                           http=guarded_protocol(limits), log_level="critical",
                                           timeout_keep_alive=1))
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)

        async def exchange(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            await writer.drain()
            try:
                return await asyncio.wait_for(reader.read(-1), 5)
            finally:
                writer.close()

        ok = await exchange(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"ok")
        assert (await exchange(b"GET / HTTP/1.1\r\nhost: x\r\n")).startswith(b"HTTP/1.1 408")  # head never ends
        body_left = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n12345"
        assert (await exchange(body_left)).startswith(b"HTTP/1.1 408")
        big = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 4096 + b"\r\n\r\n"
        assert (await exchange(big)).startswith(b"HTTP/1.1 431")
        # Served, then idle: the head deadline waits for the next request's first byte; keep-alive closes it.
        kept = await exchange(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert kept.startswith(b"HTTP/1.1 200") and b"408" not in kept
    finally:
        server.should_exit = True
        await task
