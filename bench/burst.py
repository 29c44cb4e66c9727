"""N concurrent requests at once against the 1 s upstream: does every one succeed, how long, how much memory.

wrk cannot send "exactly N requests at once and wait for all", so this is a
small asyncio client (uvloop when available) on raw sockets: it opens N
connections together, sends one ``POST`` on each (``Connection: close``),
reads each answer to EOF and checks the status is 200 with a
``chat.completion`` body. Latency runs from before ``connect`` to the last
byte. The client's own work is a few hundred milliseconds of CPU for 5,000
requests, small next to what the systems under test spend.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit


@dataclass
class BurstResult:
    """Outcome of one burst (latencies in milliseconds)."""

    concurrency: int
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)  # a few non-200 answers, status line and body start
    wall_s: float | None = None  # until the last request finished
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    rss_peak: dict = field(default_factory=dict)

    def public(self) -> dict:
        return asdict(self)


def _request_bytes(host: str, port: int, path: str, body: dict, key: str | None,
                   headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
            f"Content-Length: {len(data)}", "Connection: close"]
    if key:
        head.append(f"Authorization: Bearer {key}")
    head.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def _one(host: str, port: int, req: bytes, samples: list[str]) -> tuple[float, str | None]:
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return time.perf_counter() - t0, f"connect: {type(exc).__name__}"
    try:
        writer.write(req)
        await writer.drain()
        data = await reader.read(-1)
    except OSError as exc:
        return time.perf_counter() - t0, f"io: {type(exc).__name__}"
    finally:
        writer.close()
    took = time.perf_counter() - t0
    status_line = data.split(b"\r\n", 1)[0]
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return took, "no HTTP response"
    if parts[1] != b"200":
        if len(samples) < 3:
            body = data.split(b"\r\n\r\n", 1)[-1]
            samples.append(f"{status_line.decode(errors='replace')}: {body[:300].decode(errors='replace')}")
        return took, f"HTTP {parts[1].decode()}"
    if b"chat.completion" not in data:
        return took, "unexpected body"
    return took, None


async def _burst(url: str, body: dict, key: str | None, n: int, timeout_s: float,
                 headers: dict[str, str] | None = None) -> BurstResult:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    req = _request_bytes(host, port, u.path, body, key, headers)
    res = BurstResult(concurrency=n)
    tasks = [asyncio.ensure_future(_one(host, port, req, res.error_samples)) for _ in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    lat = []
    for t in done:
        took, err = t.result()
        if err is None:
            res.ok += 1
            lat.append(took * 1000)
        else:
            res.error_kinds[err] = res.error_kinds.get(err, 0) + 1
    if pending:
        res.error_kinds[f"no answer within {timeout_s:g}s"] = len(pending)
    res.errors = n - res.ok
    if lat:
        lat.sort()
        res.p50_ms = lat[len(lat) // 2]
        res.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        res.max_ms = lat[-1]
        res.wall_s = res.max_ms / 1000 if not pending else None
    return res


def run_burst(url: str, body: dict, key: str | None, n: int, timeout_s: float,
              headers: dict[str, str] | None = None) -> BurstResult:
    try:
        import uvloop

        return uvloop.run(_burst(url, body, key, n, timeout_s, headers))
    except ImportError:
        return asyncio.run(_burst(url, body, key, n, timeout_s, headers))
