"""OpenAI's Batch API on top of async jobs: ``POST /v1/batches``, ``GET /v1/batches[/{id}]``, ``POST …/cancel``.

Creating a batch reads its input file (uploaded with ``purpose: batch``,
checked line by line), writes the batch record (``validating``) and submits
every line as a durable async job whose id follows from the batch id and the
line (``shared.state.batches.job_id``); then the record moves to
``in_progress``. Nothing about a batch lives in a gateway's memory: a gateway
killed mid-submission leaves a ``validating`` record that the next reader
(any replica) resumes once it has been idle ``batch_resume_after_s``, skipping the
lines whose job already exists.

Progress is computed on read, exactly: a poll reads the records of the jobs
not yet known to have ended and merges their ends into the record's per-line
outcomes with compare-and-set (an end is never undone). The reader that finds
no line left moves the batch to ``finalizing``, writes the output file (the
completed lines) and the error file (the failed, refused and cancelled ones)
in line order — their content follows from the job records alone, so two
replicas finalizing at once write the same bytes under the same ids — and then
to ``completed`` (``cancelled`` after a cancel). Lines refused at submission
(an unknown model, a tenant's queue cap) are failed lines with their error.
Every job ends within ``job_timeout_s`` of its submission, far inside the only
completion window offered (24 h), so a batch never reaches ``expired``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Iterable, Literal, TypeVar

import msgspec
from msgspec import Struct
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import handlers as h
from services.gateway import schemas as S
from services.gateway.files import BatchLine, Files, batch_lines, int_param, list_body, page
from services.gateway.jobs import Jobs
from services.gateway.settings import GatewaySettings
from services.gateway.web import SMALL_BODY_BYTES, changes, principal_of, read_body, refuse_viewer, sees
from services.ops import json_response
from shared.auth import KeyStore, Principal
from shared.bus import Bus
from shared.errors import Conflict, ErrorInfo, InvalidRequest, NotFound, PermissionDenied, ServiceUnavailable, \
    SwitchyardError
from shared.events import TERMINAL_JOB_STATUSES, JobRecord
from shared.state import batches as bs
from shared.state.buckets import BATCHES

log = logging.getLogger("switchyard.gateway")
T = TypeVar("T")
CONCURRENCY = 64  # job submissions and job-record reads one batch call has in flight


class BatchCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/batches``."""

    input_file_id: str
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None


_create_decoder = msgspec.json.Decoder(BatchCreate)
BATCH = S.obj({"id": S.STR, "object": {"const": "batch"}, "endpoint": S.STR, "input_file_id": S.STR,
               "completion_window": S.STR, "status": S.STR, "created_at": S.INT,
               "request_counts": S.obj({"total": S.INT, "completed": S.INT, "failed": S.INT})},
              {"output_file_id": S.NULL_STR, "error_file_id": S.NULL_STR})
BATCH_LIST = S.list_of(BATCH)


async def bounded(calls: Iterable[Callable[[], Awaitable[T]]], limit: int = CONCURRENCY) -> list[T | BaseException]:
    """Run the calls ``limit`` at a time; results (or the exception each raised) in order."""
    calls = list(calls)
    out: list[T | BaseException] = []
    for start in range(0, len(calls), limit):
        out.extend(await asyncio.gather(*(c() for c in calls[start:start + limit]), return_exceptions=True))
    return out


def _end_of(job: JobRecord | None) -> str:
    if job is None or job.status not in TERMINAL_JOB_STATUSES:
        return bs.PENDING
    return bs.COMPLETED if job.status == "completed" else bs.FAILED


def output_line(batch: bs.BatchRecord, index: int, job: JobRecord | None) -> tuple[bool, dict[str, Any]]:
    """Line ``index`` of the batch's output (True) or error file (False), in OpenAI's batch output format."""
    rid = f"batch_req_{batch.id.removeprefix('batch_')}_{index}"
    base = {"id": rid, "custom_id": batch.custom_ids[index]}
    refused = batch.refused.get(str(index))
    if refused is not None:
        return False, {**base, "response": {"status_code": refused.status, "request_id": None,
                                            "body": refused.body()}, "error": None}
    if job is not None and job.status == "completed":
        return True, {**base, "response": {"status_code": 200, "request_id": job.id, "body": job.result},
                      "error": None}
    if job is not None and job.status == "failed" and job.error is not None:
        return False, {**base, "response": {"status_code": job.error.status, "request_id": job.id,
                                            "body": job.error.body()}, "error": None}
    if job is not None and job.status == "cancelled" or index >= batch.submitted:
        return False, {**base, "response": None,
                       "error": {"code": "batch_cancelled", "message": "the batch was cancelled before this "
                                                                       "request completed"}}
    if job is None:
        return False, {**base, "response": None,
                       "error": {"code": "result_expired", "message": "the request's job record is no longer "
                                                                      "kept (job TTL)"}}
    return False, {**base, "response": None,
                   "error": {"code": "batch_expired", "message": f"the request's job {job.status}"}}


def _input_gone(cur: bs.BatchRecord, now: float) -> bs.BatchRecord | None:
    """A validating batch whose input file is gone: its unsubmitted lines fail, the rest runs on."""
    if cur.status != "validating":
        return None
    n = len(cur.custom_ids)
    gone = ErrorInfo(status=404, type="invalid_request_error", code="input_file_missing",
                     message=f"the batch's input file {cur.input_file_id} was deleted before this line was submitted")
    refused = {**cur.refused, **{str(i): gone for i in range(cur.submitted, n)}}
    failed = cur.outcomes[:cur.submitted] + bs.FAILED * (n - cur.submitted)
    return msgspec.structs.replace(cur, refused=refused, outcomes=bs.merge_outcomes(cur.outcomes, failed),
                                   submitted=n, status="in_progress", in_progress_at=now, touched_at=now)


class Batches:
    """The batch endpoints, over the batches bucket every gateway replica shares."""

    def __init__(self, bus: Bus, keyring: KeyStore, settings: GatewaySettings, files: Files, jobs: Jobs,
                 cas_timeout_s: float = 5.0) -> None:
        self.bus = bus
        self.keyring = keyring
        self.settings = settings
        self.files = files
        self.jobs = jobs
        self.cas_timeout_s = cas_timeout_s
        self.kv = None
        self.ids = h.RequestIds()

    async def start(self) -> None:
        self.kv = await self.bus.kv(BATCHES)

    def _advance(self, record: bs.BatchRecord, change: Callable[[bs.BatchRecord], bs.BatchRecord | None]):
        return bs.advance(self.kv, record, change, self.cas_timeout_s)

    # ---- create -----------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        principal = refuse_viewer(principal_of(self.keyring, request))
        body = await read_body(request, SMALL_BODY_BYTES)
        params: BatchCreate = h.decode_body(body, _create_decoder, SMALL_BODY_BYTES, "batch")
        endpoint, metadata, file_id = params.endpoint, params.metadata, params.input_file_id
        if metadata is not None and (len(metadata) > 16 or any(len(k) > 64 or len(v) > 512
                                                                for k, v in metadata.items())):
            raise InvalidRequest("metadata: at most 16 pairs (keys ≤ 64, values ≤ 512 characters)",
                                 param="metadata")
        file = await self.files.own(request, file_id, param="input_file_id")
        if file.purpose != "batch":
            raise InvalidRequest(f"file {file_id} has purpose '{file.purpose}'; a batch needs purpose 'batch'",
                                 param="input_file_id")
        lines = self._lines(await self.files.store.content(file), endpoint)
        models = {msgspec.json.decode(line.body).get("model") for line in lines}
        now = time.time()
        record = bs.BatchRecord(
            id=self.ids.new("batch_"), tenant=principal.tenant, team=principal.team, key_id=principal.key_id,
            endpoint=endpoint, input_file_id=file_id, created_at=now, expires_at=now + 24 * 3600,
            custom_ids=[line.custom_id for line in lines], outcomes=bs.PENDING * len(lines), metadata=metadata,
            model=models.pop() if len(models) == 1 else None, touched_at=now)
        await bs.put(self.kv, record)
        record = await self._submit(record, lines, principal, request)
        return json_response(record.public(), headers={"x-request-id": record.id})

    def _lines(self, content: bytes, endpoint: str) -> list[BatchLine]:
        lines = batch_lines(content, self.settings.max_batch_lines, self.settings.max_body_bytes)
        for line in lines:
            if line.url != endpoint:
                raise InvalidRequest(f"line {line.number}: url {line.url} is not the batch's endpoint {endpoint}",
                                     param="input_file_id", code="invalid_batch_line")
        return lines

    async def _submit(self, record: bs.BatchRecord, lines: list[BatchLine], principal: Principal,
                      request: Request | None) -> bs.BatchRecord:
        """Submit the lines from ``record.submitted`` on, a slice at a time, recording progress after each."""
        n = len(lines)
        for start in range(record.submitted, n, CONCURRENCY):
            if record.status != "validating":
                break  # cancelled meanwhile: the lines not submitted are cancelled lines
            chunk = list(range(start, min(n, start + CONCURRENCY)))
            results = await bounded(lambda i=i: self._submit_line(record, i, lines[i], principal, request)
                                    for i in chunk)
            refused: dict[str, ErrorInfo] = {}
            for i, result in zip(chunk, results):
                if isinstance(result, SwitchyardError) and not isinstance(result, ServiceUnavailable):
                    refused[str(i)] = result.info()  # this line's own fault (unknown model, queue cap): it failed
                elif isinstance(result, BaseException):
                    raise result  # the bus or a store is down: the record stays validating, to be resumed
            end = chunk[-1] + 1
            failed = "".join(bs.FAILED if str(i) in refused else bs.PENDING for i in range(n))
            now = time.time()
            record = await self._advance(record, lambda cur: msgspec.structs.replace(
                cur, submitted=max(cur.submitted, end), refused={**cur.refused, **refused},
                outcomes=bs.merge_outcomes(cur.outcomes, failed), touched_at=now))
        now = time.time()
        return await self._advance(record, lambda cur: msgspec.structs.replace(
            cur, status="in_progress", in_progress_at=now, touched_at=now) if cur.status == "validating" else None)

    async def _submit_line(self, record: bs.BatchRecord, index: int, line: BatchLine, principal: Principal,
                           request: Request | None) -> None:
        jid = bs.job_id(record.id, index)
        if await self.jobs.record(jid) is not None:
            return  # submitted before (a resumed submission)
        chat = h.parse_chat_request(line.body, self.settings.max_body_bytes)
        await self.jobs.submit(chat, principal, request, size=len(line.body), job_id=jid)

    # ---- progress and the end ----------------------------------------------------------------

    async def refresh(self, record: bs.BatchRecord) -> bs.BatchRecord:
        """The batch brought up to date with its jobs (and finalized when every line has ended)."""
        if record.done:
            return record
        now = time.time()
        if record.status == "validating":
            idle = self.settings.batch_resume_after_s
            if now - (record.touched_at or record.created_at) < idle:
                return record  # its submitter is still at it
            record = await self._advance(record, lambda cur: msgspec.structs.replace(cur, touched_at=now)
                                         if now - (cur.touched_at or cur.created_at) >= idle else None)
            if record.touched_at != now:
                return record  # another reader took it over
            log.warning("resuming the submission of batch %s at line %d", record.id, record.submitted)
            file = await self.files.store.get(record.tenant, record.input_file_id)
            if file is None:  # deleted (or expired) before its lines were all submitted: those cannot run
                record = await self._advance(record, lambda cur: _input_gone(cur, time.time()))
            else:
                lines = self._lines(await self.files.store.content(file), record.endpoint)
                owner = Principal(key_id=record.key_id, tenant=record.tenant, team=record.team)
                record = await self._submit(record, lines, owner, None)
        pending = [i for i, c in enumerate(record.outcomes) if c == bs.PENDING and i < record.submitted]
        jobs = await bounded(lambda i=i: self.jobs.record(bs.job_id(record.id, i)) for i in pending)
        seen = list(record.outcomes)
        deadline_passed = now > record.created_at + self.settings.job_timeout_s + 120
        for i, job in zip(pending, jobs):
            if isinstance(job, BaseException):
                raise job
            end = _end_of(job)
            if job is None and deadline_passed:
                end = bs.FAILED  # its deadline is long past and its record is gone: it ended, unseen
            seen[i] = end
        if record.status == "cancelling":  # lines never submitted will not run
            seen[record.submitted:] = bs.FAILED * (len(seen) - record.submitted)
        outcomes = "".join(seen)
        if outcomes != record.outcomes:
            record = await self._advance(record, lambda cur: msgspec.structs.replace(
                cur, outcomes=bs.merge_outcomes(cur.outcomes, outcomes)))
        if bs.PENDING not in record.outcomes and record.status in ("in_progress", "cancelling", "finalizing"):
            record = await self._finalize(record)
        return record

    async def _finalize(self, record: bs.BatchRecord) -> bs.BatchRecord:
        now = time.time()
        cancelled = record.status == "cancelling" or record.cancelling_at is not None
        if record.status == "in_progress":
            record = await self._advance(record, lambda cur: msgspec.structs.replace(
                cur, status="finalizing", finalizing_at=now) if cur.status == "in_progress" else None)
        n = len(record.custom_ids)
        jobs = await bounded(lambda i=i: self.jobs.record(bs.job_id(record.id, i)) for i in range(n))
        ok: list[bytes] = []
        bad: list[bytes] = []
        for i, job in enumerate(jobs):
            if isinstance(job, BaseException):
                raise job
            good, line = output_line(record, i, job)
            (ok if good else bad).append(msgspec.json.encode(line))
        hexid = record.id.removeprefix("batch_")
        out_id = err_id = None
        if ok:
            out_id = (await self.files.save(record.tenant, f"{record.id}_output.jsonl", "batch_output",
                                            b"\n".join(ok) + b"\n", lines=len(ok), file_id=f"file-{hexid}-out")).id
        if bad:
            err_id = (await self.files.save(record.tenant, f"{record.id}_error.jsonl", "batch_output",
                                            b"\n".join(bad) + b"\n", lines=len(bad), file_id=f"file-{hexid}-err")).id
        done = time.time()

        def final(cur: bs.BatchRecord) -> bs.BatchRecord:
            end = {"status": "cancelled", "cancelled_at": done} if cancelled else \
                {"status": "completed", "completed_at": done}
            return msgspec.structs.replace(cur, output_file_id=out_id, error_file_id=err_id,
                                           finalizing_at=cur.finalizing_at or now, **end)

        return await self._advance(record, final)

    # ---- read, list, cancel ------------------------------------------------------------------

    async def _own(self, principal: Principal, batch_id: str) -> bs.BatchRecord:
        record = await bs.get(self.kv, principal.tenant, batch_id)
        if record is None or not sees(principal, record.team):
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        return record

    async def get(self, request: Request, batch_id: str) -> Response:
        record = await self._own(principal_of(self.keyring, request), batch_id)
        return json_response((await self.refresh(record)).public())

    async def list(self, request: Request) -> Response:
        principal = principal_of(self.keyring, request)
        limit = int_param(request, "limit", 20, 1, 100)
        mine = [r for r in await bs.list_all(self.kv, principal.tenant) if sees(principal, r.team)]
        chosen, more = page(mine, lambda r: r.id,
                            request.query_params.get("after"), limit)
        fresh = [await self.refresh(r) for r in chosen]
        return json_response(list_body([r.public() for r in fresh], more))

    async def cancel(self, request: Request, batch_id: str) -> Response:
        principal = principal_of(self.keyring, request)
        if principal.role == "viewer":
            raise PermissionDenied("viewer keys cannot cancel batches")
        record = await self._own(principal, batch_id)
        if not changes(principal, record.team):
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        if record.done:
            raise Conflict(f"Cannot cancel a batch with status '{record.status}'.", code="batch_not_cancellable")
        now = time.time()
        record = await self._advance(record, lambda cur: msgspec.structs.replace(
            cur, status="cancelling", cancelling_at=now) if cur.status in ("validating", "in_progress") else None)
        pending = [i for i, c in enumerate(record.outcomes) if c == bs.PENDING and i < record.submitted]

        async def stop(i: int) -> None:
            job = await self.jobs.record(bs.job_id(record.id, i))
            if job is not None and job.status not in TERMINAL_JOB_STATUSES:
                await self.jobs.cancel(job)

        for result in await bounded(lambda i=i: stop(i) for i in pending):
            if isinstance(result, BaseException):
                raise result
        return json_response((await self.refresh(record)).public())
