"""Streaming time-to-first-token, measured by a small sequential httpx client.

For each of N sequential requests (one keep-alive connection) the client
records the time from sending the request to the first SSE ``data:`` event
whose ``choices[0].delta.content`` is non-empty, and the time to ``[DONE]``.
It checks the streamed text equals the upstream's and that a usage chunk
arrived. A system that refuses ``stream: true`` (any non-200) is reported as
unsupported rather than failing the run.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field

import httpx

from bench.upstream import CONTENT


@dataclass
class TtftResult:
    """TTFT and total stream time in milliseconds over the successful requests."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    unsupported: str | None = None
    ttft_p50_ms: float | None = None
    ttft_p90_ms: float | None = None
    ttft_p99_ms: float | None = None
    ttft_mean_ms: float | None = None
    total_p50_ms: float | None = None
    usage_seen: int = 0
    error_samples: list[str] = field(default_factory=list)

    def public(self) -> dict:
        return asdict(self)


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def _one(client: httpx.Client, url: str, body: dict, headers: dict) -> tuple[float, float, bool, str | None]:
    """(ttft, total, usage_seen, error) for one streamed request."""
    t0 = time.perf_counter()
    ttft = None
    text = []
    usage = False
    with client.stream("POST", url, json=body, headers=headers) as r:
        if r.status_code != 200:
            r.read()
            return 0.0, 0.0, False, f"HTTP {r.status_code}: {r.text[:200]}"
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            ev = json.loads(payload)
            if ev.get("usage"):
                usage = True
            for ch in ev.get("choices") or ():
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    text.append(piece)
    total = time.perf_counter() - t0
    if ttft is None or "".join(text) != "".join(CONTENT):
        return 0.0, total, usage, f"unexpected stream text {''.join(text)!r}"
    return ttft, total, usage, None


def measure_ttft(url: str, body: dict, key: str | None, n: int, warmup: int = 3,
                 timeout_s: float = 15.0, headers: dict[str, str] | None = None) -> TtftResult:
    res = TtftResult()
    headers = {**({"authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    ttfts: list[float] = []
    totals: list[float] = []
    with httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=1)) as client:
        for i in range(warmup + n):
            try:
                ttft, total, usage, err = _one(client, url, body, headers)
            except (httpx.HTTPError, ValueError) as exc:
                ttft, total, usage, err = 0.0, 0.0, False, f"{type(exc).__name__}: {exc}"
            if err and err.startswith("HTTP ") and i == 0:
                res.unsupported = err  # the system refuses streaming: nothing more to measure
                return res
            if i < warmup:
                continue
            res.requests += 1
            if err:
                res.errors += 1
                if len(res.error_samples) < 3:
                    res.error_samples.append(err)
                continue
            res.ok += 1
            res.usage_seen += usage
            ttfts.append(ttft * 1000)
            totals.append(total * 1000)
    if ttfts:
        res.ttft_p50_ms = _pct(ttfts, 50)
        res.ttft_p90_ms = _pct(ttfts, 90)
        res.ttft_p99_ms = _pct(ttfts, 99)
        res.ttft_mean_ms = statistics.fmean(ttfts)
        res.total_p50_ms = _pct(totals, 50)
    return res
