"""The pipeline collector against a real nats-server: stream and consumer gauges from JetStream's own state.

The collector runs as a service role (the router's bus user), not the operator: every role may read the
stream's state, its consumers and its messages, and nothing more is needed.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.bus import Bus, Subscription
from shared.collectors import LoopLag, PipelineCollector
from shared.natsd import NatsServer
from shared.settings import ConsumerSettings, TelemetrySettings
from shared.telemetry import Telemetry
from tests.support.events import requested
from tests.support.wait import eventually


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    s = NatsServer(tmp_path_factory.mktemp("collectors")).start()
    yield s
    s.stop()


def gauge(t: Telemetry, name: str, **labels) -> float | None:
    return t.metrics.registry.get_sample_value(name, labels)


async def test_consumer_backlog_age_and_stream_size_as_a_service_role_sees_them(server):
    operator = Bus(server.client_settings(max_bytes=10_000_000), Telemetry(TelemetrySettings()))
    await operator.connect()
    await operator.ensure_stream()
    await operator.ensure_consumer(Subscription("policy", ("sy.evt.requested",), ConsumerSettings()))
    for i in range(5):
        await operator.publish(requested(rid=f"req_collect_{i}"))
    seen = Telemetry(TelemetrySettings())
    router = Bus(server.client_settings(user="router"), seen, name="router")
    await router.connect()
    try:
        await asyncio.sleep(1.1)  # the oldest message ages past a second
        await PipelineCollector(router, seen.metrics).collect()
        stream = router.settings.stream
        assert gauge(seen, "switchyard_consumer_pending_messages", stream=stream, consumer="policy") == 5
        assert gauge(seen, "switchyard_consumer_ack_pending_messages", stream=stream, consumer="policy") == 0
        assert gauge(seen, "switchyard_consumer_redelivered_messages", stream=stream, consumer="policy") == 0
        assert 1.0 <= gauge(seen, "switchyard_consumer_oldest_unacked_age_seconds", stream=stream,
                            consumer="policy") < 60
        assert gauge(seen, "switchyard_stream_messages", stream=stream) == 5
        assert gauge(seen, "switchyard_stream_bytes", stream=stream) > 0
        assert gauge(seen, "switchyard_stream_max_bytes", stream=stream) == 10_000_000
        assert gauge(seen, "switchyard_stream_max_messages", stream=stream) == -1

        # once the consumer has taken and acknowledged everything, it has no backlog and no age
        msgs = await (await operator.js.pull_subscribe("sy.evt.requested", "policy")).fetch(5, timeout=5)
        for m in msgs:
            await m.ack_sync()
        await PipelineCollector(router, seen.metrics).collect()
        assert gauge(seen, "switchyard_consumer_pending_messages", stream=stream, consumer="policy") == 0
        assert gauge(seen, "switchyard_consumer_oldest_unacked_age_seconds", stream=stream, consumer="policy") == 0
        assert gauge(seen, "switchyard_collector_errors_total", collector="pipeline") is None
    finally:
        await router.close()
        await operator.close()


async def test_event_loop_lag_is_sampled_and_a_blocked_loop_shows():
    t = Telemetry(TelemetrySettings())
    task = asyncio.ensure_future(LoopLag(t.metrics).run(0.01))
    try:
        await eventually(lambda: (gauge(t, "switchyard_event_loop_lag_seconds_count") or 0) >= 3, timeout=5)
        time.sleep(0.12)  # the loop held: the next sample is at least this late
        await eventually(lambda: gauge(t, "switchyard_event_loop_lag_seconds_bucket", le="0.1") <
                         gauge(t, "switchyard_event_loop_lag_seconds_count"), timeout=5)
    finally:
        task.cancel()
