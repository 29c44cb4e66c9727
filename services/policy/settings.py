"""Policy settings (``SWITCHYARD_POLICY__*``)."""

from pydantic import BaseModel, Field

from shared.settings import ConsumerSettings


class PolicySettings(BaseModel):
    """Admission limits."""

    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    max_messages: int = Field(2048, ge=1, description="messages per request (more: 422)")
    max_tools: int = Field(128, ge=0, description="tools per request (more: 422)")
    max_n: int = Field(8, ge=1, description="largest n (more: 422)")
    max_prompt_chars: int = Field(2_000_000, ge=1, description="prompt characters per request (more: 413)")
