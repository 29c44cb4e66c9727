"""Finding 12, the low ones, each attempted against a running Switchyard:

- slow clients: a head sent a byte at a time, a connection that never sends, a body that drips, an
  oversized head — each cut off (408 / 431) within the configured deadline, not held open;
- embeddings ``dimensions`` far beyond any model: 400, not seconds of CPU;
- a member cancelling another team's job in its tenant: 404, as for a job that does not exist;
- a viewer key submitting a job: 403 at once, nothing queued;
- ids and names with a trailing newline: refused (404 / 400), never a 500 or 503;
- request ids: not predictable from the ids a client has seen (the Mersenne Twister clone that predicts a
  ``random.Random`` stream from 624 outputs does not predict them);
- the ops server of a process without a gateway listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from services.settings import Settings
from shared.natsd import free_port
from tests.security.conftest import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, MAX_HEAD_BYTES
from tests.support.api import poll_job
from tests.support.governance import bearer, make_key, make_team
from tests.support.system import MEMBER_KEY, start_replica
from tests.support.wait import eventually

# ---- slow and oversized requests ----------------------------------------------------------------------


async def connect(system) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = system.base_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def answer_while(reader: asyncio.StreamReader, drip: asyncio.Future, within: float) -> bytes:
    """Everything the server sends until it closes the connection, while ``drip`` keeps sending."""
    try:
        return await asyncio.wait_for(reader.read(-1), within)
    finally:
        drip.cancel()
        await asyncio.gather(drip, return_exceptions=True)


async def dripping(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    for i in range(len(data)):
        writer.write(data[i:i + 1])
        await writer.drain()
        await asyncio.sleep(every_s)


HEAD = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {MEMBER_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: 64\r\n\r\n").encode()


async def test_a_head_sent_byte_by_byte_is_cut_off(secure):
    reader, writer = await connect(secure)
    started = time.perf_counter()
    drip = asyncio.ensure_future(dripping(writer, HEAD, every_s=0.1))  # ~15 s for the whole head
    data = await answer_while(reader, drip, within=HEADER_TIMEOUT_S + 5)
    took = time.perf_counter() - started
    writer.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"request_timeout" in data and HEADER_TIMEOUT_S * 0.8 <= took < HEADER_TIMEOUT_S + 3


async def test_a_connection_that_never_sends_is_closed(secure):
    reader, writer = await connect(secure)
    data = await asyncio.wait_for(reader.read(-1), HEADER_TIMEOUT_S + 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]


async def test_a_body_that_drips_is_cut_off(secure):
    reader, writer = await connect(secure)
    writer.write(HEAD)  # the head at once, then the 64-byte body a byte every 0.2 s (~13 s)
    await writer.drain()
    started = time.perf_counter()
    drip = asyncio.ensure_future(dripping(writer, b"{" + b" " * 62 + b"}", every_s=0.2))
    data = await answer_while(reader, drip, within=BODY_TIMEOUT_S + 5)
    took = time.perf_counter() - started
    writer.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert took < BODY_TIMEOUT_S + 3


async def test_an_oversized_head_is_refused(secure):
    reader, writer = await connect(secure)
    writer.write(HEAD.replace(b"\r\n\r\n", b"\r\nx-padding: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 431"), data[:200]


async def test_an_ordinary_request_is_not_affected_by_the_deadlines(secure):
    reader, writer = await connect(secure)
    writer.write(HEAD.replace(b"content-length: 64", b"content-length: 2") + b"{}")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400"), data[:200]  # an invalid chat request, answered as usual


# ---- embeddings dimensions ---------------------------------------------------------------------------


async def test_embedding_dimensions_beyond_any_model_are_refused(system):
    started = time.perf_counter()
    r = await system.http.post("/v1/embeddings", json={"model": "mock-embed-1", "input": ["a"] * 64,
                                                       "dimensions": 400_000})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "dimensions" and time.perf_counter() - started < 2
    ok = await system.http.post("/v1/embeddings", json={"model": "mock-embed-1", "input": "a", "dimensions": 8192})
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 8192


# ---- jobs: another team's cancel, a viewer's submission ----------------------------------------------


async def test_a_member_cannot_cancel_another_teams_job(system):
    await make_team(system.http, "job-neighbours")
    neighbour, _ = await make_key(system.http, "job-neighbours")
    owner = bearer(MEMBER_KEY)  # team-a
    job = await system.http.post("/v1/jobs", headers=owner, json={
        "model": "slow-1", "messages": [{"role": "user", "content": "take your time"}]})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    async with httpx.AsyncClient(base_url=system.base_url, headers=bearer(neighbour)) as c:
        r = await c.post(f"/v1/jobs/{job_id}/cancel")
        missing = await c.post("/v1/jobs/job_00000000000000000000000000000000/cancel")
    assert r.status_code == missing.status_code == 404, r.text
    assert r.json()["error"]["code"] == missing.json()["error"]["code"]
    assert (await poll_job(system, job_id, key=MEMBER_KEY))["status"] == "completed"  # it ran, uncancelled


async def test_a_viewer_cannot_enqueue_a_job(system):
    await make_team(system.http, "job-viewers")
    viewer, _ = await make_key(system.http, "job-viewers", role="viewer")
    async with httpx.AsyncClient(base_url=system.base_url, headers=bearer(viewer)) as c:
        r = await c.post("/v1/jobs", json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 403, r.text
    assert "read-only" in r.json()["error"]["message"] and "x-request-id" not in r.headers  # nothing was queued


# ---- trailing newlines -------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/jobs/job_0123456789abcdef0123456789abcdef%0A"),
    ("POST", "/v1/jobs/job_0123456789abcdef0123456789abcdef%0A/cancel"),
    ("GET", "/v1/requests/req_0123456789abcdef0123456789abcdef%0A"),
    ("GET", "/v1/admin/teams/team-a%0A"),
    ("GET", "/v1/budgets/team-a%0A"),
    ("GET", "/v1/admin/keys/0123456789abcdef%0A"),
])
async def test_an_id_with_a_trailing_newline_is_not_found(system, method, path):
    r = await system.http.request(method, path)
    assert r.status_code == 404, (path, r.status_code, r.text)


@pytest.mark.parametrize("path,body", [
    ("/v1/admin/teams", {"name": "evil\n"}),
    ("/v1/admin/keys", {"team": "team-a\n"}),
])
async def test_a_name_with_a_trailing_newline_is_refused(system, path, body):
    r = await system.http.post(path, json=body)
    assert r.status_code == 400, r.text


# ---- request ids -------------------------------------------------------------------------------------


def _untemper(y: int) -> int:
    """The Mersenne Twister state word behind one 32-bit output (the tempering inverted)."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(5):
        t = y ^ ((t << 7) & 0x9D2C5680)
    y = t
    t = y
    for _ in range(2):
        t = y ^ (t >> 11)
    return t & 0xFFFFFFFF


def clone_from_ids(ids: list[int]) -> random.Random:
    """A ``random.Random`` in the state that produced ``ids`` with ``getrandbits(128)`` (156 ids = 624 words)."""
    words = [(i >> (32 * k)) & 0xFFFFFFFF for i in ids for k in range(4)][:624]
    clone = random.Random()
    clone.setstate((3, tuple(_untemper(w) for w in words) + (624,), None))
    return clone


def test_the_clone_predicts_a_mersenne_twister_id_stream():
    # The attack itself, against the generator the gateway used to have: it works.
    rng = random.Random(1234)
    ids = [rng.getrandbits(128) for _ in range(157)]
    assert clone_from_ids(ids[:156]).getrandbits(128) == ids[156]


async def test_request_ids_cannot_be_predicted_from_the_ones_a_client_saw(system):
    seen: list[str] = []
    for _ in range(157):  # one after the other, so no other request takes an id in between
        r = await system.http.post("/v1/chat/completions", json={
            "model": "mock-1", "max_tokens": 4, "messages": [{"role": "user", "content": "id please"}]})
        seen.append(r.headers["x-request-id"])
    assert len(set(seen)) == len(seen)
    values = [int(rid.removeprefix("req_"), 16) for rid in seen]
    assert all(len(rid) == len("req_") + 32 for rid in seen)
    assert clone_from_ids(values[:156]).getrandbits(128) != values[156]


# ---- the ops server's interface ------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


async def test_the_ops_server_of_a_process_without_a_gateway_listens_on_loopback(secure):
    port = free_port()
    settings = secure.deps.settings.model_copy(update={"metrics_port": port})
    replica = await start_replica(settings, "router")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as ops:
            async def answers() -> bool:
                try:
                    return (await ops.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False
            await eventually(answers, timeout=10)
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        await replica.stop()


def test_the_ops_interface_is_configurable(monkeypatch):
    assert Settings().metrics_host == "127.0.0.1"
    monkeypatch.setenv("SWITCHYARD_METRICS_HOST", "0.0.0.0")
    assert Settings().metrics_host == "0.0.0.0"
