"""Files of the Batch API in JetStream KV (``sy_files``): uploaded batch input and the batches' output files.

KV layout::

    <tenant>.<file id>.meta     FileRecord   name, purpose, size, chunk count, expiry
    <tenant>.<file id>.c<n>     bytes        the content, in chunks of ``CHUNK_BYTES`` (a KV value is one
                                             NATS message, whose size the server caps)

The chunks are written before the record that names them, so a file is listed
and readable only once it is whole; deleting removes the record first, then the
chunks. The tenant is part of every key: another tenant's file id is not found.
Records and chunks expire ``NatsSettings.file_ttl_s`` after they were written
(a file is never rewritten); the store is encrypted at rest with the rest of
JetStream.
"""

from __future__ import annotations

from msgspec import Struct
from nats.js.kv import KeyValue

from shared.errors import ServiceUnavailable
from shared.ids import check_name
from shared.state.kv import Codec, keys_matching, kv_get, read, tenant_key, write

WHAT = "file store"
CHUNK_BYTES = 512 * 1024


class FileRecord(Struct, kw_only=True, omit_defaults=True):
    """One stored file, as the Files API shows it (plus its owner and chunk count)."""

    id: str
    tenant: str
    filename: str
    purpose: str  # batch | batch_output
    bytes: int
    created_at: float
    expires_at: float
    chunks: int
    lines: int = 0

    def public(self) -> dict:
        """OpenAI's ``file`` object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at),
                "expires_at": int(self.expires_at), "filename": self.filename, "purpose": self.purpose,
                "status": "processed", "status_details": None}


CODEC: Codec[FileRecord] = Codec(FileRecord)


class FileStore:
    """Files per tenant over one KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def put(self, record: FileRecord, content: bytes) -> FileRecord:
        """Store ``content`` under ``record`` (chunks first, then the record); writing the same id twice with
        the same content is harmless (batch output files are written by whoever finalizes the batch)."""
        prefix = tenant_key(record.tenant, record.id)
        if prefix is None:
            raise ValueError(f"bad file id {record.id!r}")
        for n in range(record.chunks):
            await write(self.kv, f"{prefix}.c{n}", content[n * CHUNK_BYTES:(n + 1) * CHUNK_BYTES], WHAT)
        await write(self.kv, f"{prefix}.meta", CODEC.encode(record), WHAT)
        return record

    async def get(self, tenant: str, file_id: str) -> FileRecord | None:
        """The tenant's file, or None."""
        prefix = tenant_key(tenant, file_id)
        return await read(self.kv, f"{prefix}.meta", CODEC, WHAT) if prefix else None

    async def content(self, record: FileRecord) -> bytes:
        """The file's bytes (ServiceUnavailable if a chunk went missing: it expired with the store's TTL)."""
        prefix = tenant_key(record.tenant, record.id)
        parts = []
        for n in range(record.chunks):
            entry = await kv_get(self.kv, f"{prefix}.c{n}", WHAT)
            if entry is None:
                raise ServiceUnavailable(f"file {record.id} is incomplete in the {WHAT}")
            parts.append(entry.value or b"")
        return b"".join(parts)

    async def delete(self, record: FileRecord) -> None:
        """Remove the record, then its chunks (the bucket keeps one revision: the data leaves the store)."""
        prefix = tenant_key(record.tenant, record.id)
        try:
            await self.kv.delete(f"{prefix}.meta")
            for n in range(record.chunks):
                await self.kv.delete(f"{prefix}.c{n}")
        except Exception as exc:  # noqa: BLE001
            raise ServiceUnavailable(f"the {WHAT} is unavailable") from exc

    async def list(self, tenant: str) -> list[FileRecord]:
        """The tenant's files, newest first."""
        out = []
        for k in await keys_matching(self.kv, f"{check_name(tenant, 'tenant')}.*.meta", WHAT):
            record = await read(self.kv, k, CODEC, WHAT)
            if record is not None:
                out.append(record)
        return sorted(out, key=lambda r: (-r.created_at, r.id))


def chunk_count(size: int) -> int:
    """How many chunks ``size`` bytes take (an empty file still has its one, empty, chunk)."""
    return max(1, -(-size // CHUNK_BYTES))

