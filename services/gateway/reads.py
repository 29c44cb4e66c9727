"""What a key may read: the models it can call, who it is, a request's trace, the cost ledger, the request list,
statistics and the audit trail.

Models come from the catalog this process loaded. Everything else is read
from audit over NATS request/reply (any audit replica answers); audit filters
by tenant, and a viewer key reads its own team only (its team filter is
forced). Each attempt's ``detail`` (the scrubbed upstream error) is for an
operator key only. Query parameters are checked here, each bad one a 400
naming it; ``since``/``until`` take epoch seconds or ISO 8601, ``limit``
1..1000.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.gateway.read_schemas import Me

from services.gateway.web import principal_of
from services.ops import json_response
from shared.auth import KeyStore, Principal
from shared.bus import Bus
from shared.catalog import Catalog
from shared.errors import InvalidRequest, NotFound, ServiceUnavailable
from shared.events import (
    ADMIN_ACTION_KINDS,
    RPC_AUDIT_EVENTS,
    RPC_AUDIT_LEDGER,
    RPC_AUDIT_REQUESTS,
    RPC_AUDIT_STATS,
    RPC_AUDIT_TRACE,
)
from shared.ids import SAFE_REQUEST_ID
from shared.openai_format import model_list


class Reads:
    """The read endpoints: models from the catalog, traces and ledger from audit."""

    def __init__(self, bus: Bus, keyring: KeyStore, catalog: Catalog) -> None:
        self.bus = bus
        self.keyring = keyring
        self.catalog = catalog
        self._owner = {m.name: m.deployments[0].provider for m in catalog.models.values()}

    async def models(self, request: Request) -> Response:
        principal_of(self.keyring, request)
        return json_response(model_list(self.catalog.available_models(), self._owner))

    async def _rpc(self, subject: str, query: dict) -> dict:
        try:
            reply = await self.bus.nc.request(subject, msgspec.json.encode(query), timeout=10)
        except Exception as exc:  # noqa: BLE001 - no audit replica answered
            raise ServiceUnavailable("the audit service did not answer; try again shortly") from exc
        body = msgspec.json.decode(reply.data)
        if "invalid" in body:
            raise InvalidRequest(body["invalid"]["message"], param=body["invalid"].get("param"))
        if "error" in body:
            raise ServiceUnavailable(body["error"])
        return body

    async def trace(self, request: Request, request_id: str) -> Response:
        principal = principal_of(self.keyring, request)
        if not SAFE_REQUEST_ID.match(request_id):
            raise NotFound(f"No request found with id '{request_id}'.", param="request_id")
        query: dict[str, Any] = {"request_id": request_id, "tenant": principal.tenant}
        if principal.operator:  # asked for only then: attempts' operator-only detail
            query["operator"] = True
        body = await self._rpc(RPC_AUDIT_TRACE, query)
        trace = body.get("trace")
        if trace is None or (principal.role == "viewer" and trace.get("team") != principal.team):
            raise NotFound(f"No request found with id '{request_id}'.", param="request_id")
        if not principal.operator:  # whatever audit answered, a tenant's key never sees the detail
            for attempt in trace.get("attempts") or ():
                attempt.pop("detail", None)
        return json_response(trace)

    async def ledger(self, request: Request) -> Response:
        principal = principal_of(self.keyring, request)
        q = request.query_params
        query: dict[str, Any] = {"tenant": principal.tenant}
        for name in ("team", "model", "provider"):
            if q.get(name):
                query[name] = q[name]
        if principal.role == "viewer":
            query["team"] = principal.team  # a viewer reads its own team only
        for name in ("since", "until"):
            if q.get(name):
                query[name] = _timestamp(q[name], name)
        if "limit" in q:
            query["limit"] = _limit(q["limit"])
        body = await self._rpc(RPC_AUDIT_LEDGER, query)
        return json_response(body["ledger"])

    async def me(self, request: Request) -> Response:
        """Who the caller's key (or token) is: what the console decides its pages by."""
        p = principal_of(self.keyring, request)
        return json_response(Me(tenant=p.tenant, team=p.team, role=p.role, key_id=p.key_id, operator=p.operator))

    async def requests(self, request: Request) -> Response:
        """GET /v1/requests: the tenant's requests, newest first, filtered, one page."""
        principal = principal_of(self.keyring, request)
        q = request.query_params
        _known(q, _REQUEST_PARAMS)
        query = _scoped(principal, q, ("team", "key_id", "model", "provider"))
        if "outcome" in q:
            if q["outcome"] not in OUTCOMES:
                raise InvalidRequest(f"outcome must be one of {', '.join(OUTCOMES)}", param="outcome")
            query["outcome"] = q["outcome"]
        for name in ("degraded", "pii", "job"):
            if name in q:
                query[name] = _flag(q[name], name)
        _range(q, query)
        query["limit"] = _limit(q["limit"]) if "limit" in q else 50
        if q.get("cursor"):
            query["cursor"] = q["cursor"]
        return json_response(await self._rpc(RPC_AUDIT_REQUESTS, query))

    async def stats(self, request: Request) -> Response:
        """GET /v1/stats: figures over a window, totals and per group, optionally as a time series."""
        principal = principal_of(self.keyring, request)
        q = request.query_params
        _known(q, _STATS_PARAMS)
        query = _scoped(principal, q, ("team", "key_id", "model", "provider"))
        window = q.get("window") or "1h"
        span = _duration(window, "window")
        if span > MAX_WINDOW_S:
            raise InvalidRequest("window must be at most 31d", param="window")
        now = time.time()
        query.update(window=window, since=now - span, until=now, day_start=now - now % 86400)
        if "group_by" in q:
            if q["group_by"] not in GROUP_BY:
                raise InvalidRequest(f"group_by must be one of {', '.join(GROUP_BY)}", param="group_by")
            query["group_by"] = q["group_by"]
        if "interval" in q:
            step = _duration(q["interval"], "interval")
            if span / step > MAX_POINTS:
                raise InvalidRequest(f"interval gives more than {MAX_POINTS} points over the window; make it longer",
                                     param="interval")
            query["interval_s"] = step
        return json_response(await self._rpc(RPC_AUDIT_STATS, query))

    async def audit_events(self, request: Request) -> Response:
        """GET /v1/audit/events: the audit trail, newest first; NDJSON with ``Accept: application/x-ndjson``."""
        principal = principal_of(self.keyring, request)
        q = request.query_params
        _known(q, _EVENT_PARAMS)
        query = _scoped(principal, q, ("team", "key_id", "request_id"))
        if q.get("type"):
            types = [t.strip() for t in q["type"].split(",") if t.strip()]
            unknown = sorted(set(types) - EVENT_TYPES)
            if unknown:
                raise InvalidRequest(f"unknown event type {', '.join(unknown)}; known: {', '.join(sorted(EVENT_TYPES))}",
                                     param="type")
            query["types"] = types
        _range(q, query)
        query["limit"] = _limit(q["limit"]) if "limit" in q else 100
        if q.get("cursor"):
            query["cursor"] = q["cursor"]
        body = await self._rpc(RPC_AUDIT_EVENTS, query)
        if "application/x-ndjson" in request.headers.get("accept", ""):
            lines = b"".join(msgspec.json.encode(e) + b"\n" for e in body["data"])
            headers = {"x-next-cursor": body["next_cursor"]} if body.get("next_cursor") else None
            return Response(lines, media_type="application/x-ndjson", headers=headers)
        return json_response(body)


OUTCOMES = ("succeeded", "failed", "denied", "cancelled", "expired", "in_progress")
GROUP_BY = ("model", "provider", "team", "outcome")
EVENT_TYPES = frozenset({"admitted", "denied", "completed", "cancel_requested", "budget_reserved", "budget_settled",
                         "budget_released", "budget_alert", *ADMIN_ACTION_KINDS})
MAX_WINDOW_S = 31 * 86400
MAX_POINTS = 1000
_FILTERS = ("team", "key_id", "model", "provider")
_REQUEST_PARAMS = frozenset({*_FILTERS, "outcome", "degraded", "pii", "job", "since", "until", "limit", "cursor"})
_STATS_PARAMS = frozenset({*_FILTERS, "window", "group_by", "interval"})
_EVENT_PARAMS = frozenset({"type", "team", "key_id", "request_id", "since", "until", "limit", "cursor"})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _known(q: Any, allowed: frozenset[str]) -> None:
    """Every query parameter is one the endpoint knows: a misspelt filter is a 400, never silently ignored."""
    for name in q.keys():
        if name not in allowed:
            raise InvalidRequest(f"unknown query parameter '{name}'; known: {', '.join(sorted(allowed))}", param=name)


def _scoped(principal: Principal, q: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The query's filters under the caller's tenant; a viewer's team is its own whatever it asked."""
    query: dict[str, Any] = {"tenant": principal.tenant}
    for name in names:
        if q.get(name):
            query[name] = q[name]
    if principal.role == "viewer":
        query["team"] = principal.team
    return query


def _range(q: Any, query: dict[str, Any]) -> None:
    for name in ("since", "until"):
        if q.get(name):
            query[name] = _timestamp(q[name], name)


def _limit(value: str) -> int:
    """``limit``: an integer from 1 to 1000 (anything else is a 400, not a silent clamp)."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 1000:
        raise InvalidRequest(f"limit must be an integer from 1 to 1000, got '{value}'", param="limit")
    return n


def _flag(value: str, name: str) -> bool:
    v = value.lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise InvalidRequest(f"{name} must be true or false", param=name)


def _duration(value: str, name: str) -> float:
    """``15m``, ``1h``, ``7d``, ``30s`` → seconds (more than 0)."""
    m = _DURATION.match(value.strip())
    if m is None or float(m.group(1)) <= 0:
        raise InvalidRequest(f"{name} must be a duration such as 15m, 1h, 24h or 7d", param=name)
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _timestamp(value: str, name: str) -> float:
    """Epoch seconds or ISO 8601."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{name} must be epoch seconds or ISO 8601", param=name) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
