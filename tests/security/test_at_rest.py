"""Finding 2: nothing readable at rest, and payloads leave the stream once they are no longer needed.

The attack: send a unique marker and PII values (an email address, a social security number) through a
synchronous, a streamed and an async (job) request to the embedded default, as ``make run`` starts it
(``python -m services --target all`` with the embedded nats-server), let them finish, stop it, and read every
file under its data directory byte by byte. Neither the marker nor the PII appears in clear: the JetStream
store (stream and KV) is encrypted with a key of its own, and the audit database keeps no prompt text.

Through the bus itself (the operator's credentials) the requests' payload-carrying events are gone from the
stream once every service has acknowledged them. The embedded server refuses a client without credentials,
and its generated secrets are files only their owner can read.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import httpx
import nats
import pytest

from shared.natsd import free_port
from tests.support.catalogs import SYSTEM_CATALOG
from tests.support.procs import ServiceProcess, wait_http_ready
from tests.support.wait import eventually

def files_containing(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    """Every file under ``root`` holding any of ``needles`` in clear, with the needles it holds."""
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [n.decode() for n in needles if n in data]
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


def test_the_grep_finds_what_is_in_clear(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "blob.bin").write_bytes(b"\x00\x01 prefix SYMARKER-1 suffix \xff")
    assert files_containing(tmp_path, [b"SYMARKER-1", b"absent"]) == {"sub/blob.bin": ["SYMARKER-1"]}


@pytest.fixture
async def embedded(tmp_path: Path):
    data = tmp_path / "data"
    nats_port, http_port = free_port(), free_port()
    env = {"SWITCHYARD_EMBEDDED_NATS": "true", "SWITCHYARD_EMBEDDED_NATS_PORT": str(nats_port),
           "SWITCHYARD_DATA_DIR": str(data), "SWITCHYARD_GATEWAY__PORT": str(http_port),
           "SWITCHYARD_CATALOG_PATH": str(SYSTEM_CATALOG),
           "SWITCHYARD_NATS__SWEEP_S": "0.2", "SWITCHYARD_LOG_LEVEL": "WARNING"}
    proc = ServiceProcess("all", env, tmp_path).start()
    try:
        await wait_http_ready(f"http://127.0.0.1:{http_port}/readyz", timeout=60)
        yield proc, data, f"http://127.0.0.1:{http_port}", f"nats://127.0.0.1:{nats_port}"
    finally:
        proc.stop()


async def test_no_prompt_marker_or_pii_is_readable_in_the_data_directory(embedded):
    proc, data, base, nats_url = embedded
    marker = f"SYMARK{uuid.uuid4().hex}"
    email = f"jane.{uuid.uuid4().hex[:10]}@example.org"
    ssn = f"5{uuid.uuid4().int % 100:02d}-{uuid.uuid4().int % 90 + 10:02d}-{uuid.uuid4().int % 9000 + 1000:04d}"
    prompt = f"Remember {marker}: write to {email}, my SSN is {ssn}."
    body = {"model": "mock-1", "messages": [{"role": "user", "content": prompt}]}
    rids = []
    key = (data / "admin.key").read_text().strip()  # generated and kept there, as make run does
    async with httpx.AsyncClient(base_url=base, timeout=30, headers={"authorization": f"Bearer {key}"}) as http:
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code < 500, r.text
        rids.append(r.headers["x-request-id"])
        async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            assert s.status_code < 500
            rids.append(s.headers["x-request-id"])
            async for _ in s.aiter_bytes():
                pass
        job = await http.post("/v1/jobs", json=body)
        assert job.status_code == 202, job.text
        rids.append(job.json()["id"])

        async def recorded(rid: str) -> bool:
            t = await http.get(f"/v1/requests/{rid}")
            return t.status_code == 200 and t.json()["status"] not in ("requested", "admitted", "in_progress")

        for rid in rids:
            await eventually(lambda rid=rid: recorded(rid), timeout=30, message=f"{rid} not recorded as finished")

    # The embedded server: no credentials, no entry; the operator (whose password is in the data dir) reads the
    # stream, where the requests' payloads no longer are once every service has acknowledged them.
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2,
                           error_cb=_quiet)
    passwords = json.loads((data / "nats" / "passwords.json").read_text())
    nc = await nats.connect(nats_url, user="operator", password=passwords["operator"], inbox_prefix="_INBOX.operator")
    try:
        await eventually(lambda: _stream_clear_of(nc, [marker, email, ssn]), timeout=20,
                         message="the requests' payloads are still in the stream")
    finally:
        await nc.close()

    proc.stop()  # everything flushed to disk, the server stopped with the process
    assert not proc.alive()
    needles = [marker.encode(), email.encode(), ssn.encode()]
    assert files_containing(data, needles) == {}
    for secret in (data / "nats" / "passwords.json", data / "nats" / "store.key", data / "nats" / "nats-server.conf",
                   data / "admin.key"):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600, secret
    assert b"SWITCHYARD_NATS_STORE_KEY" in (data / "nats" / "nats-server.conf").read_bytes()  # the key is not in it
    assert (data / "nats" / "store.key").read_text().strip() not in (data / "nats" / "nats-server.conf").read_text()


async def _stream_clear_of(nc, needles: list[str]) -> bool:
    js = nc.jetstream()
    state = (await js.stream_info("SWITCHYARD")).state
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            msg = await js.get_msg("SWITCHYARD", seq)
        except nats.js.errors.NotFoundError:
            continue  # removed
        if any(n.encode() in (msg.data or b"") for n in needles):
            return False
    return True


async def _quiet(_exc: Exception) -> None:
    return None
