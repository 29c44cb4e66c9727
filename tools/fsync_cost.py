"""What nats-server's ``sync_interval: always`` costs: paired runs of JetStream publishes with and without it.

    python -m tools.fsync_cost [--rounds 3]

Each round starts a fresh local nats-server (``shared.natsd.NatsServer``, file storage, no auth) once with the
default fsync and once with ``always``, and measures a 1 KB publish until its PubAck at concurrency 1 (p50,
p99) and the publishes per second at concurrency 16. The figures of a dated run are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import StorageType, StreamConfig

from shared.natsd import NatsServer


async def measure(sync: str | None, n1: int = 2000, n16: int = 8000) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) at concurrency 1 and publishes/s at 16, on a fresh server with ``sync``."""
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats", sync=sync, auth=False).start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="FSYNC", subjects=["fsync.>"], storage=StorageType.FILE))
            data = b"x" * 1024
            for _ in range(100):  # warm up
                await js.publish("fsync.x", data)
            lat = []
            for _ in range(n1):
                t = time.perf_counter()
                await js.publish("fsync.x", data)
                lat.append(time.perf_counter() - t)
            sem = asyncio.Semaphore(16)

            async def one() -> None:
                async with sem:
                    await js.publish("fsync.x", data)

            t = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n16)))
            rate = n16 / (time.perf_counter() - t)
            await nc.close()
        finally:
            server.stop()
    lat.sort()
    return statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3, rate


async def main(rounds: int) -> None:
    for i in range(rounds):
        for sync in (None, "always"):
            p50, p99, rate = await measure(sync)
            print(f"round {i} sync_interval={sync or 'default'}: c=1 p50 {p50:.3f} ms, p99 {p99:.3f} ms; "
                  f"c=16 {rate:.0f} publishes/s", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(p.parse_args().rounds))
