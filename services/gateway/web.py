"""What every gateway endpoint shares at the HTTP edge: the caller's key, error responses, a request's first publish.

Errors leave in OpenAI's shape (``{"error": {message, type, param, code}}``)
with their status and a ``Retry-After`` capped at 120 s, whether a handler
answered them itself, raised them on the hot path, or FastAPI's exception
handlers caught them.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from services.ops import json_response
from shared.auth import KeyStore, Principal
from shared.bus import Bus
from shared.errors import ErrorInfo, SwitchyardError, Unauthenticated, error_info
from shared.events import Event
from shared.telemetry import Telemetry

log = logging.getLogger("switchyard.gateway")


def error_response(info: ErrorInfo, headers: dict[str, str] | None = None, body: dict | None = None) -> Response:
    """An error with its status and ``Retry-After``; the body in OpenAI's shape unless a dialect gives its own."""
    headers = {**(info.headers or {}), **(headers or {})}
    if info.retry_after is not None:
        headers["Retry-After"] = str(max(1, min(120, int(round(info.retry_after)))))
    return json_response(body if body is not None else info.body(), status=info.status, headers=headers)


def exception_response(exc: Exception) -> Response:
    """An exception that left a handler, in OpenAI's shape: ours carry their info, anything else is logged (500)."""
    if not isinstance(exc, SwitchyardError):
        log.error("unhandled error: %r", exc, exc_info=exc)
    return error_response(error_info(exc))


def bearer(request: Request) -> str | None:
    """The API key a request carries: ``Authorization: Bearer``, else ``x-api-key`` or ``api-key``."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key") or request.headers.get("api-key")


def principal_of(keyring: KeyStore, request: Request) -> Principal:
    """The caller, from its API key; 401 without a valid one."""
    p = keyring.authenticate(bearer(request))
    if p is None:
        raise Unauthenticated("Incorrect or missing API key. Pass it as 'Authorization: Bearer <key>'.")
    return p


async def publish_request(bus: Bus, telemetry: Telemetry, request: Request | None, event: Event):
    """Publish a request's first event, starting its trace (or continuing the client's ``traceparent``)."""
    incoming = request.headers.get("traceparent") if request is not None else None
    headers = {"traceparent": incoming} if incoming else ({} if telemetry.tracing else
                                                          {"traceparent": telemetry.new_traceparent()})
    with telemetry.span(f"gateway {event.ctx.api}", headers, **{"switchyard.request_id": event.request_id}):
        return await bus.publish(event)
