"""Teams and their governance settings, in JetStream KV (``sy_teams``, one entry per ``<tenant>.<team>``).

Tenants contain teams; a team's settings say what its keys may spend and
send: budgets, rate limits, what happens to PII and to risky prompts, the
default data class, whether audit may keep completion text, and how the
response cache serves it. A setting
left unset falls back to the policy defaults (``SWITCHYARD_POLICY__*``); a
team without a record (e.g. one only named by a configured key) has every
default. Policy reads the record at each admission, so an update applies to
the next request on every replica. ``effective`` fills in those defaults, for
admission and for the admin API's budget view alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Protocol

import msgspec
from msgspec import Meta, Struct
from nats.js.kv import KeyValue

from shared.catalog import DataClass
from shared.errors import ServiceUnavailable
from shared.ids import check_name
from shared.state.kv import Codec, cas, kv_get, read

PiiAction = Literal["redact", "block", "allow"]
RiskAction = Literal["allow", "flag", "block"]
Usd = Annotated[float, Meta(ge=0)]
PerMinute = Annotated[int, Meta(ge=1)]
Fraction = Annotated[float, Meta(gt=0, le=1)]
Seconds = Annotated[float, Meta(gt=0)]
CacheMode = Literal["off", "request", "exact", "semantic"]


class TeamSettings(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A team's governance settings; None means "the policy default"."""

    daily_budget_usd: Usd | None = None
    monthly_budget_usd: Usd | None = None
    alert_thresholds: list[Fraction] | None = None  # e.g. [0.8, 0.95]
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    pii_action: PiiAction | None = None
    risk_action: RiskAction | None = None
    risk_threshold: Fraction | None = None
    data_class: DataClass | None = None
    store_text: bool | None = None
    allowed_models: list[str] | None = None
    allowed_providers: list[str] | None = None
    # The response cache (docs/cache.md): off / request (only when a request asks) / exact / semantic.
    cache_mode: CacheMode | None = None
    cache_ttl_s: Seconds | None = None  # held to the operator's ceiling
    cache_similarity: Fraction | None = None  # cosine similarity a semantic hit needs


class TeamRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A team as stored."""

    tenant: str
    name: str
    settings: TeamSettings = msgspec.field(default_factory=TeamSettings)
    description: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def public(self) -> dict:
        return {"object": "team", "tenant": self.tenant, "name": self.name, "description": self.description,
                "settings": msgspec.to_builtins(self.settings), "created_at": self.created_at,
                "updated_at": self.updated_at}


_settings_decoder = msgspec.json.Decoder(TeamSettings)


def team_key(tenant: str, team: str) -> str:
    return f"{check_name(tenant, 'tenant')}.{check_name(team, 'team')}"


def patched(settings: TeamSettings, patch: dict) -> TeamSettings:
    """``settings`` with the fields in ``patch`` replaced (null clears one); validated like a new document.

    Unknown fields are refused (ValueError naming them) rather than silently ignored.
    """
    unknown = sorted(set(patch) - set(TeamSettings.__struct_fields__))
    if unknown:
        raise ValueError(f"unknown team setting(s) {', '.join(unknown)}; known: "
                         f"{', '.join(TeamSettings.__struct_fields__)}")
    merged = msgspec.to_builtins(settings) | patch
    merged = {k: v for k, v in merged.items() if v is not None}
    return _settings_decoder.decode(msgspec.json.encode(merged))


class TeamExists(Exception):
    """A team of that name exists already."""


class TeamDefaults(Protocol):
    """The defaults a team without its own setting gets (policy's settings, ``SWITCHYARD_POLICY__*``)."""

    pii_action: str
    risk_action: str
    risk_flag_threshold: float
    risk_block_threshold: float
    data_class: str
    alert_thresholds: list[float]
    cache_mode: str
    cache_ttl_s: float
    cache_similarity: float


@dataclass(frozen=True)
class Effective:
    """A team's settings with the policy defaults filled in."""

    pii_action: str
    risk_action: str
    risk_threshold: float
    data_class: str
    store_text: bool
    thresholds: list[float]
    daily_usd: float | None = None
    monthly_usd: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    allowed_models: list[str] | None = None
    allowed_providers: list[str] | None = None
    cache_mode: str = "request"
    cache_ttl_s: float = 3600.0
    cache_similarity: float = 0.9


def effective(team: TeamRecord | None, s: TeamDefaults) -> Effective:
    """The team's own settings where it has them, the defaults ``s`` otherwise (no record: every default)."""
    t = team.settings if team is not None else None

    def pick(name: str, default: Any) -> Any:
        value = getattr(t, name) if t is not None else None
        return default if value is None else value

    return Effective(
        pii_action=pick("pii_action", s.pii_action), risk_action=pick("risk_action", s.risk_action),
        risk_threshold=pick("risk_threshold", s.risk_block_threshold if pick("risk_action", s.risk_action) == "block"
                            else s.risk_flag_threshold),
        data_class=pick("data_class", s.data_class),
        store_text=pick("store_text", False), thresholds=list(pick("alert_thresholds", s.alert_thresholds)),
        daily_usd=pick("daily_budget_usd", None), monthly_usd=pick("monthly_budget_usd", None),
        rpm=pick("rpm", None), tpm=pick("tpm", None), allowed_models=pick("allowed_models", None),
        allowed_providers=pick("allowed_providers", None), cache_mode=pick("cache_mode", s.cache_mode),
        cache_ttl_s=pick("cache_ttl_s", s.cache_ttl_s), cache_similarity=pick("cache_similarity", s.cache_similarity))


class TeamStore:
    """Team records in KV."""

    def __init__(self, kv: KeyValue | None, *, clock: Callable[[], float] = time.time,
                 cas_timeout_s: float = 5.0) -> None:
        self.kv = kv
        self.clock = clock
        self.codec = Codec(TeamRecord)
        self.cas_timeout_s = cas_timeout_s

    async def _cas(self, key: str, change):
        return await cas(self.kv, key, self.codec, change, timeout_s=self.cas_timeout_s, what="team store")

    async def get(self, tenant: str, team: str) -> TeamRecord | None:
        return await read(self.kv, team_key(tenant, team), self.codec, "team store")

    async def create(self, tenant: str, team: str, settings: TeamSettings, description: str = "") -> TeamRecord:
        now = self.clock()
        record = TeamRecord(tenant=tenant, name=team, settings=settings, description=description, created_at=now,
                            updated_at=now)

        def change(current: TeamRecord | None):
            return (None, None) if current is not None else (record, record)

        made = await self._cas(team_key(tenant, team), change)
        if made is None:
            raise TeamExists(f"team {tenant}/{team} exists already")
        return made

    async def update(self, tenant: str, team: str, patch: dict, description: str | None = None,
                     create: bool = False) -> TeamRecord | None:
        """Apply ``patch`` to the team's settings (creating the record when ``create``); None if absent."""
        now = self.clock()
        new_settings = patched(TeamSettings(), patch)  # validate before touching anything

        def change(current: TeamRecord | None):
            if current is None:
                if not create:
                    return None, None
                rec = TeamRecord(tenant=tenant, name=team, settings=new_settings, description=description or "",
                                 created_at=now, updated_at=now)
                return rec, rec
            rec = msgspec.structs.replace(current, settings=patched(current.settings, patch), updated_at=now,
                                          description=current.description if description is None else description)
            return rec, rec

        return await self._cas(team_key(tenant, team), change)

    async def list(self, tenant: str) -> list[TeamRecord]:
        prefix = f"{check_name(tenant, 'tenant')}."
        try:
            keys = await self.kv.keys()
        except Exception as exc:  # noqa: BLE001 - nats-py raises NoKeysError for an empty bucket
            if type(exc).__name__ == "NoKeysError":
                return []
            raise ServiceUnavailable("the team store is unavailable") from exc
        out = []
        for key in sorted(k for k in keys if k.startswith(prefix)):
            entry = await kv_get(self.kv, key, "team store")
            if entry is not None and entry.value:
                out.append(self.codec.decode(entry.value))
        return out
