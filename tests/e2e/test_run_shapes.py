"""The run shapes the docs name, each as real processes: single targets, comma lists, stage fusion on and off.

Each shape gets a bus of its own (a fresh nats-server) and must answer a synchronous completion, a stream and
a job, and record the request's trace; whether policy routed at admission follows fusion exactly; the
processes that run no gateway answer ``/readyz`` on ``SWITCHYARD_METRICS_PORT`` (the target table's ops
server), and a process's ``/readyz`` lists exactly the targets it was started with.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import nats as nats_py
import openai
import pytest

from shared.natsd import NatsServer, free_port
from tests.support.procs import ServiceProcess, wait_http_ready
from tests.support.wait import eventually

KEY = "sk-shape-admin-0123456789"
SHAPES = {
    # one process per target (Kubernetes: one Deployment each)
    "split": (["gateway"], ["policy"], ["router"], ["worker"], ["audit"]),
    # the request path in one process (it busy-polls), audit beside it
    "duo": (["gateway", "policy", "router", "worker"], ["audit"]),
    # the gateway alone, policy+router fused with a provider's worker, audit alone
    "trio": (["gateway"], ["policy", "router", "worker:mock"], ["audit"]),
}


@pytest.fixture
def nats(tmp_path: Path):
    server = NatsServer(tmp_path / "nats").start()  # a bus of its own: each shape creates its consumers anew
    yield server
    server.stop()


@pytest.mark.parametrize("shape, fuse", [("split", True), ("duo", True), ("trio", True), ("trio", False)])
async def test_every_documented_shape_answers_and_records(nats, tmp_path: Path, shape: str, fuse: bool):
    gateway_port = free_port()
    base = {
        **nats.client_env(),  # each process connects as the bus role of its targets
        "SWITCHYARD_NATS__SWEEP_S": "0",  # the events stay: the test counts them on the stream afterwards
        "SWITCHYARD_ADMIN_KEY": KEY,
        "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
        "SWITCHYARD_GATEWAY__PORT": str(gateway_port),
        "SWITCHYARD_ROUTER__FUSE_WITH_POLICY": "true" if fuse else "false",
        "SWITCHYARD_LOG_LEVEL": "WARNING",
    }
    procs, ops = [], {}
    try:
        for targets in SHAPES[shape]:
            env = dict(base)
            if "gateway" not in targets:
                ops[",".join(targets)] = port = free_port()
                env["SWITCHYARD_METRICS_PORT"] = str(port)
            procs.append(ServiceProcess(",".join(targets), env, tmp_path).start())
        await wait_http_ready(f"http://127.0.0.1:{gateway_port}/readyz", timeout=60)
        async with httpx.AsyncClient(timeout=10) as http:
            for spec, port in ops.items():
                await wait_http_ready(f"http://127.0.0.1:{port}/readyz", timeout=60)
                ready = (await http.get(f"http://127.0.0.1:{port}/readyz")).json()
                assert ready["ready"] and sorted(ready["targets"]) == sorted(spec.split(",")), ready

        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key=KEY, max_retries=0)
        r = await client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "shape"}])
        assert r.choices[0].message.content and r.usage.total_tokens > 0
        rid = r._request_id or r.id

        stream = await client.chat.completions.create(model="mock-1", stream=True,
                                                      stream_options={"include_usage": True},
                                                      messages=[{"role": "user", "content": "stream the shape"}])
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway_port}", timeout=10,
                                     headers={"authorization": f"Bearer {KEY}"}) as http:
            job = (await http.post("/v1/jobs", json={"model": "mock-1",
                                                     "messages": [{"role": "user", "content": "job"}]})).json()

            async def job_completed() -> dict | None:
                body = (await http.get(f"/v1/jobs/{job['id']}")).json()
                return body if body["status"] == "completed" else None
            done = await eventually(job_completed, timeout=30, message=f"job {job['id']} did not complete")
            assert done["result"]["choices"][0]["message"]["content"]

            async def traced() -> dict | None:
                t = await http.get(f"/v1/requests/{rid}")
                return t.json() if t.status_code == 200 and t.json().get("status") == "succeeded" else None
            trace = await eventually(traced, timeout=30, message=f"no trace of {rid}")
            assert [a["outcome"] for a in trace["attempts"]] == ["success"]

        # Fused, policy routed every admission itself (it lands on the subject no router reads); otherwise
        # (apart, or fusion turned off) every admission went through the router's consumer.
        nc = await nats_py.connect(**nats.connect_options())
        try:
            info = await nc.jetstream().stream_info("SWITCHYARD", subjects_filter="sy.evt.admitted.>")
            routed_at_admission = (info.state.subjects or {}).get("sy.evt.admitted.routed", 0)
        finally:
            await nc.close()
        fused = fuse and any({"policy", "router"} <= set(t) for t in SHAPES[shape])
        assert routed_at_admission == (3 if fused else 0)
    finally:
        for p in procs:
            p.stop()
    assert all(not p.alive() for p in procs)
