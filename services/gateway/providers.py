"""Provider health API: live breaker state and observed health per deployment, and the operator's switches.

    GET  /v1/providers/status              every deployment: breaker state (and why, since when, until when,
                                           probes), window calls and failures, error rate, latency estimate
                                           (observed or prior), calls in flight; ?provider= / ?model= filter
    POST /v1/providers/breaker             {"deployment": "...", "action": "force_open" | "force_closed" | "reset"}
                                           or {"provider": "...", "action": ...} for every deployment of one
                                           provider; admin keys only (403 otherwise)

The data is the shared state every router and worker replica uses (JetStream
KV), read through this gateway's watched copy; a forced state applies to all
replicas at once and stays until reset.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response
from msgspec import Struct

from services.router.health import HealthStore, deployment_index
from shared.errors import InvalidRequest, NotFound, PermissionDenied

if TYPE_CHECKING:
    from services.gateway.app import Gateway


class BreakerAction(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/providers/breaker."""

    action: Literal["force_open", "force_closed", "reset"]
    deployment: str | None = None
    provider: str | None = None


def _json(body: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


def provider_routes(gw: "Gateway") -> APIRouter:
    """The provider-health endpoints bound to one gateway (its principal lookup, bus and catalog)."""
    router = APIRouter(tags=["providers"])
    deps = gw.deps
    catalog = deps.catalog
    opened: list[HealthStore] = []
    lock = asyncio.Lock()

    async def store() -> HealthStore:
        async with lock:
            if not opened:
                health = await HealthStore.open(deps.bus, role="gateway", settings=deps.settings.router,
                                                catalog=catalog, metrics=deps.telemetry.metrics)
                deps.on_stop.append(health.close)
                opened.append(health)
        return opened[0]

    @router.get("/v1/providers/status", summary="Live health per deployment: breakers, errors, latency, load")
    async def status(request: Request, provider: str | None = None, model: str | None = None) -> Response:
        gw.principal(request)
        health = await store()
        rows = [r for r in health.status(catalog)
                if (provider is None or r["provider"] == provider) and (model is None or r["model"] == model)]
        return _json({"object": "list", "data": rows})

    @router.post("/v1/providers/breaker", summary="Force a breaker open or closed, or reset it (admin)")
    async def breaker(request: Request) -> Response:
        principal = gw.principal(request)
        if principal.role != "admin":
            raise PermissionDenied("only admin keys may operate circuit breakers")
        try:
            body = msgspec.json.decode(await request.body(), type=BreakerAction)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(str(exc)) from None
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
        index = deployment_index(catalog)
        if (body.deployment is None) == (body.provider is None):
            raise InvalidRequest("name exactly one of deployment or provider", param="deployment")
        if body.deployment is not None:
            if body.deployment not in index:
                raise NotFound(f"No deployment '{body.deployment}' in the catalog.", param="deployment")
            names = [body.deployment]
        else:
            names = sorted(d for d, (p, _) in index.items() if p == body.provider)
            if not names:
                raise NotFound(f"No provider '{body.provider}' in the catalog.", param="provider")
        health = await store()
        by = f"operator:{principal.key_id}"
        for name in names:
            await health.operate(name, body.action, by=by)
        rows = [r for r in health.status(catalog) if r["deployment"] in names]
        return _json({"object": "list", "data": rows})

    return router
