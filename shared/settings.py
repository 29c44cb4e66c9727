"""Process settings shared by every service (pydantic-settings, ``SWITCHYARD_`` prefix, ``__`` nesting).

Service-specific sections live in each service's ``settings.py``; the root
``Settings`` that composes them is built in ``services/settings.py``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class NatsSettings(BaseModel):
    """How to reach the bus and how the stream is laid out."""

    url: str = "nats://127.0.0.1:4222"
    stream: str = "SWITCHYARD"
    replicas: int = Field(1, ge=1, le=5)
    max_age_s: float = Field(7 * 24 * 3600, gt=0, description="how long events stay in the stream")
    max_bytes: int = Field(8 * 1024**3, description="stream size cap in bytes (-1: none)")
    duplicate_window_s: float = Field(300, gt=0, description="Nats-Msg-Id de-duplication window")
    connect_timeout_s: float = 5.0
    kv_replicas: int = Field(1, ge=1, le=5)
    busy_poll_us: int | None = Field(None, ge=0, le=100_000, description="after each message, keep the event "
                                     "loop polling (not sleeping) this long; 0: off; unset: 500 in a process that "
                                     "runs the whole request path, else off (see shared/bus/busypoll.py)")


class ConsumerSettings(BaseModel):
    """How one service reads its durable consumer."""

    concurrency: int = Field(256, ge=1, description="messages handled at once by this process")
    batch: int = Field(64, ge=1, description="messages fetched per pull")
    ack_wait_s: float = Field(30.0, gt=0, description="redelivery after this long without ack/progress")
    max_deliver: int = Field(10, ge=2, description="deliveries before a message is given up as poison")
    linger_s: float = Field(0.0, ge=0, description="batch consumers: wait this long to fill a batch")


class TelemetrySettings(BaseModel):
    """Tracing and metrics."""

    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint; spans are dropped when unset")
    sample_ratio: float = Field(1.0, ge=0, le=1)
