"""OpenAI's Batch API with the official ``openai`` SDK against ``make run``'s default catalog (the mock provider):
upload, create, poll to the end, read the output and error files; bad lines named in a 400; limits; tenant
isolation; cancel; a gateway killed (SIGKILL) and restarted mid-batch, with every line answered once; and what
the Batch and Responses APIs keep (files, stored conversations) not readable in the store's files at rest.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from services.gateway.settings import GatewaySettings
from shared.natsd import NatsServer, free_port
from tests.support.api import sdk
from tests.support.governance import bearer, make_key, make_team
from tests.support.procs import ServiceProcess, wait_http_ready
from tests.support.system import ADMIN_KEY, OTHER_TENANT_KEY, make_settings, start_system
from tests.support.wait import eventually

MODEL = "mock-1"
ENDED = ("completed", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
async def gw(tmp_path_factory):
    """Switchyard with the built-in catalog on a bus of its own, with small file limits to test them."""
    root = tmp_path_factory.mktemp("batches")
    nats = NatsServer(root / "nats").start()
    settings = make_settings(nats, root / "data", catalog_path=None,
                             gateway=GatewaySettings(port=free_port(), max_file_bytes=256 * 1024,
                                                     max_batch_lines=500))
    running = await start_system(settings)
    yield running
    await running.close()
    nats.stop()


def line(custom_id: str, content: str, model: str = MODEL, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], **body}}


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


async def run_to_end(client: openai.AsyncOpenAI, batch_id: str, timeout: float = 30, interval: float = 0.1):
    seen = {}

    async def ended():
        b = await client.batches.retrieve(batch_id)
        seen["status"] = b.status
        return b if b.status in ENDED else None

    return await eventually(ended, timeout=timeout, interval=interval, message=lambda: f"batch stuck in {seen}")


def rows(content: bytes) -> list[dict]:
    return [json.loads(x) for x in content.decode().splitlines()]


async def test_batch_end_to_end(gw):
    client = sdk(gw)
    prompts = {f"req-{i}": f"Question number {i}" for i in range(12)}
    upload = await client.files.create(file=("questions.jsonl", jsonl([line(c, p) for c, p in prompts.items()])),
                                       purpose="batch")
    assert upload.object == "file" and upload.purpose == "batch" and upload.filename == "questions.jsonl"
    assert (await client.files.retrieve(upload.id)).bytes == upload.bytes
    batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"run": "e2e"})
    assert batch.status in ("validating", "in_progress") and batch.request_counts.total == 12
    done = await run_to_end(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 12, 0)
    assert done.error_file_id is None and done.metadata == {"run": "e2e"}
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = rows((await client.files.content(done.output_file_id)).content)
    assert sorted(r["custom_id"] for r in out) == sorted(prompts)
    for r in out:
        assert r["error"] is None and r["response"]["status_code"] == 200
        body = r["response"]["body"]
        assert body["object"] == "chat.completion"
        # The same answer a chat completion of that line gets (the mock is deterministic).
        direct = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompts[r["custom_id"]]}])
        assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
    again = await client.batches.retrieve(batch.id)  # idempotent: the same output, nothing moves further
    assert again.output_file_id == done.output_file_id and again.status == "completed"
    listed = await client.batches.list(limit=100)
    assert batch.id in [b.id for b in listed.data]
    files = await client.files.list()
    assert {upload.id, done.output_file_id} <= {f.id for f in files.data}


async def test_failed_lines_go_to_the_error_file_with_exact_counts(gw):
    client = sdk(gw)
    lines = [line("ok-1", "fine"), line("bad-model", "x", model="no-such-model"), line("ok-2", "also fine")]
    upload = await client.files.create(file=("mixed.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
    done = await run_to_end(client, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 2, 1)
    assert [r["custom_id"] for r in rows((await client.files.content(done.output_file_id)).content)] == \
        ["ok-1", "ok-2"]
    [err] = rows((await client.files.content(done.error_file_id)).content)
    assert err["custom_id"] == "bad-model" and err["response"]["status_code"] == 404
    assert err["response"]["body"]["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("content, where", [
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "mock-1", '
     b'"messages": [{"role": "user", "content": "x"}]}}\n{not json}\n', "line 2"),
    (jsonl([line("a", "x"), line("a", "y")]), "line 2"),
    (jsonl([line("a", "x"), {"custom_id": "b", "method": "GET", "url": "/v1/chat/completions", "body": {}}]),
     "line 2"),
    (jsonl([line("a", "x"), line("b", "y"), {**line("c", "z"), "url": "/v1/images/generations"}]), "line 3"),
    (jsonl([line("a", "x"), line("b", "y", temperature=9)]), "line 2"),
    (jsonl([line("a", "x", stream=True)]), "line 1"),
    (b"", "no lines"),
])
async def test_a_bad_line_is_a_400_naming_it(gw, content, where):
    with pytest.raises(openai.BadRequestError) as exc:
        await sdk(gw).files.create(file=("bad.jsonl", content), purpose="batch")
    assert where in exc.value.body["message"] and exc.value.body["param"] == "file", exc.value.body


async def test_limits_and_refusals(gw):
    client = sdk(gw)
    with pytest.raises(openai.APIStatusError) as exc:  # max_file_bytes is 256 KiB here
        await client.files.create(file=("big.jsonl", jsonl([line(f"c{i}", "x" * 3000) for i in range(100)])),
                                  purpose="batch")
    assert exc.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as exc:  # max_batch_lines is 500 here
        await client.files.create(file=("long.jsonl", jsonl([line(f"c{i}", "x") for i in range(501)])),
                                  purpose="batch")
    assert "at most 500" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        await client.files.create(file=("a.jsonl", jsonl([line("a", "x")])), purpose="fine-tune")
    assert exc.value.body["param"] == "purpose"
    upload = await client.files.create(file=("a.jsonl", jsonl([line("a", "x")])), purpose="batch")
    for kwargs, param in [({"endpoint": "/v1/embeddings"}, "endpoint"), ({"completion_window": "1h"},
                                                                        "completion_window")]:
        args = {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **kwargs}
        r = await gw.http.post("/v1/batches", json=args)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    with pytest.raises(openai.NotFoundError):
        await client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                                    completion_window="24h")


async def test_files_and_batches_are_tenant_isolated(gw):
    mine, theirs = sdk(gw), sdk(gw, key=OTHER_TENANT_KEY)
    upload = await mine.files.create(file=("mine.jsonl", jsonl([line("only-mine", "secret")])), purpose="batch")
    batch = await mine.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
    done = await run_to_end(mine, batch.id)
    for call in (lambda: theirs.files.retrieve(upload.id), lambda: theirs.files.content(upload.id),
                 lambda: theirs.files.content(done.output_file_id), lambda: theirs.files.delete(upload.id),
                 lambda: theirs.batches.retrieve(batch.id), lambda: theirs.batches.cancel(batch.id),
                 lambda: theirs.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                               completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            await call()
    assert upload.id not in [f.id for f in (await theirs.files.list()).data]
    assert batch.id not in [b.id for b in (await theirs.batches.list()).data]
    # Deleted means gone, for its owner too.
    assert (await mine.files.delete(upload.id)).deleted is True
    with pytest.raises(openai.NotFoundError):
        await mine.files.retrieve(upload.id)
    with pytest.raises(openai.NotFoundError):
        await mine.files.content(upload.id)


async def test_within_a_tenant_a_viewer_reads_and_a_member_changes_only_its_own_teams_batches_and_responses(gw):
    """As for jobs: another team's batch or stored response is one that does not exist to a viewer key (reading)
    and to a member key (cancelling, deleting)."""
    async with httpx.AsyncClient(base_url=gw.base_url, headers=bearer(ADMIN_KEY), timeout=10) as admin:
        for team in ("scope-a", "scope-b"):
            await make_team(admin, team)
        member_a, _ = await make_key(admin, "scope-a", role="member")
        viewer_b, _ = await make_key(admin, "scope-b", role="viewer")
        member_b, _ = await make_key(admin, "scope-b", role="member")
    owner = sdk(gw, key=member_a)
    upload = await owner.files.create(file=("a.jsonl", jsonl([line("team-a", "hi")])), purpose="batch")
    batch = await owner.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                       completion_window="24h")
    stored = await owner.responses.create(model=MODEL, input="team a's conversation", background=True)
    viewer = sdk(gw, key=viewer_b)
    for call in (lambda: viewer.batches.retrieve(batch.id), lambda: viewer.responses.retrieve(stored.id),
                 lambda: viewer.responses.input_items.list(stored.id)):
        with pytest.raises(openai.NotFoundError):
            await call()
    assert batch.id not in [b.id for b in (await viewer.batches.list()).data]
    member = sdk(gw, key=member_b)
    assert (await member.batches.retrieve(batch.id)).id == batch.id  # a member reads its tenant's, as for jobs
    for call in (lambda: member.batches.cancel(batch.id), lambda: member.responses.cancel(stored.id),
                 lambda: member.responses.delete(stored.id)):
        with pytest.raises(openai.NotFoundError):
            await call()
    assert (await owner.responses.retrieve(stored.id)).id == stored.id  # still there for its own team
    await run_to_end(owner, batch.id)


async def test_cancel_a_batch(system):
    """On the test catalog, whose mock can be slowed per request, so the lines are still running when cancelled."""
    client = sdk(system)
    slow = {"switchyard": {"mock": {"latency_ms": 4000}}}
    lines = [line(f"slow-{i}", f"slow {i}", **slow) for i in range(5)]
    upload = await client.files.create(file=("slow.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
    cancelled = await client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = await run_to_end(client, batch.id, timeout=10)
    assert done.status == "cancelled" and done.cancelled_at and done.output_file_id is None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 0, 5)
    errors = rows((await client.files.content(done.error_file_id)).content)
    assert sorted(e["custom_id"] for e in errors) == sorted(x["custom_id"] for x in lines)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(batch.id)


async def test_a_batch_survives_its_gateway_being_killed(tmp_path: Path):
    """The gateway runs as its own process and is SIGKILLed while it submits a batch's lines (the client never
    hears back); a new gateway process finds the batch, resumes its submission, runs it to the end from the state
    in KV, and every line is answered exactly once."""
    nats = NatsServer(tmp_path / "nats").start()
    port = free_port()
    env = {**nats.client_env(), "SWITCHYARD_ADMIN_KEY": ADMIN_KEY, "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
           "SWITCHYARD_GATEWAY__PORT": str(port), "SWITCHYARD_GATEWAY__BATCH_RESUME_AFTER_S": "1",
           "SWITCHYARD_LOG_LEVEL": "WARNING"}
    rest = ServiceProcess("policy,router,worker,audit", {**env, "SWITCHYARD_METRICS_PORT": str(free_port())},
                          tmp_path).start()
    gateway = ServiceProcess("gateway", env, tmp_path).start()
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_http_ready(base + "/readyz", timeout=60)
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0)
        n = 400
        upload = await client.files.create(file=("many.jsonl", jsonl([line(f"n{i}", f"item {i}") for i in range(n)])),
                                           purpose="batch")
        creating = asyncio.ensure_future(client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"))
        async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as http:
            async def listed():  # the batch exists once its record is written, before its lines are submitted
                data = (await http.get("/v1/batches")).json()["data"]
                return data[0] if data else None
            first = await eventually(listed, timeout=20, interval=0.02, message="the batch was never recorded")
        gateway.kill()  # mid-submission, most likely: the client never hears back
        with pytest.raises(openai.APIConnectionError):
            await creating
        gateway = ServiceProcess("gateway", env, tmp_path).start()
        await wait_http_ready(base + "/readyz", timeout=60)

        async def running():
            b = await client.batches.retrieve(first["id"])
            return b if b.status != "validating" else None
        mid = await eventually(running, timeout=20, interval=0.2, message="the submission was not resumed")
        done = await run_to_end(client, mid.id, timeout=60, interval=0.5)
        assert done.status == "completed"
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (n, n, 0)
        out = rows((await client.files.content(done.output_file_id)).content)
        assert sorted(r["custom_id"] for r in out) == sorted(f"n{i}" for i in range(n))  # each once
        assert len({r["response"]["request_id"] for r in out}) == n
        # The kill came while lines were still being submitted (400 lines take far longer than the poll that saw
        # the record), and the new gateway took the submission over.
        assert "resuming the submission of batch " + mid.id in gateway.log_path.read_text()
    finally:
        gateway.stop()
        rest.stop()
        nats.stop()


@pytest.mark.parametrize("encrypt", [True, False])
async def test_stored_conversations_and_files_are_not_readable_at_rest(tmp_path: Path, encrypt: bool):
    """A stored response and a batch input file carry a unique marker; once the system and its nats-server are
    stopped, no file under the server's store holds it in clear. The same run with the store's encryption off
    finds it there (so the search looks where these records are kept)."""
    marker = f"SYMARKER-{uuid.uuid4().hex}"
    nats = NatsServer(tmp_path / "nats", encrypt=encrypt).start()
    running = await start_system(make_settings(nats, tmp_path / "data", catalog_path=None))
    try:
        client = sdk(running)
        r = await client.responses.create(model=MODEL, input=f"remember {marker}")
        assert (await client.responses.retrieve(r.id)).id == r.id
        upload = await client.files.create(file=("m.jsonl", jsonl([line("m", f"say {marker}")])), purpose="batch")
        assert marker.encode() in (await client.files.content(upload.id)).content
    finally:
        await running.close()
        nats.stop()
    holding = [p for p in (tmp_path / "nats").rglob("*") if p.is_file() and marker.encode() in p.read_bytes()]
    kv_files = [p for p in holding if "KV_sy_conversations" in str(p) or "KV_sy_files" in str(p)]
    if encrypt:
        assert holding == []
    else:
        assert {("KV_sy_conversations" in str(p), "KV_sy_files" in str(p)) for p in kv_files} >= {(True, False),
                                                                                                   (False, True)}
