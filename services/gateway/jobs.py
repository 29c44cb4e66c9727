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
from services.gateway.settings import GatewaySettings
from services.gateway.web import principal_of, publish_request, read_body, refuse_viewer, request_trace
from services.ops import json_response
from shared.auth import KeyStore, Principal
from shared.bus import Bus
from shared.errors import Conflict, ErrorInfo, InvalidRequest, NotFound, PermissionDenied
from shared.events import (
    JOB_ORIGIN,
    TERMINAL_JOB_STATUSES,
    CompletionCancelled,
    JobRecord,
    RequestContext,
    terminal_id,
)
from shared.ids import SAFE_REQUEST_ID
from shared.state.buckets import JOBS
from shared.state.jobs import advance_job, create_job, get_job
from shared.state.queues import Caps, Queued, TenantQueues
from shared.state.stores import Stores
from shared.telemetry import Telemetry

log = logging.getLogger("switchyard.gateway")


class Jobs:
    """The job endpoints, over the jobs bucket every gateway replica shares."""

    def __init__(self, bus: Bus, telemetry: Telemetry, keyring: KeyStore, settings: GatewaySettings,
                 render: Render | None = None, stores: Stores | None = None) -> None:
        self.bus = bus
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

    async def start(self) -> None:
        self._kv = await self.bus.kv(JOBS)
        if self.stores is not None and self.caps.on:
            self.queues = await self.stores.queues()

    async def submit_job(self, request: Request) -> Response:
        principal = refuse_viewer(principal_of(self.keyring, request))
        body = await read_body(request, self.settings.max_body_bytes)
        prompt = None
        if self.render is not None:
            body, prompt = await self.render(body, principal, "chat.completions")
        chat = h.parse_chat_request(body, self.settings.max_body_bytes)
        if chat.stream:
            raise InvalidRequest("a job cannot stream; send stream=false", param="stream")
        now = time.time()
        rid = self.ids.new("job_")
        event = h.completion_requested(chat, principal, request.headers, request_id=rid, origin=JOB_ORIGIN,
                                       timeout_s=self.settings.job_timeout_s, job=True, now=now, prompt=prompt)
        record = JobRecord(id=rid, tenant=principal.tenant, team=principal.team, model=chat.model, status="queued",
                           created_at=now, key_id=principal.key_id, deadline=event.ctx.deadline, size=len(body))
        # Counted against the tenant's queue caps before it is accepted (429, not accepted, past them).
        queued = Queued(tenant=principal.tenant, size=len(body), deadline=event.ctx.deadline)
        if self.queues is not None:
            await self.queues.admit(queued, self.caps)
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
        return json_response(record.public(), status=202, headers={"x-request-id": rid})

    async def _give_back(self, records: list[JobRecord]) -> None:
        if self.queues is not None and records:
            await self.queues.release(Queued(tenant=r.tenant, size=r.size, deadline=r.deadline) for r in records)

    async def _own_job(self, request: Request, job_id: str) -> tuple[Principal, JobRecord]:
        principal = principal_of(self.keyring, request)
        record = await get_job(self._kv, job_id) if SAFE_REQUEST_ID.match(job_id) else None
        if record is None or record.tenant != principal.tenant or (
                principal.role == "viewer" and record.team != principal.team):
            raise NotFound(f"No job found with id '{job_id}'.", param="job_id")
        return principal, record

    async def get_job(self, request: Request, job_id: str) -> Response:
        _, record = await self._own_job(request, job_id)
        return json_response(record.public())

    async def cancel_job(self, request: Request, job_id: str) -> Response:
        principal, record = await self._own_job(request, job_id)
        if principal.role == "viewer":
            raise PermissionDenied("viewer keys cannot cancel jobs")
        if principal.role == "member" and record.team != principal.team:
            raise NotFound(f"No job found with id '{job_id}'.", param="job_id")  # as for a job that does not exist
        if record.status in TERMINAL_JOB_STATUSES:
            raise Conflict(f"Cannot cancel a job with status '{record.status}'.", code="job_not_cancellable")
        ctx = RequestContext(tenant=record.tenant, team=record.team, key_id=record.key_id, origin=JOB_ORIGIN,
                             deadline=record.deadline or time.time(), received_at=record.created_at, job=True)
        cancelled = CompletionCancelled(
            event_id=terminal_id(job_id), request_id=job_id, ctx=ctx,
            error=ErrorInfo(status=499, type="cancelled", code="cancelled", message="The job was cancelled.",
                            outcome="cancelled"))
        ack = await self.bus.publish(cancelled)
        if ack is not None and ack.duplicate:
            # The request had already ended; the stored record catches up with its real outcome.
            _, record = await self._own_job(request, job_id)
            return json_response(record.public())
        now = time.time()
        ended: list[JobRecord] = []
        stored = await advance_job(self._kv, job_id, lambda cur: msgspec.structs.replace(
            cur or record, status="cancelled", completed_at=now, error=cancelled.error), finished=ended.append)
        await self._give_back(ended)  # this call ended the job: its tenant's queue count goes back
        return json_response((stored or record).public())
