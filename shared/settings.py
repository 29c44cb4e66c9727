"""Process settings shared by every service (pydantic-settings, ``SWITCHYARD_`` prefix, ``__`` nesting).

Service-specific sections live in each service's ``settings.py``; the root
``Settings`` that composes them is built in ``services/settings.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator


class Section(BaseModel):
    """A settings section whose nested sections take what is given *over* their defaults.

    A field may default to a section with values of its own (audit's consumer reads batches of 512, the
    workers' gives up after 5 deliveries). pydantic validates a given value on its own, from the class
    defaults: ``SWITCHYARD_AUDIT__CONSUMER__ACK_WAIT_S=5`` alone would reset audit's batch to 64. Here a
    partial value (a dict, from the environment or a file) is merged over the field's default first, at every
    level, so setting one variable changes that variable and nothing else.
    """

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = None
        for name, info in cls.model_fields.items():
            key = name if name in data else info.alias if info.alias in data else None
            if key is None or not isinstance(data[key], dict) or info.default_factory is None \
                    or info.default_factory_takes_validated_data:
                continue
            default = info.default_factory()
            if isinstance(default, BaseModel):
                merged = merged if merged is not None else dict(data)
                merged[key] = _merge(default.model_dump(exclude_unset=True), data[key])
        return data if merged is None else merged


def _merge(base: dict, given: dict) -> dict:
    """``given`` over ``base``, dicts merged key by key (keys compared without case, as the environment's are)."""
    out = dict(base)
    lower = {k.lower(): k for k in base}
    for k, v in given.items():
        own = lower.get(k.lower(), k) if isinstance(k, str) else k
        out[own] = _merge(out[own], v) if isinstance(v, dict) and isinstance(out.get(own), dict) else v
    return out


class NatsSettings(Section):
    """How to reach the bus and how the stream is laid out."""

    url: str = Field("nats://127.0.0.1:4222", description="a server, or a comma list of a cluster's servers "
                     "(the client learns the rest of the cluster from whichever answers)")
    stream: str = "SWITCHYARD"
    replicas: int = Field(1, ge=1, le=5, description="replicas of the event stream (3 on a 3-node cluster); an "
                          "existing stream is brought to this count at start")
    max_age_s: float = Field(7 * 24 * 3600, gt=0, description="how long events stay in the stream")
    max_bytes: int = Field(8 * 1024**3, description="stream size cap in bytes (-1: none)")
    duplicate_window_s: float = Field(300, gt=0, description="Nats-Msg-Id de-duplication window")
    connect_timeout_s: float = 5.0
    kv_replicas: int = Field(1, ge=1, le=5, description="replicas of each KV bucket when it is created")
    busy_poll_us: int | None = Field(None, ge=0, le=100_000, description="after each message, keep the event "
                                     "loop polling (not sleeping) this long; 0: off; unset: 500 in a process that "
                                     "runs the whole request path, else off (see shared/bus/busypoll.py)")
    batch_yield_at: int = Field(16, ge=0, description="requests this process's API answers at once at which the "
                                "batch lane's first stage (policy-batch) reads at most batch_yield_window jobs at "
                                "once, until half as many are left; 0: never. Only a process that runs the gateway "
                                "counts requests (see shared/bus/serving.py)")
    batch_yield_window: int = Field(4, ge=1, description="the batch lane's window while the API is busy")
    # ---- the bus as a trust boundary (docs/security.md): who connects, over what, stored how ----
    user: str | None = Field(None, description="NATS user: the role this process plays (gateway, policy, router, "
                             "worker, audit, a '+' joined combination such as policy+router, or all); unset with "
                             "passwords_file: the role of this process's targets")
    password: SecretStr | None = Field(None, description="that user's NATS password")
    creds_file: str | None = Field(None, description="a NATS .creds file (JWT and nkey seed) instead of a password")
    passwords_file: str | None = Field(None, description="the embedded server's generated passwords (JSON, mode "
                                       "600): a process without user connects as its targets' role from it")
    tls_ca_file: str | None = Field(None, description="CA bundle to verify the NATS server (turns TLS on)")
    tls_cert_file: str | None = Field(None, description="client certificate, for servers that verify clients")
    tls_key_file: str | None = Field(None, description="the client certificate's private key")
    store_key: SecretStr | None = Field(None, description="the embedded server's JetStream encryption key; "
                                        "generated in its data directory (mode 600) when unset")
    store_cipher: Literal["chachapoly", "aes"] = Field("chachapoly", description="the embedded server's "
                                                       "JetStream cipher")
    store_sync: str | None = Field(None, pattern=r"^(always|[0-9]+(ms|s|m|h))$", description="the embedded "
                                   "server's JetStream fsync (nats-server sync_interval): 'always' writes every "
                                   "message to disk before its PubAck (survives a power loss, costs latency: "
                                   "docs/reliability.md); unset: the server's default (every 2 minutes)")
    # ---- accepted work is never evicted; payloads are kept only as long as they are needed ----
    max_msgs: int = Field(-1, description="stream message cap (-1: none); with max_bytes, a full stream refuses "
                          "new events (discard new) and never drops accepted ones")
    admit_below: float = Field(0.9, gt=0, le=1, description="the gateway accepts new requests only while the "
                               "stream is less full than this (of max_bytes and of max_msgs); the rest is room "
                               "for accepted work to move on")
    capacity_poll_s: float = Field(1.0, gt=0, description="how often the gateway reads how full the stream is")
    full_retry_after_s: float = Field(5.0, gt=0, le=120, description="Retry-After of a request refused because "
                                      "the stream is full")
    sweep_s: float = Field(1.0, ge=0, description="how often audit removes the events every reader has "
                           "acknowledged from the stream (0: they stay until max_age_s)")
    job_ttl_s: float = Field(24 * 3600, gt=0, description="how long a job's record and result stay in KV")
    idempotency_ttl_s: float = Field(24 * 3600, gt=0, description="how long an Idempotency-Key is remembered "
                                     "(per tenant) and a retry with it returns the first call's answer")
    conversation_ttl_s: float = Field(7 * 24 * 3600, gt=0, description="how long a stored Responses API "
                                      "response (its conversation, for previous_response_id) stays in KV")
    file_ttl_s: float = Field(7 * 24 * 3600, gt=0, description="how long an uploaded file, a batch and its "
                              "output files stay in KV")


    @property
    def servers(self) -> list[str]:
        """``url`` as the client's server list."""
        return [u.strip() for u in self.url.split(",") if u.strip()]


class ConsumerSettings(Section):
    """How one service reads its durable consumer."""

    concurrency: int = Field(256, ge=1, description="messages handled at once by this process")
    batch: int = Field(64, ge=1, description="messages fetched per pull")
    ack_wait_s: float = Field(30.0, gt=0, description="redelivery after this long without ack/progress")
    max_deliver: int = Field(10, ge=2, description="deliveries before a message is given up as poison")
    linger_s: float = Field(0.0, ge=0, description="batch consumers: wait this long to fill a batch")
    max_ack_pending: int | None = Field(None, ge=1, description="messages the server lets this consumer hold "
                                        "unacknowledged (deferred ones included); unset: 4 x concurrency")


class TelemetrySettings(Section):
    """Tracing and metrics."""

    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint; spans are dropped when unset")
    sample_ratio: float = Field(1.0, ge=0, le=1)
    # Operators' view (docs/operations.md#metrics): bounded labels, periodic collectors, log format.
    max_tenants: int = Field(100, ge=1, description="distinct tenants given their own metric label; later ones "
                                                      "are counted as 'other'")
    max_teams: int = Field(500, ge=1, description="distinct tenant/team pairs given their own metric labels; "
                                                    "later teams are counted as 'other'")
    collect_interval_s: float = Field(15.0, gt=0, description="how often consumer, stream, budget and job gauges "
                                                                "are read (off the request path)")
    loop_lag_interval_s: float = Field(0.5, gt=0, description="how often the event loop's lag is sampled")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per line with the "
                                                                    "trace and request ids")
