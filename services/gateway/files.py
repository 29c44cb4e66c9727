"""The Files API, as far as the Batch API needs it: upload a batch's JSONL input, read, list and delete files,
and download batch output files.

``POST /v1/files`` takes ``multipart/form-data`` with ``file`` and ``purpose``
(``batch``; other purposes are refused with a 400). The file is checked line by
line before it is stored — each line a JSON object with a unique ``custom_id``,
``method: POST``, a ``url`` the Batch API runs and a ``body`` that is a valid
request for it — and the first bad line is named in the 400. Files are
size-limited (``max_file_bytes``, 413 beyond) and line-limited
(``max_batch_lines``), kept per tenant in ``sy_files`` (encrypted at rest) and
expire ``NatsSettings.file_ttl_s`` after upload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import handlers as h
from services.gateway import schemas as S
from services.gateway.settings import GatewaySettings
from services.gateway.web import principal_of, read_body, refuse_viewer
from services.ops import json_response
from shared.auth import KeyStore
from shared.bus import Bus
from shared.errors import InvalidRequest, NotFound, PayloadTooLarge, SwitchyardError
from shared.state.buckets import FILES
from shared.state.files import FileRecord, FileStore, chunk_count

BATCH_ENDPOINTS = ("/v1/chat/completions",)  # what a batch line may call (jobs run chat completions)
MAX_CUSTOM_ID = 64
_MULTIPART_OVERHEAD = 64 * 1024  # the form's other field and its boundaries, beyond the file itself
# The endpoints' shapes, for the OpenAPI document.
FILE = S.obj({"id": S.STR, "object": {"const": "file"}, "bytes": S.INT, "created_at": S.INT, "filename": S.STR,
              "purpose": S.STR}, {"expires_at": S.INT, "status": S.STR})
FILE_LIST = S.list_of(FILE)
FILE_DELETED = S.obj({"id": S.STR, "object": {"const": "file"}, "deleted": {"type": "boolean"}})
UPLOAD_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "JSONL, one request a line"},
                   "purpose": {"type": "string", "enum": ["batch"]}}}}}}}
FILE_CONTENT = {"responses": {"200": {"description": "OK", "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}}


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch input file."""

    number: int  # 1-based, as an editor shows it
    custom_id: str
    url: str
    body: bytes


def _line_error(number: int, message: str) -> InvalidRequest:
    return InvalidRequest(f"line {number}: {message}", param="file", code="invalid_batch_line")


def batch_lines(content: bytes, max_lines: int, max_body_bytes: int) -> list[BatchLine]:
    """The requests of a batch input file, each checked; a 400 naming the first bad line."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the file is not UTF-8 (byte {exc.start})", param="file") from None
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()  # the newline that ends the last line
    if not rows:
        raise InvalidRequest("the file has no lines; a batch input file has one JSON request per line",
                             param="file")
    if len(rows) > max_lines:
        raise InvalidRequest(f"the file has {len(rows)} lines; a batch takes at most {max_lines}", param="file")
    out: list[BatchLine] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        row = row.rstrip("\r")
        if not row.strip():
            raise _line_error(i, "empty line; each line must be one JSON request")
        try:
            item = msgspec.json.decode(row)
        except msgspec.DecodeError as exc:
            raise _line_error(i, f"not valid JSON ({exc})") from None
        if not isinstance(item, dict):
            raise _line_error(i, "must be a JSON object with custom_id, method, url and body")
        extra = set(item) - {"custom_id", "method", "url", "body"}
        if extra:
            raise _line_error(i, f"unknown field {sorted(extra)[0]!r}; a line has custom_id, method, url and body")
        cid = item.get("custom_id")
        if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID:
            raise _line_error(i, f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters")
        if cid in seen:
            raise _line_error(i, f"custom_id {cid!r} appears twice; each must be unique in the file")
        seen.add(cid)
        if item.get("method") != "POST":
            raise _line_error(i, "method must be POST")
        if item.get("url") not in BATCH_ENDPOINTS:
            raise _line_error(i, f"url must be one of {', '.join(BATCH_ENDPOINTS)} (got {item.get('url')!r})")
        if not isinstance(item.get("body"), dict):
            raise _line_error(i, "body must be a JSON object: the request")
        body = msgspec.json.encode(item["body"])
        try:
            chat = h.parse_chat_request(body, max_body_bytes)
        except SwitchyardError as exc:
            where = f" (body.{exc.param})" if exc.param else ""
            raise _line_error(i, f"{exc.message}{where}") from None
        if chat.stream:
            raise _line_error(i, "a batch request cannot stream (body.stream)")
        out.append(BatchLine(number=i, custom_id=cid, url=item["url"], body=body))
    return out


def page(items: list, ident: Callable[[Any], str], after: str | None, limit: int) -> tuple[list, bool]:
    """The items after the one with id ``after`` (cursor pagination), at most ``limit``, and whether more follow."""
    if after:
        ids = [ident(i) for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    return items[:limit], len(items) > limit


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high] (400 naming it otherwise)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}", param=name)
    return value


def list_body(data: list[dict], has_more: bool) -> dict:
    """OpenAI's cursor-paginated list object."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def parse_form(body: bytes, content_type: str) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """A ``multipart/form-data`` body: its text fields, and the ``file`` field's (filename, bytes)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest("send the file as multipart/form-data with fields 'file' and 'purpose'")
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise InvalidRequest("the multipart/form-data body could not be read (missing boundary?)")
    fields: dict[str, str] = {}
    file: tuple[str, bytes] | None = None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            file = (part.get_filename() or "upload.jsonl", payload)
        elif isinstance(name, str):
            fields[name] = payload.decode("utf-8", "replace")
    return fields, file


class Files:
    """The file endpoints, over the files bucket every gateway replica shares."""

    def __init__(self, bus: Bus, keyring: KeyStore, settings: GatewaySettings, ttl_s: float) -> None:
        self.bus = bus
        self.keyring = keyring
        self.settings = settings
        self.ttl_s = ttl_s
        self.store: FileStore | None = None
        self.ids = h.RequestIds()

    async def start(self) -> None:
        self.store = FileStore(await self.bus.kv(FILES))

    async def upload(self, request: Request) -> Response:
        principal = refuse_viewer(principal_of(self.keyring, request))
        limit = self.settings.max_file_bytes
        body = await read_body(request, limit + _MULTIPART_OVERHEAD)
        fields, file = parse_form(body, request.headers.get("content-type", ""))
        purpose = fields.get("purpose")
        if purpose != "batch":
            raise InvalidRequest(f"purpose must be 'batch' (the Batch API's input); got {purpose!r}",
                                 param="purpose")
        if any(k.startswith("expires_after") for k in fields):
            raise InvalidRequest("expires_after is not supported: every file expires after the gateway's file TTL "
                                 "(see expires_at)", param="expires_after")
        if file is None:
            raise InvalidRequest("the form has no 'file' field", param="file")
        filename, content = file
        if len(content) > limit:
            raise PayloadTooLarge(f"the file is {len(content)} bytes; the limit is {limit}", param="file")
        lines = batch_lines(content, self.settings.max_batch_lines, self.settings.max_body_bytes)
        record = await self.save(principal.tenant, filename[:256], "batch", content, lines=len(lines))
        return json_response(record.public())

    async def save(self, tenant: str, filename: str, purpose: str, content: bytes, *, lines: int = 0,
                   file_id: str | None = None) -> FileRecord:
        """Store a file for ``tenant`` (batch output files are written here too, under the ids they were given)."""
        now = time.time()
        record = FileRecord(id=file_id or self.ids.new("file-"), tenant=tenant, filename=filename, purpose=purpose,
                            bytes=len(content), created_at=now, expires_at=now + self.ttl_s,
                            chunks=chunk_count(len(content)), lines=lines)
        return await self.store.put(record, content)

    async def own(self, request: Request, file_id: str, param: str = "file_id") -> FileRecord:
        """The caller's tenant's file; 404 otherwise (another tenant's file does not exist for it)."""
        record = await self.store.get(principal_of(self.keyring, request).tenant, file_id)
        if record is None:
            raise NotFound(f"No such File object: {file_id}", param=param)
        return record

    async def get(self, request: Request, file_id: str) -> Response:
        return json_response((await self.own(request, file_id)).public())

    async def content(self, request: Request, file_id: str) -> Response:
        record = await self.own(request, file_id)
        return Response(await self.store.content(record), media_type="application/octet-stream",
                        headers={"content-disposition": f'attachment; filename="{record.filename}"'})

    async def delete(self, request: Request, file_id: str) -> Response:
        refuse_viewer(principal_of(self.keyring, request))
        record = await self.own(request, file_id)
        await self.store.delete(record)
        return json_response({"id": record.id, "object": "file", "deleted": True})

    async def list(self, request: Request) -> Response:
        principal = principal_of(self.keyring, request)
        purpose = request.query_params.get("purpose")
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be asc or desc", param="order")
        limit = int_param(request, "limit", 10_000, 1, 10_000)
        records = [r for r in await self.store.list(principal.tenant) if purpose is None or r.purpose == purpose]
        if order == "asc":
            records.reverse()
        chosen, more = page(records, lambda r: r.id, request.query_params.get("after"), limit)
        return json_response(list_body([r.public() for r in chosen], more))
