"""Audit settings (``SWITCHYARD_AUDIT__*``), including the audit export (``SWITCHYARD_AUDIT__EXPORT__*``)."""

from typing import Literal

from pydantic import Field, SecretStr

from shared.settings import ConsumerSettings, Section


class ExportSettings(Section):
    """The audit export: every audit event to rotating JSONL files and/or a webhook (off unless one is set)."""

    file_dir: str | None = Field(None, description="write audit events to <file_dir>/audit.jsonl, rotated by size")
    file_max_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="rotate audit.jsonl past this size")
    file_keep: int = Field(10, ge=1, description="rotated files kept (the oldest beyond are removed)")
    webhook_url: str | None = Field(None, description="POST audit events here (Splunk HEC: .../services/collector)")
    webhook_format: Literal["json", "splunk"] = Field(
        "json", description="json: a JSON array of events; splunk: HEC events {time,host,source,sourcetype,event}")
    webhook_token: SecretStr | None = Field(
        None, description="sent as 'Authorization: Splunk <token>' (splunk) or 'Bearer <token>' (json); never logged")
    splunk_source: str = Field("switchyard", description="HEC 'source'")
    splunk_sourcetype: str = Field("switchyard:audit", description="HEC 'sourcetype'")
    splunk_host: str | None = Field(None, description="HEC 'host' (default: this machine's name)")
    splunk_index: str | None = Field(None, description="HEC 'index' (default: the token's)")
    batch: int = Field(200, ge=1, le=10000, description="events per delivery")
    linger_s: float = Field(0.5, ge=0, description="wait this long to fill a batch")
    timeout_s: float = Field(10.0, gt=0, description="webhook request timeout")
    backoff_s: float = Field(0.5, gt=0, description="first retry delay; doubles per failure")
    backoff_max_s: float = Field(30.0, gt=0, description="longest retry delay")
    ack_wait_s: float = Field(30.0, gt=0, description="the export consumer's ack wait (held events are kept alive)")

    @property
    def enabled(self) -> bool:
        return bool(self.file_dir or self.webhook_url)


class AuditSettings(Section):
    """Where traces and the cost ledger are kept."""

    consumer: ConsumerSettings = Field(default_factory=lambda: ConsumerSettings(batch=512, concurrency=1, linger_s=0.05))
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite+aiosqlite:///<data_dir>/audit.db. "
                          "PostgreSQL: postgresql+asyncpg://user@host/db")
    store_text: bool = Field(False, description="keep prompt/completion text (off: never stored)")
    shared_loop_batch: int = Field(128, ge=1, description="batch cap when audit shares its process with the "
                                                          "request path (e.g. --target all)")
    export: ExportSettings = Field(default_factory=ExportSettings, description="the audit export (SIEM)")
