"""Policy settings (``SWITCHYARD_POLICY__*``): request caps, and the defaults of every team setting."""

from typing import Literal

from pydantic import BaseModel, Field

from shared.settings import ConsumerSettings


class PolicySettings(BaseModel):
    """Admission limits and governance defaults (a team's own settings override the defaults)."""

    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    settle_consumer: ConsumerSettings = Field(default_factory=ConsumerSettings,
                                              description="the consumer of terminal events (budget settlement)")
    max_messages: int = Field(2048, ge=1, description="messages per request (more: 422)")
    max_tools: int = Field(128, ge=0, description="tools per request (more: 422)")
    max_n: int = Field(8, ge=1, description="largest n (more: 422)")
    max_prompt_chars: int = Field(2_000_000, ge=1, description="prompt characters per request (more: 413)")

    pii_action: Literal["redact", "block", "allow"] = Field("redact", description="teams without their own")
    risk_action: Literal["allow", "flag", "block"] = Field("flag", description="teams without their own")
    risk_flag_threshold: float = Field(0.4, gt=0, le=1, description="risk score a team on 'flag' flags at")
    risk_block_threshold: float = Field(0.7, gt=0, le=1, description="risk score a team on 'block' blocks at")
    data_class: Literal["public", "internal", "confidential", "restricted"] = Field(
        "internal", description="data class of teams without their own")
    alert_thresholds: list[float] = Field([0.8, 0.95], description="soft budget alerts (fractions of a limit)")

    reservation_grace_s: float = Field(
        3600, gt=0, description="a reservation still open this long past its request's deadline is dropped")
    cas_timeout_s: float = Field(5.0, gt=0, description="give up (503) after this long of KV write conflicts")
    fail_closed_after: int = Field(
        2, ge=1, description="deliveries of a request whose checks cannot be evaluated before it is denied (503)")
    ignore_terminals_older_than_s: float = Field(
        86400, gt=0, description="settlement skips terminal events older than this (a replayed stream)")
