"""The Responses API: ``POST /v1/responses`` (sync, streamed, background), ``GET``/``DELETE`` a stored response,
``POST …/cancel`` and ``GET …/input_items``.

A response is a chat completion underneath: the request is mapped to the
canonical chat request (``responses_format``) and goes through the same
``Completions.complete`` path as ``/v1/chat/completions`` — admission, routing
to any provider, budgets, traces — with a per-request dialect that renders the
``response`` object or its typed stream events and, when ``store`` is true
(the default), keeps the exchange in ``sy_conversations`` before answering, so
``previous_response_id`` can continue it at once from any gateway replica.
``background: true`` submits it as an async job (``Jobs.submit``); its stored
record names the job and is completed from the job's record by whoever reads
it first. The response id is the request's (or job's) id with the ``resp_``
prefix, so ``GET /v1/requests/req_<same>`` (or the job) is its trace.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import responses_format as rf
from services.gateway.completions import Completions
from services.gateway.jobs import Jobs
from services.gateway.settings import GatewaySettings
from services.gateway.web import changes, principal_of, read_body, refuse_viewer, sees
from services.ops import json_response
from shared.auth import KeyStore, Principal
from shared.bus import Bus
from shared.canonical import ChatRequest, EmbeddingRequest, Message, Usage
from shared.catalog import Catalog
from shared.errors import ErrorInfo, InvalidRequest, NotFound, PermissionDenied, ServiceUnavailable
from shared.events import TERMINAL_JOB_STATUSES, ChunkMessage, CompletionRequested, CompletionSucceeded, JobRecord
from shared.state import conversations as conv
from shared.state.buckets import CONVERSATIONS

log = logging.getLogger("switchyard.gateway")
_json = msgspec.json.Encoder()


def response_id_of(request_id: str) -> str:
    """The response id of a request or job id (``req_<hex>`` / ``job_<hex>`` → ``resp_<hex>``)."""
    return "resp_" + request_id.partition("_")[2]


def public(record: conv.StoredResponse) -> dict[str, Any]:
    """A stored response as the API shows it."""
    return rf.response_object(record.id, created_at=record.created_at, status=record.status,
                              model=record.served_model or record.model, params=record.params, output=record.output,
                              usage_body=record.usage, error=record.error, incomplete=record.incomplete_details,
                              completed_at=record.completed_at)


def _sse(kind: str, body: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _json.encode(body) + b"\n\n"


class ResponsesCall:
    """One ``POST /v1/responses`` as a dialect of ``Completions.complete``: the canonical request is built
    already; it renders the answer (or its stream, ``ResponsesStream``) and keeps the exchange."""

    api = "responses"

    def __init__(self, owner: "Responses", principal: Principal, req: rf.ResponsesRequest, chat: ChatRequest,
                 conversation: list[Message], new_count: int, dropped: int) -> None:
        self.owner = owner
        self.principal = principal
        self.req = req
        self.chat = chat
        self.conversation = conversation
        self.new_count = new_count
        self.dropped = dropped
        self.params = rf.echoed(req)
        self.created_at = time.time()
        self.stored = req.store

    def parse(self, body: bytes, max_bytes: int) -> tuple[ChatRequest, EmbeddingRequest | None]:
        return self.chat, None

    def outcome(self, term: CompletionSucceeded) -> tuple[str, list[dict[str, Any]], dict | None, Message]:
        """(status, output items, incomplete_details, the answer as a chat message) of a success."""
        rid = response_id_of(term.request_id)
        choice = term.response.choices[0] if term.response.choices else None
        answer = choice.message if choice else Message(role="assistant", content="")
        status, incomplete = rf.finish_status(choice.finish_reason if choice else None)
        return status, rf.output_items(rid, answer, "incomplete" if status == "incomplete" else "completed"), \
            incomplete, answer

    def success(self, term: CompletionSucceeded) -> dict[str, Any]:
        status, output, incomplete, _ = self.outcome(term)
        return rf.response_object(response_id_of(term.request_id), created_at=self.created_at, status=status,
                                  model=term.target.model, params={**self.params, "store": self.stored},
                                  output=output, usage_body=rf.usage(term.response.usage), incomplete=incomplete,
                                  completed_at=term.ts)

    async def keep(self, term: CompletionSucceeded) -> None:
        """Store the exchange (``store: true``) before the client hears of it; a store that cannot be reached
        turns ``store`` false in the answer rather than failing a completion already made and billed."""
        if not self.req.store:
            return
        status, output, incomplete, answer = self.outcome(term)
        p = self.principal
        record = conv.StoredResponse(
            id=response_id_of(term.request_id), tenant=p.tenant, team=p.team, key_id=p.key_id,
            created_at=self.created_at, status=status, model=self.req.model, params=self.params,
            messages=self.conversation, input_count=self.new_count, output=output, answer=answer,
            usage=rf.usage(term.response.usage), incomplete_details=incomplete, served_model=term.target.model,
            completed_at=term.ts, dropped=self.dropped)
        try:
            await conv.put(self.owner.kv, record)
        except ServiceUnavailable as exc:
            log.error("response %s answered but not stored: %s", record.id, exc)
            self.stored = False

    def error_body(self, info: ErrorInfo, request_id: str | None) -> dict[str, Any]:
        return info.body()

    def stream(self, event: CompletionRequested) -> "ResponsesStream":
        return ResponsesStream(self, event)


class ResponsesStream:
    """The typed events of a streamed response, each with its ``sequence_number``.

    ``response.created`` and ``response.in_progress`` go out with the first chunk; the text arrives as
    ``response.output_text.delta`` inside a ``message`` item (``output_item.added`` → ``content_part.added`` →
    deltas → ``output_text.done`` → ``content_part.done`` → ``output_item.done``), each tool call as a
    ``function_call`` item with ``function_call_arguments.delta``/``.done``; the end is ``response.completed``
    (or ``response.incomplete``) carrying the whole response, a failure ``response.failed``.
    """

    def __init__(self, call: ResponsesCall, event: CompletionRequested) -> None:
        self.call = call
        self.id = response_id_of(event.request_id)
        self.model = event.request.model
        self.seq = 0
        self.started = False
        self.text: list[str] | None = None  # the open message item's text so far
        self.calls: dict[int, dict[str, Any]] = {}  # tool index → its function_call item (open ones)
        self.next_index = 0

    def keep(self, term: CompletionSucceeded) -> Any:
        return self.call.keep(term)

    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return _sse(kind, body)

    def _shell(self, status: str) -> dict[str, Any]:
        return rf.response_object(self.id, created_at=self.call.created_at, status=status, model=self.model,
                                  params=self.call.params, output=[])

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return self._event("response.created", response=self._shell("in_progress")) + \
            self._event("response.in_progress", response=self._shell("in_progress"))

    def _close_text(self) -> bytes:
        if self.text is None:
            return b""
        text, self.text = "".join(self.text), None
        iid = rf.item_id(self.id, "msg", 0)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return (self._event("response.output_text.done", item_id=iid, output_index=0, content_index=0, text=text,
                            logprobs=[])
                + self._event("response.content_part.done", item_id=iid, output_index=0, content_index=0, part=part)
                + self._event("response.output_item.done", output_index=0, item={
                    "id": iid, "type": "message", "role": "assistant", "status": "completed", "content": [part]}))

    def _close_calls(self) -> bytes:
        out = b""
        for _, item in sorted(self.calls.items()):
            index = item.pop("_index")
            out += self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               name=item["name"], arguments=item["arguments"])
            out += self._event("response.output_item.done", output_index=index, item={**item, "status": "completed"})
        self.calls.clear()
        return out

    def chunk(self, message: ChunkMessage) -> bytes:
        out = self._start()
        for choice in message.chunk.choices[:1]:
            d = choice.delta
            if d.content:
                if self.text is None and not self.calls:
                    iid = rf.item_id(self.id, "msg", 0)
                    self.next_index = 1
                    out += self._event("response.output_item.added", output_index=0, item={
                        "id": iid, "type": "message", "role": "assistant", "status": "in_progress", "content": []})
                    out += self._event("response.content_part.added", item_id=iid, output_index=0, content_index=0,
                                       part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
                    self.text = []
                if self.text is not None:
                    self.text.append(d.content)
                    out += self._event("response.output_text.delta", item_id=rf.item_id(self.id, "msg", 0),
                                       output_index=0, content_index=0, delta=d.content, logprobs=[])
            for tc in d.tool_calls or ():
                n = tc.index or 0
                fn = tc.function
                if n not in self.calls:
                    out += self._close_text()
                    index = self.next_index
                    self.next_index += 1
                    self.calls[n] = item = {"id": rf.item_id(self.id, "fc", index), "type": "function_call",
                                            "status": "in_progress", "call_id": tc.id or rf.item_id(self.id, "call", n),
                                            "name": (fn.name if fn else None) or "", "arguments": "", "_index": index}
                    out += self._event("response.output_item.added", output_index=index,
                                       item={k: v for k, v in item.items() if k != "_index"})
                item = self.calls[n]
                if fn is not None and fn.arguments:
                    item["arguments"] += fn.arguments
                    out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                                       output_index=item["_index"], delta=fn.arguments)
        return out

    def finish(self, term: CompletionSucceeded) -> bytes:
        out = self._start() + self._close_text() + self._close_calls()
        body = self.call.success(term)
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, response=body)

    def error(self, info: ErrorInfo) -> bytes:
        failed = {**self._shell("failed"), "error": rf.error_object(info)}
        return self._start() + self._event("response.failed", response=failed)


class Responses:
    """The Responses API endpoints of one gateway instance."""

    def __init__(self, bus: Bus, keyring: KeyStore, catalog: Catalog, settings: GatewaySettings,
                 completions: Completions, jobs: Jobs, cas_timeout_s: float = 5.0) -> None:
        self.bus = bus
        self.keyring = keyring
        self.catalog = catalog
        self.settings = settings
        self.completions = completions
        self.jobs = jobs
        self.cas_timeout_s = cas_timeout_s
        self.kv = None

    async def start(self) -> None:
        self.kv = await self.bus.kv(CONVERSATIONS)

    # ---- create -----------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        principal = refuse_viewer(principal_of(self.keyring, request))
        body = await read_body(request, self.settings.max_body_bytes)
        req = rf.parse_request(body, self.settings.max_body_bytes)
        history: list[Message] = []
        if req.previous_response_id:
            prev = await self._load(principal, req.previous_response_id, param="previous_response_id")
            if prev.status not in ("completed", "incomplete"):
                raise InvalidRequest(f"Previous response '{prev.id}' is {prev.status}; it can be continued once it "
                                     f"has completed.", param="previous_response_id")
            history = prev.messages + ([prev.answer] if prev.answer is not None else [])
        spec = self.catalog.model_for(req.model)
        cap = req.max_output_tokens or (spec.max_output_tokens if spec else None)
        chat, conversation, dropped = rf.build_chat(req, history, spec.context_window if spec else None, cap)
        new_count = len(rf.input_messages(req.input))
        if not req.background:
            call = ResponsesCall(self, principal, req, chat, conversation, new_count, dropped)
            return await self.completions.complete(request, call, body=body)
        # Background: the record first (it names the job), then the job; a job refused leaves no record.
        job_id = self.jobs.ids.new("job_")
        now = time.time()
        record = conv.StoredResponse(id=response_id_of(job_id), tenant=principal.tenant, team=principal.team,
                                     key_id=principal.key_id, created_at=now, status="queued", model=req.model,
                                     params=rf.echoed(req), messages=conversation, input_count=new_count,
                                     job_id=job_id, dropped=dropped)
        await conv.put(self.kv, record)
        try:
            await self.jobs.submit(chat, principal, request, size=len(body), job_id=job_id, api="responses")
        except BaseException:
            await conv.delete(self.kv, principal.tenant, record.id)
            raise
        return json_response(public(record), headers={"x-request-id": job_id})

    # ---- read, delete, cancel ----------------------------------------------------------------

    async def _load(self, principal: Principal, response_id: str, param: str = "response_id") -> conv.StoredResponse:
        """The caller's tenant's stored response, brought up to date with its job; 404 otherwise."""
        record = await conv.get(self.kv, principal.tenant, response_id)
        if record is None or not sees(principal, record.team):
            raise NotFound(f"Response with id '{response_id}' not found.", param=param)
        if record.job_id and not record.done:
            job = await self.jobs.record(record.job_id)
            if job is None and time.time() > record.created_at + self.settings.job_timeout_s + 120:
                # No job record long after any job of it would have ended: its gateway died between writing this
                # record and submitting the job (or the job's record expired), so it never ran or is unknowable.
                job = JobRecord(id=record.job_id, tenant=record.tenant, team=record.team, model=record.model,
                                status="failed", created_at=record.created_at, error=ErrorInfo(
                                    status=500, type="server_error", code="job_not_found",
                                    message="the response's job was not accepted or its record has expired"))
            if job is not None:
                record = await conv.advance(self.kv, record.tenant, record.id, lambda cur: _from_job(cur, job),
                                            self.cas_timeout_s) or record
        return record

    async def get(self, request: Request, response_id: str) -> Response:
        if request.query_params.get("stream") not in (None, "false"):
            raise InvalidRequest("streaming a stored response again is not supported; GET it without stream",
                                 param="stream")
        record = await self._load(principal_of(self.keyring, request), response_id)
        return json_response(public(record))

    async def delete(self, request: Request, response_id: str) -> Response:
        principal = refuse_viewer(principal_of(self.keyring, request))
        record = await conv.get(self.kv, principal.tenant, response_id)
        if record is None or not changes(principal, record.team) or not await conv.delete(
                self.kv, principal.tenant, response_id):
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        return json_response({"id": response_id, "object": "response", "deleted": True})

    async def cancel(self, request: Request, response_id: str) -> Response:
        principal = principal_of(self.keyring, request)
        if principal.role == "viewer":
            raise PermissionDenied("viewer keys cannot cancel responses")
        record = await self._load(principal, response_id)
        if not changes(principal, record.team):
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        if not record.job_id:
            raise InvalidRequest("Only responses created with background: true can be cancelled.",
                                 param="response_id")
        if not record.done:
            job = await self.jobs.record(record.job_id)
            if job is not None and job.status not in TERMINAL_JOB_STATUSES:
                job = await self.jobs.cancel(job)
            if job is not None:
                record = await conv.advance(self.kv, record.tenant, record.id, lambda cur: _from_job(cur, job),
                                            self.cas_timeout_s) or record
        return json_response(public(record))

    async def input_items(self, request: Request, response_id: str) -> Response:
        record = await self._load(principal_of(self.keyring, request), response_id)
        q = request.query_params
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be asc or desc", param="order")
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            raise InvalidRequest("limit must be an integer", param="limit") from None
        if not 1 <= limit <= 100:
            raise InvalidRequest("limit must be between 1 and 100", param="limit")
        items = rf.input_items(record.id, record.messages)
        if order == "desc":
            items.reverse()
        after = q.get("after")
        if after:
            ids = [i["id"] for i in items]
            if after not in ids:
                raise InvalidRequest(f"no input item '{after}' in this response", param="after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


def _from_job(current: conv.StoredResponse, job: JobRecord) -> conv.StoredResponse | None:
    """A background response moved on to what its job's record says (None: nothing new)."""
    if job.status == "queued":
        return None
    if job.status == "in_progress":
        return msgspec.structs.replace(current, status="in_progress") if current.status == "queued" else None
    if job.status == "completed" and job.result:
        choice = (job.result.get("choices") or [{}])[0]
        answer = msgspec.convert(choice.get("message") or {"role": "assistant", "content": ""}, Message)
        status, incomplete = rf.finish_status(choice.get("finish_reason"))
        u = job.result.get("usage") or {}
        use = Usage(prompt_tokens=u.get("prompt_tokens", 0), completion_tokens=u.get("completion_tokens", 0),
                    cached_tokens=(u.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                    reasoning_tokens=(u.get("completion_tokens_details") or {}).get("reasoning_tokens", 0))
        return msgspec.structs.replace(
            current, status=status, answer=answer, incomplete_details=incomplete, usage=rf.usage(use),
            output=rf.output_items(current.id, answer, "incomplete" if status == "incomplete" else "completed"),
            served_model=job.result.get("model"), completed_at=job.completed_at or time.time())
    if job.status == "cancelled":
        return msgspec.structs.replace(current, status="cancelled", completed_at=job.completed_at)
    info = job.error or ErrorInfo(status=500, type="server_error", code=job.status, message=f"the job {job.status}")
    return msgspec.structs.replace(current, status="failed", error=rf.error_object(info),
                                   completed_at=job.completed_at)
