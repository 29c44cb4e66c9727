"""Router settings (``SWITCHYARD_ROUTER__*``)."""

from pydantic import BaseModel, Field

from shared.settings import ConsumerSettings


class RouterSettings(BaseModel):
    """Candidate selection and fallback."""

    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    max_attempts: int = Field(4, ge=1, description="attempts per request across all candidates")
    min_attempt_timeout_s: float = Field(0.5, gt=0, description="no attempt starts with less time than this left")
