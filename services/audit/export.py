"""The audit export: every audit event, as the audit trail records it, to rotating JSONL files and/or a webhook.

Runs in the audit target when ``SWITCHYARD_AUDIT__EXPORT__FILE_DIR`` or
``..._WEBHOOK_URL`` is set, reading the stream through its own durable
consumer (``audit-export``, not audit's), so a slow or unreachable receiver
never holds up traces and the ledger, and what it has not delivered stays in
the stream: the retention sweep holds every event the export has not
acknowledged (``shared.bus.retention``), and an event is acknowledged only
after every configured sink took it.

Records are ``services.audit.trail`` records: metadata only, never prompt or
completion text, never a key. Stream events that are not audit events
(dispatches, attempts) are acknowledged without a record.

Delivery, one batch at a time in stream order:

- a batch closes when full (``batch``) or ``linger_s`` after its first event;
- each sink gets the batch; one that fails is retried with exponential backoff
  (``backoff_s`` doubling to ``backoff_max_s``) until it succeeds, while the
  events held are kept alive (``in_progress``) so the server never hands them
  out again; a sink that already took the batch is not given it again;
- only then are the batch's events acknowledged and the next batch begins, so
  events reach a receiver in stream order (per request, too);
- an event redelivered after its acknowledgement was lost is recognised by its
  stream sequence and not sent again by this process. Across a restart, an
  event whose acknowledgement was lost is sent again (at least once): every
  record carries a stable ``id`` to de-duplicate on.

Webhook formats: ``json`` posts a JSON array of records (``Authorization:
Bearer <token>`` when a token is set); ``splunk`` posts Splunk HTTP Event
Collector events, ``{"time", "host", "source", "sourcetype", "event"}`` one per
line, with ``Authorization: Splunk <token>``. Any 2xx is success; anything
else (including 4xx) is retried, since dropping audit events is worse than a
stalled export (the failure is logged and counted). The token lives in
settings only and is never logged; nor is the URL beyond its scheme and host.

Files: ``<file_dir>/audit.jsonl``, one record per line, flushed and fsynced
before the acknowledgement; past ``file_max_bytes`` it is renamed
``audit-<UTC time>.jsonl`` and the oldest beyond ``file_keep`` are removed.
Files are readable by this user only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import msgspec
from nats.aio.msg import Msg

from services.audit.settings import ExportSettings
from services.audit.trail import public, trail_row
from shared.bus import Subscription
from shared.bus.contract import delivery_of
from shared.bus.permissions import AUDIT_EXPORT_DURABLE
from shared.bus.pull import PullLoop
from shared.events import ALL_EVENTS, decoder
from shared.settings import ConsumerSettings

log = logging.getLogger("switchyard.audit.export")
_encoder = msgspec.json.Encoder()


class Sink(Protocol):
    """Somewhere audit records go; ``deliver`` raises when the batch was not taken."""

    name: str

    async def deliver(self, records: list[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


class FileSink:
    """Rotating JSONL files (see the module docstring)."""

    name = "file"

    def __init__(self, directory: str, max_bytes: int, keep: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.keep = keep

    def _write(self, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "audit.jsonl"
        if path.exists() and path.stat().st_size + len(data) > self.max_bytes and path.stat().st_size > 0:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            rotated = self.dir / f"audit-{stamp}-{time.time_ns() % 10**9:09d}.jsonl"
            path.rename(rotated)
            old = sorted(self.dir.glob("audit-*.jsonl"))
            for stale in old[: max(0, len(old) - self.keep)]:
                stale.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def deliver(self, records: list[dict[str, Any]]) -> None:
        data = b"".join(_encoder.encode(r) + b"\n" for r in records)
        await asyncio.to_thread(self._write, data)

    async def close(self) -> None:
        return None


class WebhookSink:
    """POSTs each batch to a webhook, as a JSON array or as Splunk HEC events."""

    name = "webhook"

    def __init__(self, s: ExportSettings) -> None:
        assert s.webhook_url is not None
        self.url = s.webhook_url
        self.splunk = s.webhook_format == "splunk"
        token = s.webhook_token.get_secret_value() if s.webhook_token else None
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Splunk {token}" if self.splunk else f"Bearer {token}"
        self.meta = {"host": s.splunk_host or socket.gethostname(), "source": s.splunk_source,
                     "sourcetype": s.splunk_sourcetype, **({"index": s.splunk_index} if s.splunk_index else {})}
        self.client = httpx.AsyncClient(timeout=s.timeout_s, headers=headers)
        parts = urlsplit(self.url)
        self.where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")  # for logs

    def body(self, records: list[dict[str, Any]]) -> bytes:
        """The request body for ``records`` in the configured format."""
        if not self.splunk:
            return _encoder.encode(records)
        return b"\n".join(_encoder.encode({"time": r["ts"], **self.meta, "event": r}) for r in records)

    async def deliver(self, records: list[dict[str, Any]]) -> None:
        response = await self.client.post(self.url, content=self.body(records))
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"{self.where} answered {response.status_code}")

    async def close(self) -> None:
        await self.client.aclose()


def sinks_of(s: ExportSettings) -> list[Sink]:
    """The sinks the settings configure (none: the export is off)."""
    out: list[Sink] = []
    if s.file_dir:
        out.append(FileSink(s.file_dir, s.file_max_bytes, s.file_keep))
    if s.webhook_url:
        out.append(WebhookSink(s))
    return out


def subscription(s: ExportSettings) -> Subscription:
    """The export's durable consumer: every event, one batch in flight, effectively never given up."""
    return Subscription(AUDIT_EXPORT_DURABLE, (ALL_EVENTS,), ConsumerSettings(
        batch=s.batch, concurrency=1, ack_wait_s=s.ack_wait_s, max_deliver=1_000_000, linger_s=s.linger_s))


class Exporter:
    """The export loop over one process's bus (see the module docstring)."""

    def __init__(self, bus: Any, s: ExportSettings, sinks: list[Sink], metrics: Any = None) -> None:
        self.bus = bus
        self.s = s
        self.sinks = sinks
        self.sub = subscription(s)
        self.held: deque[Msg] = deque()  # delivered to this process, not yet acknowledged, in arrival order
        self.arrived = asyncio.Event()
        self.exported_seq = 0  # the highest stream sequence acknowledged by this process
        self.failures = 0

    async def serve(self) -> None:
        """Run until cancelled; a session that fails (the bus gone, the consumer removed) starts again."""
        try:
            while True:
                try:
                    await self.run()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - what it has not acknowledged comes again
                    log.error("audit export stopped (%s); starting again in %gs", _describe(exc), self.s.backoff_max_s)
                    await asyncio.sleep(self.s.backoff_max_s)
        finally:
            for sink in self.sinks:
                await sink.close()

    async def run(self) -> None:
        """One session: pull, deliver, acknowledge, batch after batch."""
        await self.bus.ensure_consumer(self.sub)
        pull = PullLoop(self.bus, self.sub, self.s.batch * 2, self._collect)
        await pull.start()
        keepalive = asyncio.ensure_future(self._keep_alive())
        log.info("audit export: delivering to %s", ", ".join(
            getattr(sink, "where", sink.name) if sink.name == "webhook" else f"files in {self.s.file_dir}"
            for sink in self.sinks))
        try:
            while True:
                await self.arrived.wait()
                await self._linger()
                batch = [self.held[i] for i in range(min(self.s.batch, len(self.held)))]
                await self._export(batch)
                for _ in batch:
                    self.held.popleft()
                    pull.done()
                if not self.held:
                    self.arrived.clear()
        finally:
            keepalive.cancel()
            await pull.stop()
            for msg in self.held:  # back to the stream for the next session
                await _quiet(msg.nak())
            self.held.clear()
            self.arrived.clear()

    def _collect(self, msg: Msg) -> None:
        self.held.append(msg)
        self.arrived.set()

    async def _linger(self) -> None:
        deadline = time.monotonic() + self.s.linger_s
        while len(self.held) < self.s.batch and time.monotonic() < deadline:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        self.arrived.set()

    async def _export(self, batch: list[Msg]) -> None:
        records: list[dict[str, Any]] = []
        fresh: list[Msg] = []
        for msg in batch:
            seq = delivery_of(msg).stream_seq
            if seq <= self.exported_seq:
                continue  # its acknowledgement was lost: already delivered by this process
            fresh.append(msg)
            try:
                event = decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                log.error("audit export: undecodable event on %s (seq %d) skipped: %s", msg.subject, seq, exc)
                continue
            row = trail_row(event)
            if row is not None:
                records.append(public(row))
        if records:
            await self._deliver(records)
        await asyncio.gather(*(_quiet(m.ack()) for m in batch))
        if fresh:
            self.exported_seq = max(self.exported_seq, max(delivery_of(m).stream_seq for m in fresh))

    async def _deliver(self, records: list[dict[str, Any]]) -> None:
        """Every sink takes the batch, each retried with backoff until it does (a sink that took it is done)."""
        pending = list(self.sinks)
        tries = 0
        while pending:
            failed = []
            for sink in pending:
                try:
                    await sink.deliver(records)
                except Exception as exc:  # noqa: BLE001 - kept and retried: the events stay in the stream
                    failed.append(sink)
                    self.failures += 1
                    if tries == 0 or tries % 10 == 0:
                        log.warning("audit export: %s did not take %d events (try %d), retrying: %s",
                                    sink.name, len(records), tries + 1, _describe(exc))
            pending = failed
            if pending:
                tries += 1
                await asyncio.sleep(min(self.s.backoff_max_s, self.s.backoff_s * 2 ** (tries - 1)))
        if tries:
            log.info("audit export: delivered after %d retries", tries)

    async def _keep_alive(self) -> None:
        """Every third of ``ack_wait``: the events held (waiting or being retried) stay this process's."""
        while True:
            await asyncio.sleep(max(0.2, self.s.ack_wait_s / 3))
            for msg in list(self.held):
                await _quiet(msg.in_progress())


def _describe(exc: Exception) -> str:
    # httpx errors can carry the request, whose URL may hold credentials: only the class and status are shown.
    if isinstance(exc, httpx.HTTPError):
        return type(exc).__name__
    return str(exc)


async def _quiet(aw: Any) -> None:
    try:
        await aw
    except Exception as exc:  # noqa: BLE001 - a lost connection only means the event comes again
        log.debug("acknowledgement failed: %r", exc)


async def remove_stale_consumer(bus: Any) -> None:
    """The export is off: a consumer it left behind would hold every event in the stream, so it goes."""
    try:
        await bus.js.consumer_info(bus.settings.stream, AUDIT_EXPORT_DURABLE)
    except Exception:  # noqa: BLE001 - none (the usual case), or no right to look: nothing to remove
        return
    log.warning("audit export is not configured: removing its consumer %s (its undelivered events are no longer "
                "held for it)", AUDIT_EXPORT_DURABLE)
    await bus.js.delete_consumer(bus.settings.stream, AUDIT_EXPORT_DURABLE)
