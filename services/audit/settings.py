"""Audit settings (``SWITCHYARD_AUDIT__*``)."""

from pydantic import BaseModel, Field

from shared.settings import ConsumerSettings


class AuditSettings(BaseModel):
    """Where traces and the cost ledger are kept."""

    consumer: ConsumerSettings = Field(default_factory=lambda: ConsumerSettings(batch=512, concurrency=1, linger_s=0.05))
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite+aiosqlite:///<data_dir>/audit.db. "
                          "PostgreSQL: postgresql+asyncpg://user@host/db")
    store_text: bool = Field(False, description="keep prompt/completion text (off: never stored)")
    shared_loop_batch: int = Field(128, ge=1, description="batch cap when audit shares its process with the "
                                                          "request path (e.g. --target all)")
