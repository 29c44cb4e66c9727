"""Periodic metric collectors, off the request path: the event stream and its consumers, and event-loop lag.

Every process runs both (the bootstrap starts them). ``PipelineCollector``
reads, every ``collect_interval_s``, the stream's state and the state of every
durable consumer on it in one JetStream API call each (``STREAM.INFO``,
``CONSUMER.LIST``), plus one message lookup per consumer with a backlog (the
age of its oldest unacknowledged message). Reading every consumer rather than
only this process's own keeps a consumer's lag visible while its own service
is down or stuck, which is when it matters; the series are the same from every
process, so the dashboards and rules take ``max by (consumer)``.

``LoopLag`` sleeps ``loop_lag_interval_s`` at a time and records how much
later than asked it woke: the time a request waits for the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from shared.telemetry import Metrics

if TYPE_CHECKING:
    from shared.bus import Bus

log = logging.getLogger("switchyard.collectors")


async def every(interval_s: float, collect: Callable[[], Awaitable[None]], name: str, metrics: Metrics) -> None:
    """Run ``collect`` now and then every ``interval_s`` until cancelled; a failed round is counted and logged once
    per run of failures, and the next round tries again."""
    failing = False
    while True:
        try:
            await collect()
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a gauge left stale is better than a dead collector
            metrics.collect_errors.labels(name).inc()
            if not failing:
                log.warning("%s collection failed (retrying every %gs): %r", name, interval_s, exc)
            failing = True
        await asyncio.sleep(interval_s)


class PipelineCollector:
    """Stream and consumer gauges from JetStream's own accounting (see the module docstring)."""

    def __init__(self, bus: "Bus", metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self.metrics = metrics
        self.clock = clock

    async def run(self, interval_s: float) -> None:
        await every(interval_s, self.collect, "pipeline", self.metrics)

    async def collect(self) -> None:
        js, stream, m = self.bus.js, self.bus.settings.stream, self.metrics
        info = await js.stream_info(stream)
        m.stream_messages.labels(stream).set(info.state.messages)
        m.stream_bytes.labels(stream).set(info.state.bytes)
        m.stream_max_messages.labels(stream).set(_limit(info.config.max_msgs))
        m.stream_max_bytes.labels(stream).set(_limit(info.config.max_bytes))
        for c in await js.consumers_info(stream):
            name = c.name
            m.consumer_pending.labels(stream, name).set(c.num_pending or 0)
            m.consumer_ack_pending.labels(stream, name).set(c.num_ack_pending or 0)
            m.consumer_redelivered.labels(stream, name).set(c.num_redelivered or 0)
            backlog = (c.num_pending or 0) + (c.num_ack_pending or 0)
            age = await self._oldest_age(stream, c) if backlog else 0.0
            m.consumer_oldest_age.labels(stream, name).set(age)

    async def _oldest_age(self, stream: str, c) -> float:
        """Seconds since the first message after the consumer's ack floor (among its filter subjects) arrived."""
        floor = (c.ack_floor.stream_seq if c.ack_floor is not None else 0) or 0
        cfg = c.config
        subjects = list(cfg.filter_subjects or ()) or ([cfg.filter_subject] if cfg.filter_subject else [None])
        oldest: float | None = None
        for subject in subjects:
            try:
                msg = await self.bus.js.get_msg(stream, seq=floor + 1, subject=subject, next=True)
            except Exception as exc:  # noqa: BLE001 - none left after the floor (acked out of order): no age
                log.debug("no message after the ack floor of %s: %r", c.name, exc)
                continue
            if msg.time is not None:
                ts = msg.time.timestamp()
                oldest = ts if oldest is None else min(oldest, ts)
        return max(0.0, self.clock() - oldest) if oldest is not None else 0.0


def _limit(value: int | None) -> int:
    return -1 if value is None or value <= 0 else value


class LoopLag:
    """Samples how late the event loop runs a sleep's wake-up (see the module docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def run(self, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - asked))


def start_collectors(bus: "Bus", metrics: Metrics, collect_interval_s: float, loop_lag_interval_s: float) -> None:
    """Both collectors as tasks of ``bus`` (cancelled when it closes)."""
    bus.start(PipelineCollector(bus, metrics).run(collect_interval_s))
    bus.start(LoopLag(metrics).run(loop_lag_interval_s))
