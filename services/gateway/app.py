"""The gateway: OpenAI-compatible HTTP API in front of the bus (the only module that knows routes and subjects).

A synchronous call publishes ``CompletionRequested`` (durable once PubAck'd)
and waits for its own terminal event, delivered over core NATS on
``sy.evt.done.<gateway id>``; at its deadline it answers 504 while the request
still finishes and is recorded. Async jobs live in JetStream KV so any
replica answers a poll. Traces and the ledger are read from audit over NATS
request/reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.ops import install_ops_routes, json_response as _json, serve
from services.runtime import Deps
from services.gateway import handlers as h
from services.gateway.admin import admin_routes
from services.gateway.providers import provider_routes
from services.gateway.dialects import ANTHROPIC, EMBEDDINGS, OPENAI, Dialect, StreamEncoder
from shared.auth import Principal
from shared.errors import (
    Conflict,
    DeadlineExceeded,
    ErrorInfo,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    SwitchyardError,
    Unauthenticated,
    error_info,
)
from shared.events import (
    JOB_ORIGIN,
    Event,
    ChunkMessage,
    CompletionRequested,
    cancel_subject,
    chunk_decoder,
    chunk_subject,
    TERMINAL_JOB_STATUSES,
    CompletionCancelled,
    CompletionSucceeded,
    JobRecord,
    RequestContext,
    TerminalEvent,
    done_subject,
    terminal_id,
)
from shared.jobs import JOBS, advance_job, create_job, get_job
from shared.openai_format import model_list

log = logging.getLogger("switchyard.gateway")
RPC_TRACE = "sy.rpc.audit.trace"
RPC_LEDGER = "sy.rpc.audit.ledger"
_terminal_decoder = msgspec.json.Decoder(TerminalEvent)


class Waiters:
    """Futures of the synchronous requests this gateway instance is answering, keyed by request id."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future] = {}

    def add(self, request_id: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._futures[request_id] = fut
        return fut

    def discard(self, request_id: str) -> None:
        self._futures.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._futures)

    def resolve(self, event: TerminalEvent) -> None:
        fut = self._futures.get(event.request_id)
        if fut is not None and not fut.done():
            fut.set_result(event)


class Timeout:
    """Marker: the request's deadline passed while waiting for its stream."""


class ChunkInbox:
    """Chunks of one streamed request and its terminal event, in arrival order."""

    def __init__(self, terminal: asyncio.Future) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        terminal.add_done_callback(lambda f: self.queue.put_nowait(f.result()))

    def on_chunk(self, msg) -> None:
        self.queue.put_nowait(chunk_decoder.decode(msg.data))

    async def next(self, timeout: float) -> object:
        if not self.queue.empty():
            return self.queue.get_nowait()
        try:
            async with asyncio.timeout(max(0.001, timeout)):  # no task per chunk, as wait_for would start
                return await self.queue.get()
        except TimeoutError:
            return Timeout()

    async def drain(self, expected: int, grace_s: float = 1.0) -> list[ChunkMessage]:
        """Chunks that may still be in flight behind the terminal event (NATS keeps order, a cluster may not)."""
        out: list[ChunkMessage] = []
        while len(out) < expected:
            item = await self.next(grace_s if not out else 0.2)
            if not isinstance(item, ChunkMessage):
                break
            out.append(item)
        return out


def error_response(info: ErrorInfo, headers: dict[str, str] | None = None, body: dict | None = None) -> Response:
    """An error with its status and ``Retry-After``; the body in OpenAI's shape unless a dialect gives its own."""
    headers = {**(info.headers or {}), **(headers or {})}
    if info.retry_after is not None:
        headers["Retry-After"] = str(max(1, min(120, int(round(info.retry_after)))))
    return _json(body if body is not None else info.body(), status=info.status, headers=headers)


def exception_response(exc: Exception) -> Response:
    """An exception that left a handler, in OpenAI's shape: ours carry their info, anything else is logged (500)."""
    if not isinstance(exc, SwitchyardError):
        log.error("unhandled error: %r", exc, exc_info=exc)
    return error_response(error_info(exc))


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key") or request.headers.get("api-key")


class Gateway:
    """Route handlers bound to one process's dependencies."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.settings = deps.settings.gateway
        self.id = "gw" + uuid.uuid4().hex[:12]
        self.waiters = Waiters()
        self.streams: dict[str, ChunkInbox] = {}  # request id → the inbox of a stream this instance relays
        self.metrics = deps.telemetry.metrics
        self._jobs_kv = None
        self._owner = {m.name: m.deployments[0].provider for m in deps.catalog.models.values()}

    async def start(self) -> None:
        bus = self.deps.bus
        await bus.subscribe(done_subject(self.id), self._on_done)
        # One subscription for the chunks of every stream this instance relays (not one per request).
        await bus.subscribe(chunk_subject(self.id, "*"), self._on_chunk)
        self._jobs_kv = await self.deps.bus.kv(JOBS)

    def _on_chunk(self, msg) -> None:
        inbox = self.streams.get(msg.subject.rpartition(".")[2])
        if inbox is not None:
            inbox.on_chunk(msg)

    def _on_done(self, msg) -> None:
        try:
            self.waiters.resolve(_terminal_decoder.decode(msg.data))
        except msgspec.DecodeError as exc:
            log.error("undecodable terminal event: %s", exc)

    def principal(self, request: Request) -> Principal:
        p = self.deps.keyring.authenticate(bearer(request))
        if p is None:
            raise Unauthenticated("Incorrect or missing API key. Pass it as 'Authorization: Bearer <key>'.")
        return p

    # ---- chat completions -----------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self.complete(request, OPENAI)

    async def messages(self, request: Request) -> Response:
        return await self.complete(request, ANTHROPIC)

    async def embeddings(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            principal = self.principal(request)
            emb = h.parse_embedding_request(await request.body(), self.settings.max_body_bytes)
            timeout = h.timeout_for(request.headers.get("x-switchyard-timeout"), self.settings.default_timeout_s,
                                    self.settings.max_timeout_s)
            self._check_capacity()
            event = h.completion_requested(h.embedding_prompt(emb), principal, request.headers,
                                           request_id=h.new_request_id(),
                                           origin=self.id, timeout_s=timeout, job=False, api=EMBEDDINGS.api,
                                           embedding=emb)
            return await self._sync(request, EMBEDDINGS, event, started)
        except SwitchyardError as exc:
            return self._error(EMBEDDINGS, exc.info(), None)

    async def complete(self, request: Request, dialect: Dialect) -> Response:
        """One completion in ``dialect``'s wire format: wait for its terminal event, or relay its stream."""
        started = time.perf_counter()
        try:
            principal = self.principal(request)
            chat = dialect.parse(await request.body(), self.settings.max_body_bytes)
            timeout = h.timeout_for(request.headers.get("x-switchyard-timeout"), self.settings.default_timeout_s,
                                    self.settings.max_timeout_s)
            self._check_capacity()
            rid = h.new_request_id()
            event = h.completion_requested(chat, principal, request.headers, request_id=rid, origin=self.id,
                                           timeout_s=timeout, job=False, api=dialect.api)
            if chat.stream:
                return await self._stream(request, dialect, event, started)
            return await self._sync(request, dialect, event, started)
        except SwitchyardError as exc:
            return self._error(dialect, exc.info(), None)

    def _check_capacity(self) -> None:
        """Back-pressure: past ``max_in_flight`` waiting requests, refuse now (503) rather than let all of them
        wait out their deadlines. Jobs are not limited here: they wait in the stream, not in this process."""
        if len(self.waiters) >= self.settings.max_in_flight:
            self.metrics.requests.labels("gateway", "overloaded").inc()
            raise ServiceUnavailable(f"this gateway has {self.settings.max_in_flight} requests in flight; "
                                     f"try again shortly or submit a job", code="overloaded", retry_after=1)

    def _error(self, dialect: Dialect, info: ErrorInfo, rid: str | None) -> Response:
        headers = {"x-request-id": rid} if rid else {}
        return error_response(info, headers, body=dialect.error_body(info, rid))

    async def _sync(self, request: Request, dialect: Dialect, event: CompletionRequested, started: float) -> Response:
        rid = event.request_id
        fut = self.waiters.add(rid)
        try:
            await self._publish(request, event)
            try:
                async with asyncio.timeout(max(0.001, event.ctx.remaining())):
                    term = await fut
            except TimeoutError:
                self.metrics.requests.labels(dialect.api, "timeout").inc()
                err = DeadlineExceeded(f"request {rid} did not finish within {event.ctx.deadline - event.ctx.received_at:g}s; "
                                       f"it goes on and is recorded: see GET /v1/requests/{rid}")
                return self._error(dialect, err.info(), rid)
        finally:
            self.waiters.discard(rid)
        total = time.perf_counter() - started
        overhead = h.overhead_s(term, total)
        self.metrics.request_duration.labels(dialect.api).observe(total)
        self.metrics.overhead.labels(dialect.api).observe(overhead)
        self.metrics.requests.labels(dialect.api, term.status).inc()
        headers = {"x-request-id": rid, "x-switchyard-overhead-ms": f"{overhead * 1000:.3f}"}
        if isinstance(term, CompletionSucceeded):
            headers["x-switchyard-provider"] = term.target.provider
            headers.update(term.ctx.rate_headers or {})
            if term.ctx.redactions:
                headers["x-switchyard-redactions"] = ",".join(f"{k}={n}" for k, n in
                                                              sorted(term.ctx.redactions.items()))
            return _json(dialect.success(term), headers=headers)
        return error_response(h.terminal_error(term), headers, body=dialect.error_body(h.terminal_error(term), rid))

    async def _publish(self, request: Request | None, event: Event):
        """Publish a request's first event, starting its trace (or continuing the client's ``traceparent``)."""
        tel = self.deps.telemetry
        incoming = request.headers.get("traceparent") if request is not None else None
        headers = {"traceparent": incoming} if incoming else ({} if tel.tracing else {"traceparent": tel.new_traceparent()})
        with tel.span(f"gateway {event.ctx.api}", headers, **{"switchyard.request_id": event.request_id}):
            return await self.deps.bus.publish(event)

    async def _stream(self, request: Request, dialect: Dialect, event: CompletionRequested,
                      started: float) -> Response:
        """Relay a streamed request as SSE in the client's dialect.

        Headers wait for the first chunk: a request that fails before any output (denied, every
        candidate down) still gets its proper status. After that, a failure ends the stream with an
        error event, never with a normal end.
        """
        rid = event.request_id
        inbox = self.streams[rid] = ChunkInbox(self.waiters.add(rid))

        async def close(cancel_upstream: bool) -> None:
            self.waiters.discard(rid)
            self.streams.pop(rid, None)
            if cancel_upstream:
                await self.deps.bus.nc.publish(cancel_subject(rid), b"")

        try:
            await self._publish(request, event)
            first = await inbox.next(event.ctx.remaining())
        except BaseException:
            await close(cancel_upstream=True)
            raise
        if isinstance(first, Timeout):
            await close(cancel_upstream=True)
            self.metrics.requests.labels(dialect.api, "timeout").inc()
            err = DeadlineExceeded(f"request {rid} produced no output before its deadline")
            return self._error(dialect, err.info(), rid)
        if not isinstance(first, ChunkMessage):
            await close(cancel_upstream=False)
            self.metrics.requests.labels(dialect.api, first.status).inc()
            if isinstance(first, CompletionSucceeded):  # an answer with no chunks at all: send it whole
                return _json(dialect.success(first), headers={"x-request-id": rid})
            return self._error(dialect, h.terminal_error(first), rid)
        self.metrics.ttft.labels("gateway").observe(time.perf_counter() - started)
        body = self._sse(dialect.stream(event), dialect.api, event, first, inbox, started, close)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"x-request-id": rid, "cache-control": "no-cache"})

    async def _sse(self, enc: StreamEncoder, api: str, event: CompletionRequested, first: ChunkMessage,
                   inbox: "ChunkInbox", started: float, close) -> AsyncIterator[bytes]:
        rid = event.request_id
        lock, seen, finished, outcome = (first.attempt, first.delivery), 0, False, "failed"
        try:
            item: object = first
            while True:
                if isinstance(item, ChunkMessage):
                    if (item.attempt, item.delivery) != lock:
                        # A redelivered attempt restarted its stream; the client already has part of the first.
                        yield enc.error(ErrorInfo(status=502, type="upstream_error", code="stream_restarted",
                                                  message="the stream was interrupted and cannot be resumed"))
                        return
                    seen += 1
                    yield enc.chunk(item)
                elif isinstance(item, Timeout):
                    yield enc.error(DeadlineExceeded(f"request {rid} passed its deadline mid-stream").info())
                    outcome = "timeout"
                    return
                else:  # the terminal event: flush any chunk still in flight, then end
                    term = item
                    if isinstance(term, CompletionSucceeded):
                        for late in await inbox.drain(term.chunks - seen):
                            if (late.attempt, late.delivery) == lock:
                                yield enc.chunk(late)
                        yield enc.finish(term)
                        total = time.perf_counter() - started
                        self.metrics.request_duration.labels(api).observe(total)
                        self.metrics.overhead.labels(api).observe(h.overhead_s(term, total))
                    else:
                        yield enc.error(h.terminal_error(term))
                    outcome, finished = term.status, True
                    return
                item = await inbox.next(event.ctx.remaining())
        finally:
            self.metrics.requests.labels(api, outcome if finished else "disconnected").inc()
            # Not finished means the client left (or the stream broke): stop the upstream call.
            await close(cancel_upstream=not finished)

    # ---- jobs -----------------------------------------------------------------------------

    async def submit_job(self, request: Request) -> Response:
        principal = self.principal(request)
        chat = h.parse_chat_request(await request.body(), self.settings.max_body_bytes)
        if chat.stream:
            raise InvalidRequest("a job cannot stream; send stream=false", param="stream")
        now = time.time()
        rid = h.new_request_id("job_")
        event = h.completion_requested(chat, principal, request.headers, request_id=rid, origin=JOB_ORIGIN,
                                       timeout_s=self.settings.job_timeout_s, job=True, now=now)
        record = JobRecord(id=rid, tenant=principal.tenant, team=principal.team, model=chat.model, status="queued",
                           created_at=now, key_id=principal.key_id, deadline=event.ctx.deadline)
        # Accepted once the stream has it (PubAck). The KV record only serves polls, so it is written at the same
        # time: if it fails, audit writes it from the event; if it lost a race with audit, audit's is further on.
        published, stored = await asyncio.gather(self._publish(request, event),
                                                 create_job(self._jobs_kv, record), return_exceptions=True)
        if isinstance(published, BaseException):
            if stored is True:  # not accepted: leave no record that would look queued forever
                await asyncio.gather(self._jobs_kv.delete(rid), return_exceptions=True)
            raise published
        if isinstance(stored, BaseException):
            log.warning("job %s accepted but its record was not written yet: %r", rid, stored)
        self.metrics.jobs_submitted.inc()
        return _json(record.public(), status=202, headers={"x-request-id": rid})

    async def _own_job(self, request: Request, job_id: str) -> tuple[Principal, JobRecord]:
        principal = self.principal(request)
        record = await get_job(self._jobs_kv, job_id) if h.SAFE_ID.match(job_id) else None
        if record is None or record.tenant != principal.tenant or (
                principal.role == "viewer" and record.team != principal.team):
            raise NotFound(f"No job found with id '{job_id}'.", param="job_id")
        return principal, record

    async def get_job(self, request: Request, job_id: str) -> Response:
        _, record = await self._own_job(request, job_id)
        return _json(record.public())

    async def cancel_job(self, request: Request, job_id: str) -> Response:
        principal, record = await self._own_job(request, job_id)
        if principal.role == "viewer":
            raise PermissionDenied("viewer keys cannot cancel jobs")
        if record.status in TERMINAL_JOB_STATUSES:
            raise Conflict(f"Cannot cancel a job with status '{record.status}'.", code="job_not_cancellable")
        ctx = RequestContext(tenant=record.tenant, team=record.team, key_id=record.key_id, origin=JOB_ORIGIN,
                             deadline=record.deadline or time.time(), received_at=record.created_at, job=True)
        cancelled = CompletionCancelled(
            event_id=terminal_id(job_id), request_id=job_id, ctx=ctx,
            error=ErrorInfo(status=499, type="cancelled", code="cancelled", message="The job was cancelled.",
                            outcome="cancelled"))
        ack = await self.deps.bus.publish(cancelled)
        if ack is not None and ack.duplicate:
            # The request had already ended; the stored record catches up with its real outcome.
            _, record = await self._own_job(request, job_id)
            return _json(record.public())
        now = time.time()
        stored = await advance_job(self._jobs_kv, job_id, lambda cur: msgspec.structs.replace(
            cur or record, status="cancelled", completed_at=now, error=cancelled.error))
        return _json((stored or record).public())

    # ---- reads from audit -----------------------------------------------------------------

    async def _rpc(self, subject: str, query: dict) -> dict:
        try:
            reply = await self.deps.bus.nc.request(subject, msgspec.json.encode(query), timeout=10)
        except Exception as exc:  # noqa: BLE001 - no audit replica answered
            raise ServiceUnavailable("the audit service did not answer; try again shortly") from exc
        body = msgspec.json.decode(reply.data)
        if "error" in body:
            raise ServiceUnavailable(body["error"])
        return body

    async def trace(self, request: Request, request_id: str) -> Response:
        principal = self.principal(request)
        if not h.SAFE_ID.match(request_id):
            raise NotFound(f"No request found with id '{request_id}'.", param="request_id")
        body = await self._rpc(RPC_TRACE, {"request_id": request_id, "tenant": principal.tenant})
        if body.get("trace") is None or (principal.role == "viewer" and body["trace"].get("team") != principal.team):
            raise NotFound(f"No request found with id '{request_id}'.", param="request_id")
        return _json(body["trace"])

    async def ledger(self, request: Request) -> Response:
        principal = self.principal(request)
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
        body = await self._rpc(RPC_LEDGER, query)
        return _json(body["ledger"])

    async def models(self, request: Request) -> Response:
        self.principal(request)
        names = self.deps.catalog.available_models()
        return _json(model_list(names, self._owner))


def _timestamp(value: str, name: str) -> float:
    """Epoch seconds or ISO 8601."""
    try:
        return float(value)
    except ValueError:
        pass
    from datetime import datetime, timezone

    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{name} must be epoch seconds or ISO 8601", param=name) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


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


_CHAT_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ChatRequest"}}}}}


def create_app(deps: Deps, gw: Gateway) -> FastAPI:
    app = FastAPI(title="Switchyard", version="0.1.0",
                  description="OpenAI-compatible gateway of the Switchyard LLM control plane.")
    install_error_handlers(app)
    install_ops_routes(app, deps)
    app.add_api_route("/v1/chat/completions", gw.chat_completions, methods=["POST"], openapi_extra=_CHAT_SCHEMA,
                      summary="Create a chat completion (OpenAI format)")
    app.add_api_route("/v1/messages", gw.messages, methods=["POST"],
                      summary="Create a message (Anthropic Messages format), routed to any provider")
    app.add_api_route("/v1/embeddings", gw.embeddings, methods=["POST"], summary="Create embeddings (OpenAI format)")
    app.add_api_route("/v1/models", gw.models, methods=["GET"], summary="List the models that can be called")
    app.add_api_route("/v1/jobs", gw.submit_job, methods=["POST"], status_code=202, openapi_extra=_CHAT_SCHEMA,
                      summary="Submit a chat completion as an async job")
    app.add_api_route("/v1/jobs/{job_id}", gw.get_job, methods=["GET"], summary="Poll a job")
    app.add_api_route("/v1/jobs/{job_id}/cancel", gw.cancel_job, methods=["POST"], summary="Cancel a job")
    app.add_api_route("/v1/requests/{request_id}", gw.trace, methods=["GET"],
                      summary="A request's trace: every attempt in order")
    app.add_api_route("/v1/ledger", gw.ledger, methods=["GET"], summary="Cost ledger rows and totals")
    app.include_router(admin_routes(gw))
    app.include_router(provider_routes(gw))
    _add_schemas(app)
    return app


class HotPaths:
    """ASGI entry in front of FastAPI: the hot endpoints are answered straight from the ASGI scope.

    Their handlers take the raw request and return a response, so neither FastAPI's per-route machinery
    (dependency solving, response validation) nor its middleware stack (five layers, one of which looks up
    OpenTelemetry settings in the environment on every request) runs for them: together about half of the
    gateway's CPU per job submission. Everything else (admin, traces, ledger, /docs, /metrics) goes to the
    FastAPI app, where the same routes stay registered, so the OpenAPI schema is unchanged. Errors leave in
    the same OpenAI shape as the FastAPI exception handlers give them.
    """

    def __init__(self, app: FastAPI, gw: Gateway, on_request: Callable[[], None] | None = None) -> None:
        self.app = app
        self.exact = {
            ("POST", "/v1/chat/completions"): gw.chat_completions,
            ("POST", "/v1/messages"): gw.messages,
            ("POST", "/v1/embeddings"): gw.embeddings,
            ("POST", "/v1/jobs"): gw.submit_job,
        }
        self.get_job = gw.get_job
        self._poke = on_request or (lambda: None)

    def _handler(self, scope: dict):
        method, path = scope["method"], scope["path"]
        handler = self.exact.get((method, path))
        if handler is None and method == "GET" and path.startswith("/v1/jobs/"):
            job_id = path[len("/v1/jobs/"):]
            if job_id and "/" not in job_id:
                return lambda request: self.get_job(request, job_id)
        return handler

    async def __call__(self, scope: dict, receive, send) -> None:
        handler = self._handler(scope) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        self._poke()  # the request's answer comes back over the bus within the busy-poll window
        try:
            response = await handler(Request(scope, receive))
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
    gw = Gateway(deps)
    await gw.start()
    app = HotPaths(create_app(deps, gw), gw, on_request=deps.bus.poll.poke)
    s = deps.settings.gateway
    deps.ready["gateway"] = True
    print(f"switchyard: gateway listening on http://{s.host}:{s.port} (docs at /docs)", flush=True)
    await serve(app, s.host, s.port, deps)
