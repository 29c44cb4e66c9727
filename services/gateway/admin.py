"""The admin API: keys, teams and budgets (the gateway's route table names their paths).

    POST   /v1/admin/keys                      create a key (the key is in this response only)
    GET    /v1/admin/keys[?team=]              list keys: prefix and last 4 characters, never the key
    GET    /v1/admin/keys/{id}                 one key
    POST   /v1/admin/keys/{id}/revoke          revoke (every replica refuses it within a second)
    POST   /v1/admin/keys/{id}/rotate          a new key with the same attributes; the old one is revoked,
                                               or expires after {"grace_s": n}
    POST   /v1/admin/teams                     create a team with its settings
    GET    /v1/admin/teams                     list teams
    GET    /v1/admin/teams/{team}              one team
    PATCH  /v1/admin/teams/{team}              change settings ({"settings": {...}}; null resets one)
    GET    /v1/budgets/{team}                  limits, spent, reserved, remaining for the current periods
    POST   /v1/admin/teams/{team}/cache/purge  remove the team's cached answers (docs/cache.md)

Admin keys only; a member gets 403. The one read a viewer may make is the
budget of its own team. An admin acts inside its own tenant; the configured
admin key (the operator's) may name another with ``tenant`` (body or query).
Keys and teams of another tenant answer 404, exactly as ones that do not exist.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec
from fastapi import Request
from fastapi.responses import Response
from msgspec import Meta, Struct

from services.gateway.actions import Actions, Publish
from services.gateway.web import SMALL_BODY_BYTES, principal_of, read_body
from services.ops import json_response
from shared.auth import KeyEntry, KeyLimits, KeyRecord, KeyStore, Principal, generate_key
from shared.catalog import Catalog
from shared.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from shared.ids import SAFE_KEY_ID, SAFE_NAME, check_name
from shared.state.budgets import Scope, to_nano, view
from shared.state.ratelimit import RateScope
from shared.state.scopes import key_scope_key, team_scope_key
from shared.state.stores import Stores
from shared.state.teams import TeamDefaults, TeamExists, TeamRecord, TeamSettings, effective, patched


class LimitsIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A key's own limits as the API takes them."""

    rpm: Annotated[int, Meta(ge=1)] | None = None
    tpm: Annotated[int, Meta(ge=1)] | None = None
    daily_usd: Annotated[float, Meta(ge=0)] | None = None
    monthly_usd: Annotated[float, Meta(ge=0)] | None = None


class KeyCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/admin/keys."""

    team: str
    role: Literal["admin", "member", "viewer"] = "member"
    name: Annotated[str, Meta(max_length=200)] = ""
    tenant: str | None = None
    expires_at: float | None = None  # epoch seconds
    expires_in_s: Annotated[float, Meta(gt=0)] | None = None
    allowed_models: list[str] | None = None
    allowed_providers: list[str] | None = None
    limits: LimitsIn | None = None
    operator: bool = False


class KeyRotate(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/admin/keys/{id}/rotate."""

    grace_s: Annotated[float, Meta(ge=0, le=30 * 86400)] = 0.0


class TeamCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/admin/teams."""

    name: str
    tenant: str | None = None
    description: Annotated[str, Meta(max_length=1000)] = ""
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


class TeamPatch(Struct, kw_only=True, forbid_unknown_fields=True):
    """PATCH /v1/admin/teams/{team}."""

    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    description: Annotated[str, Meta(max_length=1000)] | None = None


async def _body(request: Request, type_: type) -> Any:
    raw = await read_body(request, SMALL_BODY_BYTES)
    try:
        return msgspec.json.decode(raw or b"{}", type=type_)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = text.split("at `$.", 1)[1].rstrip("`") if "at `$." in text else None
        raise InvalidRequest(text.split(" - at ")[0], param=param) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=what) from None


class Admin:
    """The admin endpoints, over the key store and the team, budget and rate-limit stores policy admits with."""

    def __init__(self, keyring: KeyStore, catalog: Catalog, stores: Stores, team_defaults: TeamDefaults,
                 publish: Publish | None = None) -> None:
        self.actions = Actions(publish)  # every change is published to the audit trail
        self.keys = keyring
        self.catalog = catalog
        self.stores = stores
        self.team_defaults = team_defaults  # policy's settings: what a team without its own setting gets

    # ---- who may act, and on what --------------------------------------------------------

    def _admin(self, request: Request) -> Principal:
        p = principal_of(self.keys, request)
        if p.role != "admin":
            raise PermissionDenied("This endpoint needs an admin key.")
        return p

    @staticmethod
    def _tenant_of(p: Principal, asked: str | None) -> str:
        if asked is None or asked == p.tenant:
            return p.tenant
        if not p.operator:
            raise PermissionDenied("Only the operator's admin key may manage another tenant.", param="tenant")
        return _name(asked, "tenant")

    def admin_in(self, request: Request, asked: str | None) -> tuple[Principal, str]:
        """The admin making the call and the tenant it acts in (its own; the operator's key may name another);
        for the admin endpoints that live in other modules (prompt templates)."""
        p = self._admin(request)
        return p, self._tenant_of(p, asked)

    async def _own_key(self, p: Principal, key_id: str) -> KeyRecord:
        record = await self.keys.fetch(key_id) if SAFE_KEY_ID.match(key_id) else None
        if record is None or (record.tenant != p.tenant and not p.operator):
            raise NotFound(f"No key found with id '{key_id}'.", param="key_id")
        return record

    @staticmethod
    def _guard_operator(p: Principal, record: KeyRecord) -> None:
        if record.operator and not p.operator:
            raise PermissionDenied("Only the operator's admin key may revoke or rotate an operator key.")

    async def _team(self, tenant: str, team: str) -> TeamRecord | None:
        return await (await self.stores.teams()).get(tenant, team)

    async def _team_known(self, tenant: str, team: str) -> bool:
        return await self._team(tenant, team) is not None or team in self.keys.teams(tenant)

    def _check_lists(self, models: list[str] | None, providers: list[str] | None) -> None:
        for m in models or []:
            if not self.catalog.knows(m):
                raise InvalidRequest(f"unknown model '{m}'", param="allowed_models")
        for prov in providers or []:
            if prov not in self.catalog.providers:
                raise InvalidRequest(f"unknown provider '{prov}'", param="allowed_providers")

    # ---- keys ----------------------------------------------------------------------------

    async def create_key(self, request: Request) -> Response:
        p = self._admin(request)
        body: KeyCreate = await _body(request, KeyCreate)
        tenant = self._tenant_of(p, body.tenant)
        team = _name(body.team, "team")
        if body.operator and not p.operator:
            raise PermissionDenied("Only the operator's admin key may create operator keys.", param="operator")
        if not await self._team_known(tenant, team):
            raise NotFound(f"No team '{team}' in tenant '{tenant}'; create it with POST /v1/admin/teams.",
                           param="team", code="team_not_found")
        self._check_lists(body.allowed_models, body.allowed_providers)
        expires = body.expires_at
        if body.expires_in_s is not None:
            expires = time.time() + body.expires_in_s
        limits = KeyLimits(**msgspec.structs.asdict(body.limits)) if body.limits else None
        clear = generate_key()
        record = await self.keys.create(KeyEntry(key=clear, tenant=tenant, team=team, role=body.role, name=body.name,
                                                 operator=body.operator, expires_at=expires,
                                                 allowed_models=body.allowed_models,
                                                 allowed_providers=body.allowed_providers, limits=limits))
        await self.actions.record("key_created", p, tenant=tenant, team=team, subject_id=record.id, detail={
            "role": body.role, "operator": body.operator, "expires_at": expires,
            "allowed_models": body.allowed_models, "allowed_providers": body.allowed_providers,
            "limits": msgspec.to_builtins(limits) if limits else None})
        return json_response({**record.public(), "key": clear}, status=201)

    async def list_keys(self, request: Request) -> Response:
        p = self._admin(request)
        q = request.query_params
        tenant = self._tenant_of(p, q.get("tenant"))
        team = q.get("team")
        data = [r.public() for r in self.keys.list(tenant, team)]
        return json_response({"object": "list", "data": data})

    async def get_key(self, request: Request, key_id: str) -> Response:
        p = self._admin(request)
        return json_response((await self._own_key(p, key_id)).public())

    async def revoke_key(self, request: Request, key_id: str) -> Response:
        p = self._admin(request)
        self._guard_operator(p, await self._own_key(p, key_id))
        record = await self.keys.revoke(key_id)
        if record is None:
            raise NotFound(f"No key found with id '{key_id}'.", param="key_id")
        await self.actions.record("key_revoked", p, tenant=record.tenant, team=record.team, subject_id=key_id)
        return json_response(record.public())

    async def rotate_key(self, request: Request, key_id: str) -> Response:
        p = self._admin(request)
        self._guard_operator(p, await self._own_key(p, key_id))
        body: KeyRotate = await _body(request, KeyRotate)
        try:
            rotated = await self.keys.rotate(key_id, body.grace_s)
        except ValueError as exc:
            raise Conflict(str(exc), code="key_not_active") from None
        if rotated is None:
            raise NotFound(f"No key found with id '{key_id}'.", param="key_id")
        clear, record = rotated
        await self.actions.record("key_rotated", p, tenant=record.tenant, team=record.team, subject_id=key_id,
                                  detail={"new_key_id": record.id, "grace_s": body.grace_s})
        return json_response({**record.public(), "key": clear})

    # ---- teams ---------------------------------------------------------------------------

    async def create_team(self, request: Request) -> Response:
        p = self._admin(request)
        body: TeamCreate = await _body(request, TeamCreate)
        tenant = self._tenant_of(p, body.tenant)
        name = _name(body.name, "name")
        settings = _settings(TeamSettings(), body.settings)
        self._check_lists(settings.allowed_models, settings.allowed_providers)
        try:
            record = await (await self.stores.teams()).create(tenant, name, settings, body.description)
        except TeamExists as exc:
            raise Conflict(str(exc), code="team_exists") from None
        await self.actions.record("team_created", p, tenant=tenant, team=name, subject_id=name,
                                  detail={"settings": msgspec.to_builtins(settings)})
        return json_response(record.public(), status=201)

    async def list_teams(self, request: Request) -> Response:
        p = self._admin(request)
        tenant = self._tenant_of(p, request.query_params.get("tenant"))
        stored = {t.name: t.public() for t in await (await self.stores.teams()).list(tenant)}
        for name in self.keys.teams(tenant) - set(stored):  # teams only named by keys have every default
            stored[name] = _implicit_team(tenant, name)
        return json_response({"object": "list", "data": [stored[n] for n in sorted(stored)]})

    async def get_team(self, request: Request, team: str) -> Response:
        p = self._admin(request)
        tenant = self._tenant_of(p, request.query_params.get("tenant"))
        record = await self._team(tenant, team) if SAFE_NAME.match(team) else None
        if record is None:
            if SAFE_NAME.match(team) and team in self.keys.teams(tenant):
                return json_response(_implicit_team(tenant, team))
            raise NotFound(f"No team '{team}'.", param="team", code="team_not_found")
        return json_response(record.public())

    async def update_team(self, request: Request, team: str) -> Response:
        p = self._admin(request)
        tenant = self._tenant_of(p, request.query_params.get("tenant"))
        body: TeamPatch = await _body(request, TeamPatch)
        candidate = _settings(TeamSettings(), body.settings)
        self._check_lists(candidate.allowed_models, candidate.allowed_providers)
        if not SAFE_NAME.match(team):
            raise NotFound(f"No team '{team}'.", param="team", code="team_not_found")
        try:
            record = await (await self.stores.teams()).update(tenant, team, body.settings, body.description,
                                                              create=team in self.keys.teams(tenant))
        except (ValueError, msgspec.ValidationError) as exc:
            raise InvalidRequest(str(exc), param="settings") from None
        if record is None:
            raise NotFound(f"No team '{team}'.", param="team", code="team_not_found")
        await self.actions.record("team_changed", p, tenant=tenant, team=team, subject_id=team, detail={
            "settings": body.settings, "description_changed": body.description is not None})
        return json_response(record.public())

    # ---- response cache ------------------------------------------------------------------

    async def purge_cache(self, request: Request, team: str) -> Response:
        """Remove every cached answer, coalescing lock and semantic index entry of the team (gone at rest)."""
        p, tenant = self.admin_in(request, request.query_params.get("tenant"))
        if not SAFE_NAME.match(team) or not await self._team_known(tenant, team):
            raise NotFound(f"No team '{team}'.", param="team", code="team_not_found")
        await (await self.stores.cache()).purge(tenant, team)
        await self.actions.record("cache_purged", p, tenant=tenant, team=team, subject_id=team)
        return json_response({"object": "cache.purge", "tenant": tenant, "team": team, "purged": True})

    # ---- budgets -------------------------------------------------------------------------

    async def get_budget(self, request: Request, team: str) -> Response:
        p = principal_of(self.keys, request)
        if p.role == "member":
            raise PermissionDenied("This endpoint needs an admin or viewer key.")
        tenant = self._tenant_of(p, request.query_params.get("tenant"))
        missing = NotFound(f"No team '{team}'.", param="team", code="team_not_found")
        if not SAFE_NAME.match(team) or (p.role == "viewer" and team != p.team):
            raise missing
        record = await self._team(tenant, team)
        if record is None and team not in self.keys.teams(tenant):
            raise missing
        eff = effective(record, self.team_defaults)
        now = time.time()
        store = await self.stores.budgets()
        scope = Scope(key=team_scope_key(tenant, team), thresholds=eff.thresholds,
                      daily=_nano(eff.daily_usd), monthly=_nano(eff.monthly_usd))
        body = {"object": "budget", "tenant": tenant, "team": team, **view(await store.counter(scope.key), scope, now)}
        rl = await self.stores.limiter()
        rate_scope = RateScope(key=team_scope_key(tenant, team), rpm=eff.rpm, tpm=eff.tpm)
        body["rate_limits"] = {"rpm": eff.rpm, "tpm": eff.tpm, "now": {
            name: msgspec.to_builtins(g) for name, g in rl.gauges(await rl.state(rate_scope.key), rate_scope).items()}}
        own = []
        for k in self.keys.list(tenant, team):
            lim = k.limits
            if lim is None or (lim.daily_usd is None and lim.monthly_usd is None):
                continue
            kscope = Scope(key=key_scope_key(k.id), thresholds=eff.thresholds,
                           daily=_nano(lim.daily_usd), monthly=_nano(lim.monthly_usd))
            own.append({"key_id": k.id, "display": f"{k.prefix}…{k.last4}",
                        **view(await store.counter(kscope.key), kscope, now)})
        body["keys"] = own
        return json_response(body)


def _nano(usd: float | None) -> int | None:
    return None if usd is None else to_nano(usd)


def _implicit_team(tenant: str, name: str) -> dict:
    """A team that only keys name: it has no record, so every setting is the default."""
    return {"object": "team", "tenant": tenant, "name": name, "settings": {}, "implicit": True}


def _settings(base: TeamSettings, patch: dict) -> TeamSettings:
    try:
        return patched(base, patch)
    except (ValueError, msgspec.ValidationError) as exc:
        text = str(exc)
        param = "settings." + text.split("at `$.", 1)[1].rstrip("`") if "at `$." in text else "settings"
        raise InvalidRequest(text.split(" - at ")[0], param=param) from None
