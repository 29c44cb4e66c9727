"""Synchronous completions and their SSE relay: chat completions, Anthropic messages, embeddings, legacy text
completions.

A call publishes ``CompletionRequested`` (durable once PubAck'd) and waits for
its own terminal event, delivered over core NATS on ``sy.evt.done.<gateway
id>``; at its deadline it answers 504 while the request still finishes and is
recorded. A streamed call relays the chunks published on
``sy.chunk.<gateway id>.<request id>`` as SSE in the client's dialect. All
three APIs take the same path; a dialect only parses the body and renders the
answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from services.gateway import handlers as h
from services.gateway.dialects import ANTHROPIC, EMBEDDINGS, OPENAI, Dialect, StreamEncoder, legacy_completions
from services.gateway.legacy_format import API as LEGACY_API
from services.gateway.idempotent import Idempotent
from services.gateway.settings import GatewaySettings
from services.gateway.web import (
    error_response,
    principal_of,
    publish_request,
    read_body,
    refuse_viewer,
    request_trace,
)
from services.ops import json_response
from shared.openai_format import response_headers
from shared.aio import wait_future
from shared.auth import KeyStore, Principal
from shared.bus import Bus
from shared.cache import HEADER as CACHE_HEADER
from shared.errors import DeadlineExceeded, ErrorInfo, ServiceUnavailable, SwitchyardError
from shared.events import (
    ChunkMessage,
    CompletionRequested,
    CompletionSucceeded,
    PromptRef,
    TerminalEvent,
    cancel_subject,
    chunk_decoder,
    chunk_subject,
    done_subject,
)
from shared.state.idempotency import HEADER as IDEMPOTENCY_HEADER
from shared.telemetry import Telemetry

log = logging.getLogger("switchyard.gateway")
# A request body in, the body with its prompt template rendered in (and which template version) out.
Render = Callable[[bytes, Principal, str], Awaitable[tuple[bytes, PromptRef | None]]]
_terminal_decoder = msgspec.json.Decoder(TerminalEvent)
# How a synchronous request can end, as ``switchyard_requests_total`` counts it (terminal statuses, then the
# gateway's own: no answer before the deadline, the client gone mid-stream).
OUTCOMES = ("succeeded", "failed", "denied", "cancelled", "expired", "timeout", "disconnected")


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


async def _kept(holder: object, term: CompletionSucceeded) -> None:
    """Hand a success to a dialect (or stream encoder) that keeps exchanges (the Responses API stores them)."""
    keep = getattr(holder, "keep", None)
    if keep is not None:
        await keep(term)


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


class Completions:
    """The completion endpoints of one gateway instance, answering from the terminal events addressed to it."""

    def __init__(self, bus: Bus, telemetry: Telemetry, keyring: KeyStore, settings: GatewaySettings,
                 gateway_id: str, render: Render | None = None) -> None:
        self.bus = bus
        self.render = render  # renders a referenced prompt template into a chat request (prompts.py)
        self.telemetry = telemetry
        self.keyring = keyring
        self.settings = settings
        self.id = gateway_id
        self.metrics = telemetry.metrics
        self.waiters = Waiters()
        # counted from 0: a first burst shows in rate()
        for api in (OPENAI.api, ANTHROPIC.api, EMBEDDINGS.api, LEGACY_API):
            for outcome in OUTCOMES:
                self.metrics.requests.labels(api, outcome)
        self.metrics.ttft.labels("gateway")
        self.ids = h.RequestIds()
        self.streams: dict[str, ChunkInbox] = {}  # request id → the inbox of a stream this instance relays
        self.idempotent = Idempotent(bus)

    async def start(self) -> None:
        await self.idempotent.start()
        await self.bus.subscribe(done_subject(self.id), self._on_done)
        # One subscription for the chunks of every stream this instance relays (not one per request).
        await self.bus.subscribe(chunk_subject(self.id, "*"), self._on_chunk)

    def _on_chunk(self, msg) -> None:
        inbox = self.streams.get(msg.subject.rpartition(".")[2])
        if inbox is not None:
            inbox.on_chunk(msg)

    def _on_done(self, msg) -> None:
        try:
            self.waiters.resolve(_terminal_decoder.decode(msg.data))
        except msgspec.DecodeError as exc:
            log.error("undecodable terminal event: %s", exc)

    async def chat_completions(self, request: Request) -> Response:
        return await self.complete(request, OPENAI)

    async def messages(self, request: Request) -> Response:
        return await self.complete(request, ANTHROPIC)

    async def embeddings(self, request: Request) -> Response:
        return await self.complete(request, EMBEDDINGS)

    async def text_completions(self, request: Request) -> Response:
        return await self.complete(request, legacy_completions())

    async def complete(self, request: Request, dialect: Dialect, body: bytes | None = None) -> Response:
        """One request in ``dialect``'s wire format: wait for its terminal event, or relay its stream.

        ``body``: the request's body when the caller has read it already (the Responses API reads it first to
        load the conversation it continues). A dialect (or its stream encoder) with an async ``keep(term)``
        gets each successful terminal event before the client is answered (stored responses)."""
        started = time.perf_counter()
        try:
            principal = refuse_viewer(principal_of(self.keyring, request))
            if body is None:
                body = await read_body(request, self.settings.max_body_bytes)
            sent = body  # as the client sent it: what an Idempotency-Key's retry must repeat
            prompt = None
            if self.render is not None:  # before publishing: policy checks the final text
                body, prompt = await self.render(body, principal, dialect.api)
            chat, embedding = dialect.parse(body, self.settings.max_body_bytes)
            timeout = h.timeout_for(request.headers.get("x-switchyard-timeout"), self.settings.default_timeout_s,
                                    self.settings.max_timeout_s)
            self._check_capacity()
            event = h.completion_requested(chat, principal, request.headers, request_id=self.ids.new(),
                                           origin=self.id, timeout_s=timeout, job=False, api=dialect.api,
                                           embedding=embedding, prompt=prompt)
            key = request.headers.get(IDEMPOTENCY_HEADER)
            if key is not None:  # at most once per tenant and key (services/gateway/idempotent.py)
                return await self.idempotent.run(
                    key, principal.tenant, request.url.path, sent, event.request_id, bool(chat.stream),
                    lambda: self._run(request, dialect, event, bool(chat.stream), started))
            return await self._run(request, dialect, event, bool(chat.stream), started)
        except SwitchyardError as exc:  # a request not acknowledged by the bus names its id (NotAccepted...)
            return self._error(dialect, exc.info(), getattr(exc, "request_id", None))

    async def _run(self, request: Request, dialect: Dialect, event: CompletionRequested, stream: bool,
                   started: float) -> Response:
        with request_trace(self.telemetry, request, event):
            if stream:
                return await self._stream(request, dialect, event, started)
            return await self._sync(request, dialect, event, started)

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
            await publish_request(self.bus, self.telemetry, request, event)
            try:
                term = await wait_future(fut, max(0.001, event.ctx.remaining()))
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
            await _kept(dialect, term)
            headers.update(response_headers(term.ctx, term.target.provider))
            if term.cache is not None:
                headers[CACHE_HEADER] = term.cache.status
            return json_response(dialect.success(term), headers=headers)
        return error_response(h.terminal_error(term), headers, body=dialect.error_body(h.terminal_error(term), rid))

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
                await self.bus.nc.publish(cancel_subject(rid), b"")

        try:
            await publish_request(self.bus, self.telemetry, request, event)
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
                await _kept(dialect, first)
                whole = {"x-request-id": rid}
                if first.cache is not None:
                    whole[CACHE_HEADER] = first.cache.status
                return json_response(dialect.success(first), headers=whole)
            return self._error(dialect, h.terminal_error(first), rid)
        self.metrics.ttft.labels("gateway").observe(time.perf_counter() - started)
        body = self._sse(dialect.stream(event), dialect.api, event, first, inbox, started, close)
        sse_headers = {"x-request-id": rid, "cache-control": "no-cache", **(first.headers or {})}
        if first.cache:  # the worker says what the response cache did in every chunk: the headers go now
            sse_headers[CACHE_HEADER] = first.cache
        return StreamingResponse(body, media_type="text/event-stream", headers=sse_headers)

    async def _sse(self, enc: StreamEncoder, api: str, event: CompletionRequested, first: ChunkMessage,
                   inbox: ChunkInbox, started: float,
                   close: Callable[[bool], Awaitable[None]]) -> AsyncIterator[bytes]:
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
                        await _kept(enc, term)
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
