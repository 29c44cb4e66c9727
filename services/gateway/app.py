"""The gateway's wiring: its endpoints in one route table, the FastAPI app and the hot-path dispatch built from it.

The endpoints themselves live by concern: ``completions`` (chat completions,
Anthropic messages, embeddings, SSE relay), ``jobs``, ``reads`` (models,
traces, ledger), ``admin`` (keys, teams, budgets, cache purge), ``prompts``
(prompt templates), ``responses`` (the Responses API), ``files`` and ``batches``
(the Batch API) and ``health_api``
(provider health and breakers). ``route_table`` is the one place that binds a
path to its handler: FastAPI registers every route from it (so ``/docs`` and
the OpenAPI schema show them all), and ``HotPaths`` answers the ones marked
``hot`` before FastAPI. Each route also states what the OpenAPI document says
of it (request struct, success body, streaming, error statuses: ``openapi``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway import schemas as S
from services.gateway.admin import Admin, KeyCreate, KeyRotate, TeamCreate, TeamPatch
from services.gateway.anthropic_format import CountTokensRequest, MessagesRequest
from services.gateway.batches import BATCH, BATCH_LIST, BatchCreate, Batches
from services.gateway.compat import Compat
from services.gateway.completions import Completions
from services.gateway.console import install_console
from services.gateway.files import FILE, FILE_CONTENT, FILE_DELETED, FILE_LIST, UPLOAD_FORM, Files
from services.gateway.health_api import BreakerAction, HealthApi
from services.gateway.legacy_format import CompletionRequest
from services.gateway.jobs import Jobs
from services.gateway.openapi import COMPLETION_ERRORS, ERRORS, install_openapi, operation_extra
from services.gateway.prompts import ActiveIn, Prompts
from services.gateway import read_schemas as RS
from services.gateway.reads import Reads
from services.gateway.responses import Responses
from services.gateway.responses_format import INPUT_ITEM_LIST, RESPONSE, RESPONSE_DELETED, ResponsesRequest
from services.gateway.templates import TemplateIn
from services.gateway.web import BearerTokens, CurrentKeys, error_response, exception_response
from services.ops import install_ops_routes, serve
from services.runtime import Deps
from shared.bus.serving import Serving
from shared.canonical import ChatRequest, EmbeddingRequest
from shared.errors import ErrorInfo, SwitchyardError
from shared.oidc import OidcVerifier

@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: what FastAPI registers, whether ``HotPaths`` answers it first, and what the OpenAPI document
    says it takes and answers (``openapi.operation_extra``)."""

    method: str
    path: str
    handler: Callable[..., Awaitable[Response]]
    summary: str
    hot: bool = False  # answered from the ASGI scope; a hot path has at most one parameter, its last segment
    status_code: int | None = None
    openapi_extra: dict[str, Any] | None = None
    tag: str | None = None
    body: type | None = None  # the msgspec struct the handler decodes its JSON body with
    returns: dict[str, Any] | None = None  # the success body's JSON Schema (``schemas``)
    streams: bool = False  # may answer text/event-stream
    errors: tuple[int, ...] = ERRORS  # every error status it may answer
    anthropic: bool = False  # errors in Anthropic's envelope


@dataclass(frozen=True)
class Endpoints:
    """The gateway's handlers, by concern, bound to one process's dependencies."""

    completions: Completions
    jobs: Jobs
    reads: Reads
    admin: Admin
    health: HealthApi
    prompts: Prompts
    compat: Compat
    responses: Responses
    files: Files
    batches: Batches

    @classmethod
    def build(cls, deps: Deps) -> "Endpoints":
        s, bus, tel, keys, catalog = deps.settings, deps.bus, deps.telemetry, deps.keyring, deps.catalog
        admin = Admin(keys, catalog, deps.stores, team_defaults=s.policy, publish=bus.publish)
        prompts = Prompts(admin, deps.stores)
        completions = Completions(bus, tel, keys, s.gateway, gateway_id="gw" + uuid.uuid4().hex[:12],
                                  render=prompts.render)
        jobs = Jobs(bus, tel, keys, s.gateway, render=prompts.render, stores=deps.stores, catalog=catalog)
        files = Files(bus, keys, s.gateway, ttl_s=s.nats.file_ttl_s)
        cas_s = deps.stores.cas_timeout_s
        return cls(completions=completions,
                   jobs=jobs,
                   responses=Responses(bus, keys, catalog, s.gateway, completions, jobs, cas_timeout_s=cas_s),
                   files=files,
                   batches=Batches(bus, keys, s.gateway, files, jobs, cas_timeout_s=cas_s),
                   reads=Reads(bus, keys, catalog),
                   admin=admin,
                   health=HealthApi(keys, catalog, deps.stores, on_stop=deps.on_stop, publish=bus.publish),
                   prompts=prompts,
                   compat=Compat(keys, catalog, s.gateway))

    async def start(self) -> None:
        await self.completions.start()
        await self.jobs.start()
        for api in (self.responses, self.files, self.batches):
            await api.start()


def route_table(e: Endpoints) -> tuple[Route, ...]:
    """Every endpoint of the gateway, in the order FastAPI registers them."""
    c, j, r, a, p, t = e.completions, e.jobs, e.reads, e.admin, e.health, e.prompts
    x = e.compat
    return (
        Route("POST", "/v1/chat/completions", c.chat_completions, "Create a chat completion (OpenAI format)",
              hot=True, body=ChatRequest, returns=S.CHAT_COMPLETION, streams=True, errors=COMPLETION_ERRORS),
        Route("POST", "/v1/messages", c.messages,
              "Create a message (Anthropic Messages format), routed to any provider", hot=True,
              body=MessagesRequest, returns=S.MESSAGE, streams=True, errors=COMPLETION_ERRORS, anthropic=True),
        Route("POST", "/v1/messages/count_tokens", x.count_tokens,
              "Count a Messages request's input tokens (Anthropic format)", body=CountTokensRequest,
              returns=S.COUNT_TOKENS, anthropic=True),
        Route("POST", "/v1/completions", c.text_completions,
              "Create a text completion (OpenAI's legacy Completions), run as a chat completion", hot=True,
              body=CompletionRequest, returns=S.TEXT_COMPLETION, streams=True, errors=COMPLETION_ERRORS),
        Route("POST", "/v1/embeddings", c.embeddings, "Create embeddings (OpenAI format)", hot=True,
              body=EmbeddingRequest, returns=S.EMBEDDINGS, errors=COMPLETION_ERRORS),
        Route("GET", "/v1/models", r.models, "List the models that can be called", returns=S.MODEL_LIST),
        Route("GET", "/v1/models/{model_id}", x.model, "One model that can be called", returns=S.MODEL),
        Route("POST", "/v1/jobs", j.submit_job, "Submit a chat completion as an async job", hot=True,
              status_code=202, body=ChatRequest, returns=S.JOB),
        Route("GET", "/v1/jobs/{job_id}", j.get_job, "Poll a job", hot=True, returns=S.JOB),
        Route("POST", "/v1/jobs/{job_id}/cancel", j.cancel_job, "Cancel a job", returns=S.JOB,
              errors=(*ERRORS, 409)),
        Route("POST", "/v1/responses", e.responses.create,
              "Create a model response (OpenAI Responses API), routed to any provider; stored by default",
              body=ResponsesRequest, returns=RESPONSE, streams=True, errors=COMPLETION_ERRORS),
        Route("GET", "/v1/responses/{response_id}", e.responses.get,
              "A stored response (a background one brought up to date)", returns=RESPONSE),
        Route("DELETE", "/v1/responses/{response_id}", e.responses.delete, "Delete a stored response",
              returns=RESPONSE_DELETED),
        Route("POST", "/v1/responses/{response_id}/cancel", e.responses.cancel, "Cancel a background response",
              returns=RESPONSE),
        Route("GET", "/v1/responses/{response_id}/input_items", e.responses.input_items,
              "The conversation a stored response was given", returns=INPUT_ITEM_LIST),
        Route("POST", "/v1/files", e.files.upload, "Upload a batch input file (JSONL, multipart/form-data)",
              returns=FILE, openapi_extra=UPLOAD_FORM),
        Route("GET", "/v1/files", e.files.list, "List the tenant's files", returns=FILE_LIST),
        Route("GET", "/v1/files/{file_id}", e.files.get, "One file", returns=FILE),
        Route("DELETE", "/v1/files/{file_id}", e.files.delete, "Delete a file", returns=FILE_DELETED),
        Route("GET", "/v1/files/{file_id}/content", e.files.content, "A file's content (batch input or output)",
              openapi_extra=FILE_CONTENT),
        Route("POST", "/v1/batches", e.batches.create, "Create a batch: each line of its input file runs as a job",
              body=BatchCreate, returns=BATCH),
        Route("GET", "/v1/batches", e.batches.list, "List the tenant's batches, newest first", returns=BATCH_LIST),
        Route("GET", "/v1/batches/{batch_id}", e.batches.get, "One batch, its progress brought up to date",
              returns=BATCH),
        Route("POST", "/v1/batches/{batch_id}/cancel", e.batches.cancel, "Cancel a batch", returns=BATCH,
              errors=(*ERRORS, 409)),
        Route("GET", "/v1/requests/{request_id}", r.trace, "A request's trace: every attempt in order",
              returns=S.TRACE),
        Route("GET", "/v1/ledger", r.ledger, "Cost ledger rows and totals", returns=S.LEDGER),
        Route("GET", "/v1/requests", r.requests, "Recent requests, newest first, filtered, paginated by cursor",
              returns=RS.schema_of(RS.RequestList), openapi_extra=RS.query(RS.REQUESTS_PARAMS)),
        Route("GET", "/v1/stats", r.stats, "Counts, success rate, latency/TTFT percentiles, tokens, cost, savings",
              returns=RS.schema_of(RS.StatsBody), openapi_extra=RS.query(RS.STATS_PARAMS)),
        Route("GET", "/v1/audit/events", r.audit_events, "The audit trail (JSON, or NDJSON when asked)",
              returns=RS.schema_of(RS.AuditEventList), openapi_extra=RS.query(RS.EVENTS_PARAMS, ndjson=True)),
        Route("GET", "/v1/me", r.me, "Who the caller's key is: tenant, team, role", returns=RS.schema_of(RS.Me)),
        Route("POST", "/v1/admin/keys", a.create_key, "Create an API key (shown once)", status_code=201,
              tag="admin", body=KeyCreate, returns=S.NEW_KEY, errors=(*ERRORS, 409)),
        Route("GET", "/v1/admin/keys", a.list_keys, "List API keys (prefix and last 4 characters only)",
              tag="admin", returns=S.KEY_LIST),
        Route("GET", "/v1/admin/keys/{key_id}", a.get_key, "One API key", tag="admin", returns=S.KEY),
        Route("POST", "/v1/admin/keys/{key_id}/revoke", a.revoke_key, "Revoke an API key", tag="admin",
              returns=S.KEY, errors=(*ERRORS, 409)),
        Route("POST", "/v1/admin/keys/{key_id}/rotate", a.rotate_key, "Replace an API key with a new one",
              tag="admin", body=KeyRotate, returns=S.NEW_KEY, errors=(*ERRORS, 409)),
        Route("POST", "/v1/admin/teams", a.create_team, "Create a team with its settings", status_code=201,
              tag="admin", body=TeamCreate, returns=S.TEAM, errors=(*ERRORS, 409)),
        Route("GET", "/v1/admin/teams", a.list_teams, "List the tenant's teams", tag="admin", returns=S.TEAM_LIST),
        Route("GET", "/v1/admin/teams/{team}", a.get_team, "One team", tag="admin", returns=S.TEAM),
        Route("PATCH", "/v1/admin/teams/{team}", a.update_team, "Change a team's settings", tag="admin",
              body=TeamPatch, returns=S.TEAM, errors=(*ERRORS, 409)),
        Route("GET", "/v1/budgets/{team}", a.get_budget, "A team's budgets and rate limits for the current periods",
              tag="admin", returns=S.BUDGET),
        Route("POST", "/v1/admin/teams/{team}/cache/purge", a.purge_cache,
              "Remove a team's cached answers (response cache)", tag="admin", returns=S.PURGE),
        Route("POST", "/v1/admin/prompts", t.create, "Create a prompt template (version 1, active)", status_code=201,
              tag="admin", body=TemplateIn, returns=S.PROMPT, errors=(*ERRORS, 409)),
        Route("GET", "/v1/admin/prompts", t.list_prompts, "List the tenant's prompt templates", tag="admin",
              returns=S.PROMPT_LIST),
        Route("GET", "/v1/admin/prompts/{prompt_id}", t.get_prompt, "A prompt template and its active version",
              tag="admin", returns=S.PROMPT),
        Route("POST", "/v1/admin/prompts/{prompt_id}/versions", t.add_version, "Add a version to a prompt template",
              status_code=201, tag="admin", body=TemplateIn, returns=S.PROMPT, errors=(*ERRORS, 409)),
        Route("GET", "/v1/admin/prompts/{prompt_id}/versions/{version}", t.get_version,
              "One version of a prompt template", tag="admin", returns=S.PROMPT_VERSION),
        Route("POST", "/v1/admin/prompts/{prompt_id}/active", t.activate,
              "Set the version requests get when they name none", tag="admin", body=ActiveIn, returns=S.PROMPT,
              errors=(*ERRORS, 409)),
        Route("GET", "/v1/providers/status", p.status,
              "Live health per deployment: breakers, errors, latency, load", tag="providers",
              returns=S.PROVIDER_STATUS),
        Route("POST", "/v1/providers/breaker", p.breaker, "Force a breaker open or closed, or reset it (operator)",
              tag="providers", body=BreakerAction, returns=S.BREAKER),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape."""

    @app.exception_handler(SwitchyardError)
    async def _sy(_: Request, exc: SwitchyardError) -> Response:
        return exception_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method the path has (Starlette names only the first route's)
            headers["Allow"] = allowed_methods(request.app, request.url.path)
        return error_response(ErrorInfo(status=exc.status_code, type="invalid_request_error", code=code,
                                        message=str(exc.detail)), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(ErrorInfo(status=400, type="invalid_request_error", code="invalid_request",
                                        message=first.get("msg", "invalid request"), param=param))

    @app.exception_handler(Exception)
    async def _other(_: Request, exc: Exception) -> Response:
        return exception_response(exc)


def allowed_methods(app: FastAPI, path: str) -> str:
    """The methods some route of ``app`` answers on ``path`` (the ``Allow`` header of a 405)."""
    methods = {m for r in app.router.routes if getattr(r, "methods", None) and r.path_regex.match(path)
               for m in r.methods}
    return ", ".join(sorted(methods))


def create_app(deps: Deps, routes: Iterable[Route]) -> FastAPI:
    """The FastAPI app: ops endpoints, every route of the table, OpenAI-shaped errors, the request schema."""
    app = FastAPI(title="Switchyard", version="0.1.0",
                  description="OpenAI-compatible gateway of the Switchyard LLM control plane.",
                  docs_url=None, redoc_url=None)  # /docs is served offline by install_console
    routes = tuple(routes)
    install_error_handlers(app)
    install_ops_routes(app, deps)
    for route in routes:
        app.add_api_route(route.path, route.handler, methods=[route.method], summary=route.summary,
                          status_code=route.status_code, openapi_extra=operation_extra(route),
                          tags=[route.tag] if route.tag else None)
    install_openapi(app, routes)
    install_console(app)  # /ui/ (the console), /docs from vendored assets
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

    def __init__(self, app: FastAPI, routes: Iterable[Route], on_request: Callable[[], None] | None = None,
                 serving: Serving | None = None) -> None:
        """``serving``: counts the hot requests being answered, for a batch lane in this process that yields to
        them (``shared/bus/serving.py``)."""
        self.app = app
        self.serving = serving or Serving()
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
        self.serving.started()
        try:
            try:
                response = await answer
            except Exception as exc:  # noqa: BLE001 - the same answer the FastAPI exception handlers give
                response = exception_response(exc)
            await response(scope, receive, send)
        finally:
            self.serving.finished()


async def run(deps: Deps, arg: str | None = None) -> None:
    endpoints = Endpoints.build(deps)
    await endpoints.start()
    routes = route_table(endpoints)
    app = HotPaths(create_app(deps, routes), routes, on_request=deps.bus.poll.poke, serving=deps.bus.serving)
    if deps.settings.oidc.issuers:  # bearer JWTs of the configured issuers, beside API keys (shared/oidc.py)
        app = BearerTokens(app, deps.keyring, OidcVerifier(deps.settings.oidc))
    app = CurrentKeys(app, deps.keyring)  # keys read from KV while the watched index is not current
    s = deps.settings.gateway
    deps.ready["gateway"] = True
    print(f"switchyard: gateway listening on http://{s.host}:{s.port} (docs at /docs)", flush=True)
    await serve(app, s.host, s.port, deps)
