"""Async jobs: submit a chat completion, poll it, cancel it.

A job is accepted once the stream has its ``CompletionRequested`` (PubAck) and
runs whether or not anyone polls. Its record lives in JetStream KV, so any
gateway replica answers a poll; audit moves it on as the request's events
arrive. A key sees the jobs of its tenant, a viewer key those of its own team. A
viewer cannot submit (403 at once) nor cancel; a member cancels only its own
team's jobs (another team's answer 404, as a job that does not exist).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import handlers as h
from services.gateway.completions import Render
from services.gateway.idempotent import REPLAYED, Idempotent
from services.gateway.settings import GatewaySettings
from services.gateway.web import (
    changes,
    error_response,
    principal_of,
    publish_request,
    read_body,
    refuse_viewer,
    request_trace,
    sees,
)
from services.ops import json_response
from shared.auth import KeyStore, Principal
from shared.bus import Bus
from shared.catalog import Catalog
from shared.errors import (
    Conflict,
    ErrorInfo,
    InvalidRequest,
    NotAccepted,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    ServiceUnavailable,
)
from shared.canonical import ChatRequest
from shared.events import (
    JOB_ORIGIN,
    PromptRef,
    TERMINAL_JOB_STATUSES,
    CompletionCancelled,
    JobRecord,
    RequestContext,
    cancel_subject,
    terminal_id,
)
from shared.ids import SAFE_REQUEST_ID
from shared.state.buckets import JOBS
from shared.state.idempotency import HEADER as IDEMPOTENCY_HEADER
from shared.state.idempotency import IdempotencyRecord, replay_error
from shared.state.jobs import advance_job, create_job, get_job
from shared.state.queues import Caps, Queued, TenantQueues
from shared.state.stores import Stores
from shared.telemetry import Telemetry

log = logging.getLogger("switchyard.gateway")


class Jobs:
    """The job endpoints, over the jobs bucket every gateway replica shares."""

    def __init__(self, bus: Bus, telemetry: Telemetry, keyring: KeyStore, settings: GatewaySettings,
                 render: Render | None = None, stores: Stores | None = None, catalog: Catalog | None = None) -> None:
        self.bus = bus
        self.catalog = catalog  # an unknown model is refused (404) at submission, as a synchronous call is
        self.stores = stores  # the tenants' queued-job counts (None: no caps, as in tests of the endpoints alone)
        self.queues: TenantQueues | None = None
        self.caps = Caps(jobs=settings.max_queued_jobs, bytes=settings.max_queued_bytes)
        self.render = render  # renders a referenced prompt template into the request (prompts.py)
        self.telemetry = telemetry
        self.keyring = keyring
        self.settings = settings
        self.metrics = telemetry.metrics
        self._kv = None
        self.ids = h.RequestIds()
        self.idempotent = Idempotent(bus)

    async def start(self) -> None:
        self._kv = await self.bus.kv(JOBS)
        await self.idempotent.start()
        if self.stores is not None and self.caps.on:
            self.queues = await self.stores.queues()

    async def submit_job(self, request: Request) -> Response:
        principal = refuse_viewer(principal_of(self.keyring, request))
        body = await read_body(request, self.settings.max_body_bytes)
        sent = body  # as the client sent it: what an Idempotency-Key's retry must repeat
        prompt = None
        if self.render is not None:
            body, prompt = await self.render(body, principal, "chat.completions")
        chat = h.parse_chat_request(body, self.settings.max_body_bytes)
        if chat.stream:
            raise InvalidRequest("a job cannot stream; send stream=false", param="stream")
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            record = await self.submit(chat, principal, request, size=len(body), prompt=prompt)
        else:  # a retried submission gets the job it started (services/gateway/idempotent.py)
            rid = self.ids.new("job_")
            if not self.bus.connected:  # not accepted, at once (as ``submit`` would say), before claiming the key
                raise NotAccepted(rid)
            fp, first = await self.idempotent.claim(key, principal.tenant, "/v1/jobs", sent, rid)
            if first is not None:
                return await self._replay(first, fp, principal)
            try:
                record = await self.submit(chat, principal, request, size=len(body), prompt=prompt, job_id=rid)
            except OutcomeUnknown:
                raise  # the key stays claimed: a retry must not run it a second time
            except Exception:
                await self.idempotent.release(principal.tenant, key)  # not accepted: a retry runs it
                raise
        return json_response(record.public(), status=202, headers={"x-request-id": record.id})

    async def submit(self, chat: ChatRequest, principal: Principal, request: Request | None, *, size: int,
                     prompt: PromptRef | None = None, job_id: str | None = None,
                     api: str = "chat.completions") -> JobRecord:
        """Accept ``chat`` as a job (the Responses API's background responses and each line of a batch come
        this way too): its record once the stream has it. ``job_id``: a given id (a batch's line) instead of a
        new one; ``request``: the HTTP request whose trace and routing headers it carries, if any."""
        if self.catalog is not None:
            self.catalog.check_servable(chat.model)
        now = time.time()
        rid = job_id or self.ids.new("job_")
        event = h.completion_requested(chat, principal, request.headers if request is not None else {},
                                       request_id=rid, origin=JOB_ORIGIN, timeout_s=self.settings.job_timeout_s,
                                       job=True, now=now, prompt=prompt, api=api)
        record = JobRecord(id=rid, tenant=principal.tenant, team=principal.team, model=chat.model, status="queued",
                           created_at=now, key_id=principal.key_id, deadline=event.ctx.deadline, size=size)
        # Counted against the tenant's queue caps before it is accepted (429, not accepted, past them).
        queued = Queued(tenant=principal.tenant, size=size, deadline=event.ctx.deadline)
        if not self.bus.connected:  # not accepted, at once: no count, record or event waits for a reconnect
            raise NotAccepted(rid)
        if self.queues is not None:
            try:
                await self.queues.admit(queued, self.caps)
            except NotAccepted:
                raise
            except ServiceUnavailable as exc:  # nothing published: say so, with the id
                raise NotAccepted(rid, "the job queue store is unavailable") from exc
        # Accepted once the stream has it (PubAck). The KV record only serves polls, so it is written at the same
        # time: if it fails, audit writes it from the event; if it lost a race with audit, audit's is further on.
        with request_trace(self.telemetry, request, event):
            published, stored = await asyncio.gather(publish_request(self.bus, self.telemetry, request, event),
                                                     create_job(self._kv, record), return_exceptions=True)
        if isinstance(published, BaseException):
            # Not accepted: leave no record that would look queued forever, nor a count against the tenant.
            await asyncio.gather(self._kv.delete(rid) if stored is True else asyncio.sleep(0),
                                 self._give_back([record]), return_exceptions=True)
            raise published
        if isinstance(stored, BaseException):
            log.warning("job %s accepted but its record was not written yet: %r", rid, stored)
        self.metrics.jobs_submitted.inc()
        return record

    async def _replay(self, first: IdempotencyRecord, fp: str, principal: Principal) -> Response:
        """A retried submission: the job the key started, as it is now (202); 409 for another body, or while the
        job has no record yet."""
        if first.fingerprint == fp:
            job = await get_job(self._kv, first.request_id)
            if job is not None and job.tenant == principal.tenant:
                return json_response(job.public(), status=202, headers={"x-request-id": job.id, REPLAYED: "true"})
        refused = replay_error(first, fp)  # the job's key is never "done": its answer is the job record
        return error_response(refused.info(), {"x-request-id": first.request_id})

    async def _give_back(self, records: list[JobRecord]) -> None:
        if self.queues is not None and records:
            await self.queues.release(Queued(tenant=r.tenant, size=r.size, deadline=r.deadline) for r in records)

    async def _own_job(self, request: Request, job_id: str) -> tuple[Principal, JobRecord]:
        principal = principal_of(self.keyring, request)
        record = await get_job(self._kv, job_id) if SAFE_REQUEST_ID.match(job_id) else None
        if record is None or record.tenant != principal.tenant or not sees(principal, record.team):
            raise NotFound(f"No job found with id '{job_id}'.", param="job_id")
        return principal, record

    async def get_job(self, request: Request, job_id: str) -> Response:
        _, record = await self._own_job(request, job_id)
        return json_response(record.public())

    async def cancel_job(self, request: Request, job_id: str) -> Response:
        principal, record = await self._own_job(request, job_id)
        if principal.role == "viewer":
            raise PermissionDenied("viewer keys cannot cancel jobs")
        if not changes(principal, record.team):
            raise NotFound(f"No job found with id '{job_id}'.", param="job_id")  # as for a job that does not exist
        if record.status in TERMINAL_JOB_STATUSES:
            raise Conflict(f"Cannot cancel a job with status '{record.status}'.", code="job_not_cancellable")
        return json_response((await self.cancel(record)).public())

    async def cancel(self, record: JobRecord) -> JobRecord:
        """End a job that has not ended (its caller checked who may); what is stored afterwards."""
        job_id = record.id
        ctx = RequestContext(tenant=record.tenant, team=record.team, key_id=record.key_id, origin=JOB_ORIGIN,
                             deadline=record.deadline or time.time(), received_at=record.created_at, job=True)
        cancelled = CompletionCancelled(
            event_id=terminal_id(job_id), request_id=job_id, ctx=ctx,
            error=ErrorInfo(status=499, type="cancelled", code="cancelled", message="The job was cancelled.",
                            outcome="cancelled"))
        ack = await self.bus.publish(cancelled)
        if ack is not None and ack.duplicate:
            # The request had already ended; the stored record catches up with its real outcome.
            return await get_job(self._kv, job_id) or record
        now = time.time()
        ended: list[JobRecord] = []
        stored = await advance_job(self._kv, job_id, lambda cur: msgspec.structs.replace(
            cur or record, status="cancelled", completed_at=now, error=cancelled.error), finished=ended.append)
        await self._give_back(ended)  # this call ended the job: its tenant's queue count goes back
        # The worker calling the provider for it (if any) cancels the call; what it cost is billed apart
        # (AttemptFailed, after the end). Sent after the record: a worker that misses this signal reads it.
        try:
            await self.bus.nc.publish(cancel_subject(job_id), b"")
        except Exception as exc:  # noqa: BLE001 - the cancel stands; the call runs out and is billed
            log.warning("cancel of job %s not signalled to its worker: %r", job_id, exc)
        return stored or record

    async def record(self, job_id: str) -> JobRecord | None:
        """A job's stored record (no access check: for the gateway's own features that hold the job's id)."""
        return await get_job(self._kv, job_id)
