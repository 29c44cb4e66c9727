"""Router settings (``SWITCHYARD_ROUTER__*``): candidate selection, retries, breakers and shared health."""

from typing import Literal

from pydantic import Field

from shared.settings import ConsumerSettings, Section
from shared.state.settings import BreakerSettings, HealthSettings


class RouterSettings(Section):
    """Candidate selection, retries and fallback."""

    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings,
                                       description="the interactive lane's consumer (synchronous and streamed)")
    batch_consumer: ConsumerSettings = Field(default_factory=lambda: ConsumerSettings(concurrency=64),
                                             description="the batch lane's consumer (async jobs)")
    fuse_with_policy: bool = Field(True, description="a policy in the same process routes admitted requests "
                                                     "at once, without a bus hop to this consumer")
    max_attempts: int = Field(4, ge=1, description="attempts per request across all candidates")
    min_attempt_timeout_s: float = Field(0.5, gt=0, description="no attempt starts with less time than this left")
    fallback_reserve: float = Field(0.2, ge=0, lt=1,
                                    description="share of the remaining time an attempt leaves for its fallbacks")
    # scoring
    default_preference: Literal["balanced", "cheap", "fast", "best"] = "balanced"
    default_output_tokens: int = Field(512, ge=1, description="output estimate when the request sets no cap")
    strategy: Literal["score", "bandit"] = Field("score", description="auto routing: weighted score or bandit")
    balancing: Literal["p2c", "least_in_flight", "weighted"] = Field(
        "p2c", description="choice among the deployments of one model")
    # retries of the same deployment (fallback to another candidate comes first)
    max_retries_per_deployment: int = Field(2, ge=0)
    backoff_base_s: float = Field(0.25, gt=0)
    backoff_cap_s: float = Field(8.0, gt=0)
    max_retry_delay_s: float = Field(30.0, gt=0, description="a longer Retry-After means: do not retry there")
    retry_budget_ratio: float = Field(0.2, ge=0, description="retries per first attempt, per deployment")
    retry_budget_min: int = Field(3, ge=0, description="retries always allowed per window and deployment")
    retry_budget_window_s: float = Field(10.0, gt=0)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
