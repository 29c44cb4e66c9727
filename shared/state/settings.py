"""Settings of the shared health state: circuit breakers and how observed health is shared.

They are sections of the router's settings (``SWITCHYARD_ROUTER__BREAKER__*``,
``SWITCHYARD_ROUTER__HEALTH__*``); every process that opens a ``HealthStore``
(router, workers, the gateway's provider API) is handed the same sections.
"""

from pydantic import BaseModel, Field


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
