"""What a key may read: the models it can call, a request's trace, the cost ledger.

Models come from the catalog this process loaded. Traces and the ledger are
read from audit over NATS request/reply (any audit replica answers); audit
filters by tenant, and a viewer key reads its own team only. Each attempt's
``detail`` (the scrubbed upstream error) is for an operator key only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.gateway.web import principal_of
from services.ops import json_response
from shared.auth import KeyStore
from shared.bus import Bus
from shared.catalog import Catalog
from shared.errors import InvalidRequest, NotFound, ServiceUnavailable
from shared.events import RPC_AUDIT_LEDGER, RPC_AUDIT_TRACE
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
        if q.get("limit"):
            try:
                query["limit"] = max(1, min(1000, int(q["limit"])))
            except ValueError:
                raise InvalidRequest("limit must be an integer", param="limit") from None
        body = await self._rpc(RPC_AUDIT_LEDGER, query)
        return json_response(body["ledger"])


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
