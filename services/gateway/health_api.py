"""Provider health API: live breaker state and observed health per deployment, and the operator's switches.

    GET  /v1/providers/status              every deployment: breaker state (and why, since when, until when,
                                           probes), window calls and failures, error rate, latency estimate
                                           (observed or prior), calls in flight; ?provider= / ?model= filter
    POST /v1/providers/breaker             {"deployment": "...", "action": "force_open" | "force_closed" | "reset"}
                                           or {"provider": "...", "action": ...} for every deployment of one
                                           provider; the operator's keys only (403 otherwise)

The data is the shared state every router and worker replica uses (JetStream
KV), read through this gateway's watched copy; a forced state applies to all
replicas at once and stays until reset. A breaker is global: it decides for
every tenant whether a deployment is called, so only an operator key may move
it. A tenant's admin, like any key, may read the status.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Literal

import msgspec
from fastapi import Request
from fastapi.responses import Response
from msgspec import Struct

from services.gateway.actions import Actions, Publish
from services.gateway.web import SMALL_BODY_BYTES, principal_of, read_body
from services.ops import json_response
from shared.auth import KeyStore
from shared.catalog import Catalog
from shared.errors import InvalidRequest, NotFound, PermissionDenied
from shared.state.health import HealthStore, deployment_index
from shared.state.stores import Stores


class BreakerAction(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/providers/breaker."""

    action: Literal["force_open", "force_closed", "reset"]
    deployment: str | None = None
    provider: str | None = None


class HealthApi:
    """The provider-health endpoints, over this gateway's watched health store (opened on first use)."""

    def __init__(self, keyring: KeyStore, catalog: Catalog, stores: Stores,
                 on_stop: list[Callable[[], Awaitable[None]]], publish: Publish | None = None) -> None:
        self.actions = Actions(publish)  # every breaker operated is published to the audit trail
        self.keys = keyring
        self.catalog = catalog
        self.stores = stores
        self.on_stop = on_stop  # the process's shutdown steps: the store, once opened, is closed with them
        self._opened: HealthStore | None = None
        self._lock = asyncio.Lock()

    async def _store(self) -> HealthStore:
        async with self._lock:
            if self._opened is None:
                health = await self.stores.open_health("gateway")
                self.on_stop.append(health.close)
                self._opened = health
        return self._opened

    async def status(self, request: Request, provider: str | None = None, model: str | None = None) -> Response:
        principal_of(self.keys, request)
        health = await self._store()
        rows = [r for r in health.status(self.catalog)
                if (provider is None or r["provider"] == provider) and (model is None or r["model"] == model)]
        return json_response({"object": "list", "data": rows})

    async def breaker(self, request: Request) -> Response:
        principal = principal_of(self.keys, request)
        if not principal.operator:
            raise PermissionDenied("only operator keys may operate circuit breakers: a breaker applies to every "
                                   "tenant")
        try:
            body = msgspec.json.decode(await read_body(request, SMALL_BODY_BYTES), type=BreakerAction)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(str(exc)) from None
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
        index = deployment_index(self.catalog)
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
        health = await self._store()
        by = f"operator:{principal.key_id}"
        for name in names:
            await health.operate(name, body.action, by=by)
            await self.actions.record("breaker", principal, tenant=principal.tenant, team=principal.team,
                                      subject_id=name, detail={"action": body.action, "by": by})
        rows = [r for r in health.status(self.catalog) if r["deployment"] in names]
        return json_response({"object": "list", "data": rows})
