"""The gateway's wiring: its endpoints in one route table, the FastAPI app and the hot-path dispatch built from it.

The endpoints themselves live by concern: ``completions`` (chat completions,
Anthropic messages, embeddings, SSE relay), ``jobs``, ``reads`` (models,
traces, ledger), ``admin`` (keys, teams, budgets, cache purge), ``prompts``
(prompt templates) and ``health_api``
(provider health and breakers). ``route_table`` is the one place that binds a
path to its handler: FastAPI registers every route from it (so ``/docs`` and
the OpenAPI schema show them all), and ``HotPaths`` answers the ones marked
``hot`` before FastAPI.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.admin import Admin
from services.gateway.completions import Completions
from services.gateway.health_api import HealthApi
from services.gateway.jobs import Jobs
from services.gateway.prompts import Prompts
from services.gateway.reads import Reads
from services.gateway.web import BearerTokens, error_response, exception_response
from services.ops import install_ops_routes, serve
from services.runtime import Deps
from shared.errors import ErrorInfo, SwitchyardError
from shared.oidc import OidcVerifier

_CHAT_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ChatRequest"}}}}}


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: what FastAPI registers, and whether ``HotPaths`` answers it first."""

    method: str
    path: str
    handler: Callable[..., Awaitable[Response]]
    summary: str
    hot: bool = False  # answered from the ASGI scope; a hot path has at most one parameter, its last segment
    status_code: int | None = None
    openapi_extra: dict[str, Any] | None = None
    tag: str | None = None


@dataclass(frozen=True)
class Endpoints:
    """The gateway's handlers, by concern, bound to one process's dependencies."""

    completions: Completions
    jobs: Jobs
    reads: Reads
    admin: Admin
    health: HealthApi
    prompts: Prompts

    @classmethod
    def build(cls, deps: Deps) -> "Endpoints":
        s, bus, tel, keys, catalog = deps.settings, deps.bus, deps.telemetry, deps.keyring, deps.catalog
        admin = Admin(keys, catalog, deps.stores, team_defaults=s.policy)
        prompts = Prompts(admin, deps.stores)
        return cls(completions=Completions(bus, tel, keys, s.gateway, gateway_id="gw" + uuid.uuid4().hex[:12],
                                           render=prompts.render),
                   jobs=Jobs(bus, tel, keys, s.gateway, render=prompts.render, stores=deps.stores),
                   reads=Reads(bus, keys, catalog),
                   admin=admin,
                   health=HealthApi(keys, catalog, deps.stores, on_stop=deps.on_stop),
                   prompts=prompts)

    async def start(self) -> None:
        await self.completions.start()
        await self.jobs.start()


def route_table(e: Endpoints) -> tuple[Route, ...]:
    """Every endpoint of the gateway, in the order FastAPI registers them."""
    c, j, r, a, p, t = e.completions, e.jobs, e.reads, e.admin, e.health, e.prompts
    return (
        Route("POST", "/v1/chat/completions", c.chat_completions, "Create a chat completion (OpenAI format)",
              hot=True, openapi_extra=_CHAT_SCHEMA),
        Route("POST", "/v1/messages", c.messages,
              "Create a message (Anthropic Messages format), routed to any provider", hot=True),
        Route("POST", "/v1/embeddings", c.embeddings, "Create embeddings (OpenAI format)", hot=True),
        Route("GET", "/v1/models", r.models, "List the models that can be called"),
        Route("POST", "/v1/jobs", j.submit_job, "Submit a chat completion as an async job", hot=True,
              status_code=202, openapi_extra=_CHAT_SCHEMA),
        Route("GET", "/v1/jobs/{job_id}", j.get_job, "Poll a job", hot=True),
        Route("POST", "/v1/jobs/{job_id}/cancel", j.cancel_job, "Cancel a job"),
        Route("GET", "/v1/requests/{request_id}", r.trace, "A request's trace: every attempt in order"),
        Route("GET", "/v1/ledger", r.ledger, "Cost ledger rows and totals"),
        Route("POST", "/v1/admin/keys", a.create_key, "Create an API key (shown once)", status_code=201,
              tag="admin"),
        Route("GET", "/v1/admin/keys", a.list_keys, "List API keys (prefix and last 4 characters only)",
              tag="admin"),
        Route("GET", "/v1/admin/keys/{key_id}", a.get_key, "One API key", tag="admin"),
        Route("POST", "/v1/admin/keys/{key_id}/revoke", a.revoke_key, "Revoke an API key", tag="admin"),
        Route("POST", "/v1/admin/keys/{key_id}/rotate", a.rotate_key, "Replace an API key with a new one",
              tag="admin"),
        Route("POST", "/v1/admin/teams", a.create_team, "Create a team with its settings", status_code=201,
              tag="admin"),
        Route("GET", "/v1/admin/teams", a.list_teams, "List the tenant's teams", tag="admin"),
        Route("GET", "/v1/admin/teams/{team}", a.get_team, "One team", tag="admin"),
        Route("PATCH", "/v1/admin/teams/{team}", a.update_team, "Change a team's settings", tag="admin"),
        Route("GET", "/v1/budgets/{team}", a.get_budget, "A team's budgets and rate limits for the current periods",
              tag="admin"),
        Route("POST", "/v1/admin/teams/{team}/cache/purge", a.purge_cache,
              "Remove a team's cached answers (response cache)", tag="admin"),
        Route("POST", "/v1/admin/prompts", t.create, "Create a prompt template (version 1, active)", status_code=201,
              tag="admin"),
        Route("GET", "/v1/admin/prompts", t.list_prompts, "List the tenant's prompt templates", tag="admin"),
        Route("GET", "/v1/admin/prompts/{prompt_id}", t.get_prompt, "A prompt template and its active version",
              tag="admin"),
        Route("POST", "/v1/admin/prompts/{prompt_id}/versions", t.add_version, "Add a version to a prompt template",
              status_code=201, tag="admin"),
        Route("GET", "/v1/admin/prompts/{prompt_id}/versions/{version}", t.get_version,
              "One version of a prompt template", tag="admin"),
        Route("POST", "/v1/admin/prompts/{prompt_id}/active", t.activate,
              "Set the version requests get when they name none", tag="admin"),
        Route("GET", "/v1/providers/status", p.status,
              "Live health per deployment: breakers, errors, latency, load", tag="providers"),
        Route("POST", "/v1/providers/breaker", p.breaker, "Force a breaker open or closed, or reset it (operator)",
              tag="providers"),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape."""

    @app.exception_handler(SwitchyardError)
    async def _sy(_: Request, exc: SwitchyardError) -> Response:
        return exception_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ErrorInfo(status=exc.status_code, type="invalid_request_error", code=code,
                                        message=str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(ErrorInfo(status=400, type="invalid_request_error", code="invalid_request",
                                        message=first.get("msg", "invalid request"), param=param))

    @app.exception_handler(Exception)
    async def _other(_: Request, exc: Exception) -> Response:
        return exception_response(exc)


def create_app(deps: Deps, routes: Iterable[Route]) -> FastAPI:
    """The FastAPI app: ops endpoints, every route of the table, OpenAI-shaped errors, the request schema."""
    app = FastAPI(title="Switchyard", version="0.1.0",
                  description="OpenAI-compatible gateway of the Switchyard LLM control plane.")
    install_error_handlers(app)
    install_ops_routes(app, deps)
    for route in routes:
        app.add_api_route(route.path, route.handler, methods=[route.method], summary=route.summary,
                          status_code=route.status_code, openapi_extra=route.openapi_extra,
                          tags=[route.tag] if route.tag else None)
    _add_schemas(app)
    return app


class HotPaths:
    """ASGI entry in front of FastAPI: the hot routes are answered straight from the ASGI scope.

    Their handlers take the raw request and return a response, so neither FastAPI's per-route machinery
    (dependency solving, response validation) nor its middleware stack (five layers, one of which looks up
    OpenTelemetry settings in the environment on every request) runs for them: that is a large share of the
    gateway's CPU per job submission. Everything else (admin, traces, ledger, /docs, /metrics) goes to the
    FastAPI app, where the same routes stay registered, so the OpenAPI schema is unchanged. Errors leave in
    the same OpenAI shape as the FastAPI exception handlers give them.
    """

    def __init__(self, app: FastAPI, routes: Iterable[Route], on_request: Callable[[], None] | None = None) -> None:
        self.app = app
        self.exact: dict[tuple[str, str], Callable[..., Awaitable[Response]]] = {}
        # (method, parent path) → handler of a route whose last segment is its one parameter
        self.by_parent: dict[tuple[str, str], Callable[..., Awaitable[Response]]] = {}
        for route in routes:
            if not route.hot:
                continue
            parent, _, last = route.path.rpartition("/")
            if "{" not in route.path:
                self.exact[(route.method, route.path)] = route.handler
            elif "{" not in parent and last.startswith("{") and last.endswith("}"):
                self.by_parent[(route.method, parent)] = route.handler
            else:
                raise ValueError(f"a hot route has at most one parameter, its last segment: {route.path}")
        self._poke = on_request or (lambda: None)

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        handler = self.exact.get((method, path))
        if handler is not None:
            answer = handler(Request(scope, receive))
        else:
            parent, _, last = path.rpartition("/")
            handler = self.by_parent.get((method, parent)) if last else None
            if handler is None:
                await self.app(scope, receive, send)
                return
            answer = handler(Request(scope, receive), last)
        self._poke()  # the request's answer comes back over the bus within the busy-poll window
        try:
            response = await answer
        except Exception as exc:  # noqa: BLE001 - the same answer the FastAPI exception handlers give
            response = exception_response(exc)
        await response(scope, receive, send)


def _add_schemas(app: FastAPI) -> None:
    """Publish the msgspec request schema in the OpenAPI document (/docs)."""
    from shared.canonical import ChatRequest

    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        (_, components) = msgspec.json.schema_components([ChatRequest], ref_template="#/components/schemas/{name}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def run(deps: Deps, arg: str | None = None) -> None:
    endpoints = Endpoints.build(deps)
    await endpoints.start()
    routes = route_table(endpoints)
    app = HotPaths(create_app(deps, routes), routes, on_request=deps.bus.poll.poke)
    if deps.settings.oidc.issuers:  # bearer JWTs of the configured issuers, beside API keys (shared/oidc.py)
        app = BearerTokens(app, deps.keyring, OidcVerifier(deps.settings.oidc))
    s = deps.settings.gateway
    deps.ready["gateway"] = True
    print(f"switchyard: gateway listening on http://{s.host}:{s.port} (docs at /docs)", flush=True)
    await serve(app, s.host, s.port, deps)
