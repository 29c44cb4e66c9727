"""The admin API: keys, teams and budgets, as an APIRouter the gateway includes.

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

Admin keys only; a member gets 403. The one read a viewer may make is the
budget of its own team. An admin acts inside its own tenant; the configured
admin key (the operator's) may name another with ``tenant`` (body or query).
Keys and teams of another tenant answer 404, exactly as ones that do not exist.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response
from msgspec import Meta, Struct

from services.policy.budgets import BudgetStore, Scope, to_nano, view
from services.policy.handlers import effective, key_scope_key, team_scope_key
from services.policy.ratelimit import RateLimiter, RateScope
from services.policy.service import BUDGETS, RATES, TEAMS
from services.policy.teams import TeamExists, TeamSettings, TeamStore, patched
from shared.auth import SAFE_KEY_ID, SAFE_NAME, KeyEntry, KeyLimits, Principal, check_name, generate_key
from shared.errors import Conflict, InvalidRequest, NotFound, PermissionDenied

if TYPE_CHECKING:
    from services.gateway.app import Gateway


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


def _json(body: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


async def _body(request: Request, type_: type) -> Any:
    raw = await request.body()
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


def admin_routes(gw: "Gateway") -> APIRouter:
    """The admin endpoints bound to one gateway (its principal lookup, its bus and catalog)."""
    router = APIRouter(tags=["admin"])
    deps = gw.deps
    keys = deps.keyring
    catalog = deps.catalog
    policy_settings = deps.settings.policy

    async def teams() -> TeamStore:
        return TeamStore(await deps.bus.kv(TEAMS))

    async def budgets() -> BudgetStore:
        return BudgetStore(await deps.bus.kv(BUDGETS))

    async def limiter() -> RateLimiter:
        return RateLimiter(await deps.bus.kv(RATES))

    def admin(request: Request) -> Principal:
        p = gw.principal(request)
        if p.role != "admin":
            raise PermissionDenied("This endpoint needs an admin key.")
        return p

    def tenant_of(p: Principal, asked: str | None) -> str:
        if asked is None or asked == p.tenant:
            return p.tenant
        if not p.operator:
            raise PermissionDenied("Only the operator's admin key may manage another tenant.", param="tenant")
        return _name(asked, "tenant")

    async def own_key(p: Principal, key_id: str):
        record = await keys.fetch(key_id) if SAFE_KEY_ID.match(key_id) else None
        if record is None or (record.tenant != p.tenant and not p.operator):
            raise NotFound(f"No key found with id '{key_id}'.", param="key_id")
        return record

    def guard_operator(p: Principal, record) -> None:
        if record.operator and not p.operator:
            raise PermissionDenied("Only the operator's admin key may revoke or rotate an operator key.")

    async def team_known(tenant: str, team: str) -> bool:
        return await (await teams()).get(tenant, team) is not None or team in keys.teams(tenant)

    def check_lists(models: list[str] | None, providers: list[str] | None) -> None:
        for m in models or []:
            if not catalog.knows(m):
                raise InvalidRequest(f"unknown model '{m}'", param="allowed_models")
        for prov in providers or []:
            if prov not in catalog.providers:
                raise InvalidRequest(f"unknown provider '{prov}'", param="allowed_providers")

    # ---- keys ----------------------------------------------------------------------------

    @router.post("/v1/admin/keys", status_code=201, summary="Create an API key (shown once)")
    async def create_key(request: Request) -> Response:
        p = admin(request)
        body: KeyCreate = await _body(request, KeyCreate)
        tenant = tenant_of(p, body.tenant)
        team = _name(body.team, "team")
        if body.operator and not p.operator:
            raise PermissionDenied("Only the operator's admin key may create operator keys.", param="operator")
        if not await team_known(tenant, team):
            raise NotFound(f"No team '{team}' in tenant '{tenant}'; create it with POST /v1/admin/teams.",
                           param="team", code="team_not_found")
        check_lists(body.allowed_models, body.allowed_providers)
        expires = body.expires_at
        if body.expires_in_s is not None:
            expires = time.time() + body.expires_in_s
        limits = KeyLimits(**msgspec.structs.asdict(body.limits)) if body.limits else None
        clear = generate_key()
        record = await keys.create(KeyEntry(key=clear, tenant=tenant, team=team, role=body.role, name=body.name,
                                            operator=body.operator, expires_at=expires,
                                            allowed_models=body.allowed_models,
                                            allowed_providers=body.allowed_providers, limits=limits))
        return _json({**record.public(), "key": clear}, status=201)

    @router.get("/v1/admin/keys", summary="List API keys (prefix and last 4 characters only)")
    async def list_keys(request: Request) -> Response:
        p = admin(request)
        q = request.query_params
        tenant = tenant_of(p, q.get("tenant"))
        team = q.get("team")
        data = [r.public() for r in keys.list(tenant, team)]
        return _json({"object": "list", "data": data})

    @router.get("/v1/admin/keys/{key_id}", summary="One API key")
    async def get_key(request: Request, key_id: str) -> Response:
        p = admin(request)
        return _json((await own_key(p, key_id)).public())

    @router.post("/v1/admin/keys/{key_id}/revoke", summary="Revoke an API key")
    async def revoke_key(request: Request, key_id: str) -> Response:
        p = admin(request)
        guard_operator(p, await own_key(p, key_id))
        record = await keys.revoke(key_id)
        if record is None:
            raise NotFound(f"No key found with id '{key_id}'.", param="key_id")
        return _json(record.public())

    @router.post("/v1/admin/keys/{key_id}/rotate", summary="Replace an API key with a new one")
    async def rotate_key(request: Request, key_id: str) -> Response:
        p = admin(request)
        guard_operator(p, await own_key(p, key_id))
        body: KeyRotate = await _body(request, KeyRotate)
        try:
            rotated = await keys.rotate(key_id, body.grace_s)
        except ValueError as exc:
            raise Conflict(str(exc), code="key_not_active") from None
        if rotated is None:
            raise NotFound(f"No key found with id '{key_id}'.", param="key_id")
        clear, record = rotated
        return _json({**record.public(), "key": clear})

    # ---- teams ---------------------------------------------------------------------------

    @router.post("/v1/admin/teams", status_code=201, summary="Create a team with its settings")
    async def create_team(request: Request) -> Response:
        p = admin(request)
        body: TeamCreate = await _body(request, TeamCreate)
        tenant = tenant_of(p, body.tenant)
        name = _name(body.name, "name")
        settings = _settings(TeamSettings(), body.settings)
        check_lists(settings.allowed_models, settings.allowed_providers)
        try:
            record = await (await teams()).create(tenant, name, settings, body.description)
        except TeamExists as exc:
            raise Conflict(str(exc), code="team_exists") from None
        return _json(record.public(), status=201)

    @router.get("/v1/admin/teams", summary="List the tenant's teams")
    async def list_teams(request: Request) -> Response:
        p = admin(request)
        tenant = tenant_of(p, request.query_params.get("tenant"))
        stored = {t.name: t.public() for t in await (await teams()).list(tenant)}
        for name in keys.teams(tenant) - set(stored):  # teams only named by keys have every default
            stored[name] = {"object": "team", "tenant": tenant, "name": name, "settings": {}, "implicit": True}
        return _json({"object": "list", "data": [stored[n] for n in sorted(stored)]})

    @router.get("/v1/admin/teams/{team}", summary="One team")
    async def get_team(request: Request, team: str) -> Response:
        p = admin(request)
        tenant = tenant_of(p, request.query_params.get("tenant"))
        record = await (await teams()).get(tenant, team) if SAFE_NAME.match(team) else None
        if record is None:
            if SAFE_NAME.match(team) and team in keys.teams(tenant):
                return _json({"object": "team", "tenant": tenant, "name": team, "settings": {}, "implicit": True})
            raise NotFound(f"No team '{team}'.", param="team", code="team_not_found")
        return _json(record.public())

    @router.patch("/v1/admin/teams/{team}", summary="Change a team's settings")
    async def update_team(request: Request, team: str) -> Response:
        p = admin(request)
        tenant = tenant_of(p, request.query_params.get("tenant"))
        body: TeamPatch = await _body(request, TeamPatch)
        candidate = _settings(TeamSettings(), body.settings)
        check_lists(candidate.allowed_models, candidate.allowed_providers)
        if not SAFE_NAME.match(team):
            raise NotFound(f"No team '{team}'.", param="team", code="team_not_found")
        try:
            record = await (await teams()).update(tenant, team, body.settings, body.description,
                                                  create=team in keys.teams(tenant))
        except (ValueError, msgspec.ValidationError) as exc:
            raise InvalidRequest(str(exc), param="settings") from None
        if record is None:
            raise NotFound(f"No team '{team}'.", param="team", code="team_not_found")
        return _json(record.public())

    # ---- budgets -------------------------------------------------------------------------

    @router.get("/v1/budgets/{team}", summary="A team's budgets and rate limits for the current periods")
    async def get_budget(request: Request, team: str) -> Response:
        p = gw.principal(request)
        if p.role == "member":
            raise PermissionDenied("This endpoint needs an admin or viewer key.")
        tenant = tenant_of(p, request.query_params.get("tenant"))
        missing = NotFound(f"No team '{team}'.", param="team", code="team_not_found")
        if not SAFE_NAME.match(team) or (p.role == "viewer" and team != p.team):
            raise missing
        record = await (await teams()).get(tenant, team)
        if record is None and team not in keys.teams(tenant):
            raise missing
        eff = effective(record, policy_settings)
        now = time.time()
        store = await budgets()
        scope = Scope(key=team_scope_key(tenant, team), thresholds=eff.thresholds,
                      daily=None if eff.daily_usd is None else to_nano(eff.daily_usd),
                      monthly=None if eff.monthly_usd is None else to_nano(eff.monthly_usd))
        body = {"object": "budget", "tenant": tenant, "team": team, **view(await store.counter(scope.key), scope, now)}
        rl = await limiter()
        rate_scope = RateScope(key=team_scope_key(tenant, team), rpm=eff.rpm, tpm=eff.tpm)
        body["rate_limits"] = {"rpm": eff.rpm, "tpm": eff.tpm, "now": {
            name: msgspec.to_builtins(g) for name, g in rl.gauges(await rl.state(rate_scope.key), rate_scope).items()}}
        own = []
        for k in keys.list(tenant, team):
            lim = k.limits
            if lim is None or (lim.daily_usd is None and lim.monthly_usd is None):
                continue
            kscope = Scope(key=key_scope_key(k.id), thresholds=eff.thresholds,
                           daily=None if lim.daily_usd is None else to_nano(lim.daily_usd),
                           monthly=None if lim.monthly_usd is None else to_nano(lim.monthly_usd))
            own.append({"key_id": k.id, "display": f"{k.prefix}…{k.last4}",
                        **view(await store.counter(kscope.key), kscope, now)})
        body["keys"] = own
        return _json(body)

    return router


def _settings(base: TeamSettings, patch: dict) -> TeamSettings:
    try:
        return patched(base, patch)
    except (ValueError, msgspec.ValidationError) as exc:
        text = str(exc)
        param = "settings." + text.split("at `$.", 1)[1].rstrip("`") if "at `$." in text else "settings"
        raise InvalidRequest(text.split(" - at ")[0], param=param) from None
