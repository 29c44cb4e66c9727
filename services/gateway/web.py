"""What every gateway endpoint shares at the HTTP edge: the caller's key (or OIDC token), its body, error
responses, a request's first publish.

Errors leave in OpenAI's shape (``{"error": {message, type, param, code}}``)
with their status and a ``Retry-After`` capped at 120 s, whether a handler
answered them itself, raised them on the hot path, or FastAPI's exception
handlers caught them.

Every endpoint that takes a body reads it with ``read_body``: a declared
``Content-Length`` over the limit is refused (413) before a byte of the body
is read, and a chunked body is read only up to the limit; either way the
connection is closed after the 413, so the rest is never received. (How long
a client may take to send its head and body is the HTTP server's business:
``services/http_limits.py``.)
"""

from __future__ import annotations

import logging
from typing import ContextManager

from opentelemetry.trace import Span
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from services.ops import json_response
from shared.auth import KeyStore, Principal
from shared.oidc import TokenVerifier, looks_like_jwt
from shared.bus import Bus
from shared.errors import (
    BodyTooLarge,
    ErrorInfo,
    InvalidRequest,
    PermissionDenied,
    SwitchyardError,
    Unauthenticated,
    error_info,
)
from shared import genai
from shared.events import CompletionRequested, Event
from shared.telemetry import Telemetry

log = logging.getLogger("switchyard.gateway")

SMALL_BODY_BYTES = 1024 * 1024  # the limit of the admin and breaker endpoints' bodies: small JSON documents


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


TOKEN_IDENTITY = "switchyard.token_identity"  # ASGI scope key: what ``BearerTokens`` made of a bearer JWT


def principal_of(keyring: KeyStore, request: Request) -> Principal:
    """The caller, from its API key, else from the OIDC token ``BearerTokens`` verified; 401 without either."""
    p = keyring.authenticate(bearer(request))
    if p is not None:
        return p
    token = request.scope.get(TOKEN_IDENTITY)
    if isinstance(token, Principal):
        return token
    if isinstance(token, SwitchyardError):
        raise token  # a JWT that failed verification: the 401 (or 503) says why
    raise unauthenticated(bearer(request))


def unauthenticated(key: str | None) -> Unauthenticated:
    """The 401 for a missing or unknown key, in OpenAI's words: clients (LiteLLM) classify the error by them."""
    if not key:
        return Unauthenticated("You didn't provide an API key. You need to provide your API key in an Authorization "
                               "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an x-api-key "
                               "header.")
    # Like OpenAI: the start and the last four characters, enough to tell which key was sent, never the key.
    shown = f"{key[:3]}...{key[-4:]}" if len(key) > 12 else "***"
    return Unauthenticated(f"Incorrect API key provided: {shown}. You can find your API key at "
                           f"https://platform.openai.com/account/api-keys.")


class BearerTokens:
    """ASGI entry in front of the gateway when OIDC issuers are configured: a bearer that is no API key but a JWT
    is verified here, once, before any endpoint runs (verification may fetch the issuer's keys, so it is
    asynchronous; endpoints then resolve the caller synchronously with ``principal_of``, API key first)."""

    def __init__(self, app, keyring: KeyStore, verifier: TokenVerifier) -> None:
        self.app = app
        self.keyring = keyring
        self.verifier = verifier

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "http":
            token = bearer(Request(scope))
            if looks_like_jwt(token) and self.keyring.authenticate(token) is None:
                try:
                    scope[TOKEN_IDENTITY] = await self.verifier.verify(token)
                except SwitchyardError as exc:
                    scope[TOKEN_IDENTITY] = exc
        await self.app(scope, receive, send)


class CurrentKeys:
    """ASGI entry in front of the gateway: while the key index is not current (its watch restarting after a
    lost connection), the caller's key is read from KV before any endpoint authenticates it synchronously, so
    a key revoked or created meanwhile is judged as stored; KV unreachable: 503 (fail closed). While the index
    is current this is one attribute check."""

    def __init__(self, app, keyring: KeyStore) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "http" and not self.keyring.current:
            try:
                await self.keyring.refresh(bearer(Request(scope)))
            except SwitchyardError as exc:
                await exception_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def sees(principal: Principal, team: str) -> bool:
    """Whether ``principal`` may read a record of ``team`` in its own tenant: a viewer key reads its own team's only."""
    return principal.role != "viewer" or team == principal.team


def changes(principal: Principal, team: str) -> bool:
    """Whether ``principal`` may cancel or delete a record of ``team``: a member its own team's, an admin any."""
    return principal.role not in ("viewer", "member") or (principal.role == "member" and team == principal.team)


def refuse_viewer(principal: Principal) -> Principal:
    """The principal, unless it holds a read-only viewer key: those create nothing (403 at once)."""
    if principal.role == "viewer":
        raise PermissionDenied("Viewer keys are read-only: they cannot create completions.")
    return principal


def request_trace(telemetry: Telemetry, request: Request | None, event: CompletionRequested) -> ContextManager[Span]:
    """The request's trace at the gateway: a server span (continuing the client's ``traceparent``) around its
    publish and, for a synchronous call, the wait for its answer; GenAI attributes, never its messages."""
    incoming = request.headers.get("traceparent") if request is not None else None
    route = request.url.path if request is not None else ""
    if not telemetry.tracing:  # only the traceparent is carried (and the request id, for JSON log lines)
        return telemetry.request_span("", incoming, **{"switchyard.request_id": event.request_id})
    return telemetry.request_span(genai.request_span_name(event), incoming, **genai.request_attributes(event, route))


async def publish_request(bus: Bus, telemetry: Telemetry, request: Request | None, event: Event):
    """Publish a request's first event inside its trace: the caller's ``request_trace``, or one opened here.

    New work: refused (503, not accepted) while the stream is too full to take it (``Bus.publish_new``)."""
    if telemetry.in_trace() or not isinstance(event, CompletionRequested):
        return await bus.publish_new(event)
    with request_trace(telemetry, request, event):
        return await bus.publish_new(event)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, never buffering more than ``max_bytes`` of it (413 ``BodyTooLarge`` beyond)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest("Content-Length must be a number of bytes") from None
        if size > max_bytes:
            raise BodyTooLarge(f"request body is {size} bytes; the limit is {max_bytes}")
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise BodyTooLarge(f"request body is larger than the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidRequest("the client disconnected before sending the whole body") from None
    return b"".join(chunks)
