"""Worker settings (``SWITCHYARD_WORKERS__*``)."""

from pydantic import BaseModel, Field

from shared.settings import ConsumerSettings


class WorkerSettings(BaseModel):
    """Provider calls. The in-flight cap per provider is the catalog's ``max_in_flight``."""

    consumer: ConsumerSettings = Field(default_factory=lambda: ConsumerSettings(ack_wait_s=15.0, max_deliver=5))
    pool_connections: int = Field(512, ge=1, description="keep-alive connections per provider")
