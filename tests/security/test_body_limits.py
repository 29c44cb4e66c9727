"""Finding 10: a body over the limit is refused without being buffered.

The attack: with a valid key, send a body far larger than the gateway's limit — declared in
``Content-Length``, or streamed chunk by chunk without one — and watch the gateway's memory. A declared
size over the limit is refused (413) before a byte of the body is read; a chunked body is read only up to
the limit; either way the connection closes after the 413, and the process's memory does not grow by
anything like the body's size. (Switchyard runs in this test process, so its RSS is ours.)
"""

from __future__ import annotations

import asyncio
import time

from tests.support.system import ADMIN_KEY, MEMBER_KEY

MB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def head(path: str, key: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\n{extra}\r\n").encode()


async def read_response(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[int, bytes]:
    """Status and everything received up to the connection's close (a reset after the answer included: the
    server closes a connection whose unread body is still arriving)."""
    data = b""

    async def read_all() -> None:
        nonlocal data
        while chunk := await reader.read(65536):
            data += chunk

    try:
        await asyncio.wait_for(read_all(), timeout)
    except ConnectionResetError:
        pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


async def test_a_declared_content_length_over_the_limit_is_refused_at_once(system):
    host, port = system.base_url.removeprefix("http://").split(":")
    for path, key in (("/v1/chat/completions", MEMBER_KEY), ("/v1/jobs", MEMBER_KEY),
                      ("/v1/embeddings", MEMBER_KEY), ("/v1/admin/teams", ADMIN_KEY)):
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.perf_counter()
        writer.write(head(path, key, f"content-length: {512 * MB}\r\n"))  # and not one byte of the body
        await writer.drain()
        status, data = await read_response(reader)
        assert status == 413, (path, data[:300])
        assert b"request_too_large" in data and b"connection: close" in data.lower()
        assert time.perf_counter() - started < 2.0
        writer.close()


async def test_a_chunked_body_is_read_only_up_to_the_limit(system):
    limit = system.deps.settings.gateway.max_body_bytes
    host, port = system.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    chunk = b"x" * MB
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    before = rss_bytes()
    writer.write(head("/v1/chat/completions", MEMBER_KEY, "transfer-encoding: chunked\r\n"))
    sent = 0
    response = asyncio.ensure_future(read_response(reader, timeout=20))
    try:
        while sent < 256 * MB and not response.done():  # a quarter of a gigabyte, if the server kept reading
            writer.write(frame)
            await writer.drain()
            sent += len(chunk)
    except (ConnectionError, OSError):
        pass  # the server closed the connection: what it had not read, it never will
    status, data = await response
    grown = rss_bytes() - before
    writer.close()
    assert status == 413, data[:300]
    assert b"request_too_large" in data
    assert sent < 64 * MB, f"the server kept accepting the body ({sent // MB} MB sent)"
    assert grown < 48 * MB, f"RSS grew by {grown // MB} MB for a body limit of {limit // MB} MB"


async def test_bodies_within_the_limit_still_work(system):
    r = await system.http.post("/v1/chat/completions", headers={"authorization": f"Bearer {MEMBER_KEY}"},
                               json={"model": "mock-1", "messages": [{"role": "user", "content": "x" * 100_000}]})
    assert r.status_code == 200, r.text
