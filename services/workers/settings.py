"""Worker settings (``SWITCHYARD_WORKERS__*``)."""

from pydantic import Field

from shared.settings import ConsumerSettings, Section


class CacheSettings(Section):
    """The response cache as workers serve it (which teams and requests use it is policy's: ``SWITCHYARD_POLICY__CACHE_*``)."""

    embedding_model: str | None = Field(
        None, description="catalog embeddings model for semantic lookups; unset: teams on 'semantic' get exact "
                          "matches only")
    index_size: int = Field(256, ge=1, le=4096, description="entries per team and deployment a semantic lookup "
                                                             "compares (brute-force cosine; the oldest are dropped)")
    index_max_bytes: int = Field(768 * 1024, ge=4096, le=960 * 1024,
                                 description="size bound of one semantic index record (the oldest entries go first)")
    coalesce_wait_s: float = Field(30.0, gt=0, description="how long a request waits for an identical one in flight "
                                                           "before asking upstream itself")
    max_entry_bytes: int = Field(256 * 1024, ge=1024, le=960 * 1024, description="larger answers are not stored")


class BatchLaneSettings(Section):
    """How a worker drains the batch lane (async jobs) of one provider fairly across tenants
    (``SWITCHYARD_WORKERS__BATCH__*``; see ``services/workers/fairness.py``)."""

    share: float = Field(0.5, gt=0, le=1, description="calls at once in the batch lane, as a share of the "
                         "provider's max_in_flight (the interactive lane keeps a window of its own)")
    read_ahead: int = Field(128, ge=1, description="jobs read ahead of the calls, waiting for a slot, from which "
                            "the next call is picked fairly across tenants")
    tenant_waiting: int = Field(16, ge=1, description="of those, how many one tenant may hold while more wait in "
                                "the stream; its others go back for a moment so the lane reads past them")
    defer_s: float = Field(0.05, gt=0, le=30, description="the shortest time such a job goes back for (it goes "
                           "back until about its tenant's turn: its jobs ahead of it times the calls' mean duration "
                           "over the slots)")
    max_defer_s: float = Field(5.0, gt=0, le=300, description="the longest it goes back for")
    poll_s: float = Field(0.5, gt=0, le=60, description="how often the worker reads which tenants have jobs queued "
                          "in the lane (the stream's per-subject counts): alone, a tenant's jobs are never sent back")


class WorkerSettings(Section):
    """Provider calls. The in-flight cap per provider is the catalog's ``max_in_flight``."""

    consumer: ConsumerSettings = Field(default_factory=lambda: ConsumerSettings(ack_wait_s=15.0, max_deliver=5),
                                       description="the interactive lane's consumer (synchronous and streamed); "
                                       "its concurrency is the provider's max_in_flight")
    # Jobs sent back to read past another tenant's backlog count as deliveries: many are allowed, and the server
    # must let the lane hold them all unacknowledged. A job is never sent back on its last deliveries. The server
    # redelivers a job sent back no sooner than its consumer's next ack-wait check: a short ack_wait keeps that
    # close to the delay asked for (jobs waiting for a slot are kept alive with in_progress meanwhile).
    batch_consumer: ConsumerSettings = Field(
        default_factory=lambda: ConsumerSettings(ack_wait_s=5.0, max_deliver=1000, max_ack_pending=100_000),
        description="the batch lane's consumer (async jobs); its concurrency follows from batch.share and "
                    "batch.read_ahead")
    batch: BatchLaneSettings = Field(default_factory=BatchLaneSettings, description="fair draining of jobs")
    attempt_marks: bool = Field(True, description="claim each attempt in sy_attempts before calling the provider, "
                                "so a message the bus delivers again (a server that lost acknowledgements) never "
                                "calls it twice; one KV round trip per attempt (docs/reliability-lanes.md)")
    pool_connections: int = Field(512, ge=1, description="keep-alive connections per provider")
    cache: CacheSettings = Field(default_factory=CacheSettings)
