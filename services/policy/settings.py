"""Policy settings (``SWITCHYARD_POLICY__*``): request caps, the defaults of every team setting, default quotas and
fair admission across tenants."""

from typing import Literal

from pydantic import Field, field_validator

from shared.ids import check_name
from shared.settings import ConsumerSettings, Section
from shared.state.buckets import CACHE_MAX_AGE_S


class TenantQuota(Section):
    """One tenant's own rate limits, instead of the tenant defaults (0: no limit)."""

    rpm: int = Field(0, ge=0, description="requests per minute of the whole tenant")
    tpm: int = Field(0, ge=0, description="tokens per minute of the whole tenant")


class QuotaSettings(Section):
    """Default rate limits (``SWITCHYARD_POLICY__QUOTAS__*``): every key and every tenant is held to them unless
    it has its own. 0 turns a default off.

    A key's own ``limits.rpm``/``tpm`` replace the key defaults (per dimension); a tenant listed in ``tenants``
    has its own limits instead of the tenant defaults; a team's ``rpm``/``tpm`` are a further limit of their
    own. TPM defaults are off: TPM counts each request's output cap (the model's maximum when ``max_tokens`` is
    unset), so a default low enough to matter would refuse ordinary requests to large-output models.
    """

    key_rpm: int = Field(3000, ge=0, description="requests per minute of a key without its own rpm")
    key_tpm: int = Field(0, ge=0, description="tokens per minute of a key without its own tpm")
    tenant_rpm: int = Field(10000, ge=0, description="requests per minute of a tenant, all its keys together")
    tenant_tpm: int = Field(0, ge=0, description="tokens per minute of a tenant, all its keys together")
    tenants: dict[str, TenantQuota] = Field(default_factory=dict, description="tenants with their own limits")
    exempt_operator: bool = Field(True, description="the operator's configured admin key is not held to the "
                                  "defaults (its own explicit limits still apply)")

    @field_validator("tenants")
    @classmethod
    def _names(cls, value: dict[str, TenantQuota]) -> dict[str, TenantQuota]:
        for name in value:
            check_name(name, "tenant")
        return value


class FairnessSettings(Section):
    """Fair admission across tenants (``SWITCHYARD_POLICY__FAIRNESS__*``): one tenant's flood cannot occupy the
    whole in-flight window of a policy process, so another tenant's requests are read and admitted meanwhile."""

    enabled: bool = True
    tenant_share: float = Field(0.25, gt=0, le=1, description="share of this process's in-flight admissions "
                                "(consumer.concurrency) one tenant may hold; more go back to the stream a moment")
    min_in_flight: int = Field(16, ge=1, description="a tenant may always hold at least this many")
    defer_s: float = Field(0.1, gt=0, le=5, description="how long a request over its tenant's share is sent back "
                           "for (times its delivery number, with jitter)")
    max_defers: int = Field(3, ge=0, description="times one request may be sent back; after that it is admitted "
                            "whatever its tenant holds (no starvation; it can never become poison)")


class PolicySettings(Section):
    """Admission limits and governance defaults (a team's own settings override the defaults)."""

    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings,
                                       description="the interactive lane's consumer (synchronous and streamed)")
    # A job over its tenant's share goes back to the stream for a moment (nak with a delay). Where the stream goes
    # quiet right after, the server has been seen to send such a job again only at the consumer's next ack-wait
    # check (30 s by default), not after the delay asked for: a short ack_wait bounds that wait, as in the workers'
    # batch lane (handlers that run longer are kept alive with in_progress).
    batch_consumer: ConsumerSettings = Field(default_factory=lambda: ConsumerSettings(concurrency=64, ack_wait_s=5.0),
                                             description="the batch lane's consumer (async jobs)")
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
    # The response cache (docs/cache.md): defaults of the team settings, and the operator's bounds over all teams.
    cache_enabled: bool = Field(True, description="false: no team's requests are cached (operator switch)")
    cache_mode: Literal["off", "request", "exact", "semantic"] = Field(
        "request", description="teams without their own: cached only when a request sends x-switchyard-cache")
    cache_ttl_s: float = Field(3600, gt=0, description="how long an answer is served, for teams without their own")
    cache_max_ttl_s: float = Field(86400, gt=0, le=CACHE_MAX_AGE_S,
                                   description="ceiling on every team's cache TTL (at most 7 days)")
    cache_similarity: float = Field(0.9, gt=0, le=1,
                                    description="cosine similarity a semantic hit needs, for teams without their own")

    reservation_grace_s: float = Field(
        3600, gt=0, description="a reservation still open this long past its request's deadline is dropped")
    cas_timeout_s: float = Field(5.0, gt=0, description="give up (503) after this long of KV write conflicts")
    fail_closed_after: int = Field(
        2, ge=1, description="deliveries of a request whose checks cannot be evaluated before it is denied (503)")
    ignore_terminals_older_than_s: float = Field(
        86400, gt=0, description="settlement skips terminal events older than this (a replayed stream)")
    quotas: QuotaSettings = Field(default_factory=QuotaSettings, description="default rate limits")
    fairness: FairnessSettings = Field(default_factory=FairnessSettings, description="fair admission across tenants")
