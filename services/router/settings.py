"""Router settings (``SWITCHYARD_ROUTER__*``): candidate selection, retries, breakers and shared health."""

from typing import Literal

from pydantic import BaseModel, Field

from shared.settings import ConsumerSettings


class BreakerSettings(BaseModel):
    """Circuit breakers per deployment (a provider's catalog ``breaker:`` block overrides any of these)."""

    enabled: bool = True
    failure_rate_threshold: float = Field(0.5, gt=0, le=1, description="open when this share of calls failed")
    minimum_calls: int = Field(10, ge=1, description="calls in the window before the rate counts")
    window_size: int = Field(20, ge=1, description="the sliding window: the last N calls of this state")
    window_age_s: float = Field(60.0, gt=0, description="calls older than this drop out of the window")
    open_wait_s: float = Field(15.0, gt=0, description="how long an open breaker refuses calls")
    half_open_probes: int = Field(3, ge=1, description="probe calls let through when half-open")
    half_open_timeout_s: float = Field(120.0, gt=0, description="probes unanswered this long are re-issued")
    auth_open_wait_s: float = Field(60.0, gt=0, description="open time after a provider 401/403")
    count_rate_limited: bool = Field(True, description="429s count as failures")


class HealthSettings(BaseModel):
    """How observed health is shared through JetStream KV."""

    flush_interval_s: float = Field(0.1, gt=0, description="a process publishes its observations this often")
    min_flush_gap_s: float = Field(0.1, ge=0, description="at least this long between two publishes of one "
                                                           "process, however often calls start and end")
    heartbeat_s: float = Field(5.0, gt=0, description="records with calls in flight are republished this often")
    stale_after_s: float = Field(30.0, gt=0, description="in-flight counts of records older than this are ignored")
    latency_alpha: float = Field(0.3, gt=0, le=1, description="EWMA weight of a new latency sample")
    latency_prior_weight: float = Field(2.0, ge=0, description="samples' worth of weight the catalog prior keeps")


class RouterSettings(BaseModel):
    """Candidate selection, retries and fallback."""

    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
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
