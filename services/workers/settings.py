"""Worker settings (``SWITCHYARD_WORKERS__*``)."""

from pydantic import BaseModel, Field

from shared.settings import ConsumerSettings


class CacheSettings(BaseModel):
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


class WorkerSettings(BaseModel):
    """Provider calls. The in-flight cap per provider is the catalog's ``max_in_flight``."""

    consumer: ConsumerSettings = Field(default_factory=lambda: ConsumerSettings(ack_wait_s=15.0, max_deliver=5))
    pool_connections: int = Field(512, ge=1, description="keep-alive connections per provider")
    cache: CacheSettings = Field(default_factory=CacheSettings)
