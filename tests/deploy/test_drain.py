"""SIGTERM drains a process: it stops pulling, finishes or hands back what it holds, and exits 0 in its grace.

A worker process with provider calls in flight gets SIGTERM (what ``podman stop`` and Kubernetes send):

- with a grace longer than the calls, it finishes them (each billed once, no attempt interrupted) and exits;
- with a grace shorter than the calls, it hands them back (nak) as the grace runs out and exits, and a new
  worker takes them at once, long before the consumer's ``ack_wait`` would have brought them back.

Either way every job completes, none is billed twice, and the exit code is 0 within the grace (plus start-up
of the interpreter's shutdown). Processes are real (``python -m services``) against a real nats-server.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from shared.natsd import NatsServer, free_port
from tests.support.procs import ServiceProcess, wait_http_ready
from tests.support.wait import eventually

pytestmark = pytest.mark.fault
KEY = "sk-drain-admin"
JOBS = 16
ACK_WAIT_S = 60  # far beyond the test: anything that came back only by ack_wait would time the test out
TERMINAL = {"completed", "failed", "cancelled", "expired"}


def catalog(tmp: Path, latency_ms: int) -> Path:
    path = tmp / "catalog.yaml"
    path.write_text(f"""version: 1
extends_builtin: true
providers:
  - name: mock-drain
    type: mock
    max_in_flight: 8
    options: {{latency_ms: {latency_ms}}}
models:
  - name: drain-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{{provider: mock-drain, upstream_model: drain-1}}]
""")
    return path


async def in_flight(port: int) -> float:
    """The worker's provider calls in flight, from its /metrics."""
    async with httpx.AsyncClient(timeout=2) as http:
        try:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.HTTPError:
            return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("switchyard_worker_in_flight{") and '"mock-drain"' in line)


@pytest.mark.parametrize("latency_ms,grace_s", [(1500, 10.0), (3000, 0.5)], ids=["finishes", "hands-back"])
async def test_sigterm_drains_in_flight_work(tmp_path: Path, latency_ms: int, grace_s: float):
    nats = NatsServer(tmp_path / "nats").start()
    port, metrics = free_port(), free_port()
    env = {
        **nats.client_env(),  # each process connects as the bus role of its targets
        "SWITCHYARD_ADMIN_KEY": KEY,
        "SWITCHYARD_CATALOG_PATH": str(catalog(tmp_path, latency_ms)),
        "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
        "SWITCHYARD_GATEWAY__PORT": str(port),
        "SWITCHYARD_WORKERS__CONSUMER__ACK_WAIT_S": str(ACK_WAIT_S),
        "SWITCHYARD_LOG_LEVEL": "WARNING",
    }
    core = ServiceProcess("gateway,policy,router,audit", env, tmp_path).start()
    first = ServiceProcess("worker:mock-drain", env | {"SWITCHYARD_METRICS_PORT": str(metrics),
                                                        "SWITCHYARD_SHUTDOWN_GRACE_S": str(grace_s)},
                           tmp_path).start()
    second = ServiceProcess("worker:mock-drain", env, tmp_path)
    second.log_path = tmp_path / "worker-second.log"
    try:
        await wait_http_ready(f"http://127.0.0.1:{port}/readyz")
        await wait_http_ready(f"http://127.0.0.1:{metrics}/readyz")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                     headers={"authorization": f"Bearer {KEY}"}) as http:
            ids = []
            for i in range(JOBS):
                r = await http.post("/v1/jobs", json={"model": "drain-1",
                                                      "messages": [{"role": "user", "content": f"drain {i}"}]})
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            # The worker holds a full window of provider calls: now it is told to stop.
            held = await eventually(lambda: in_flight(metrics), timeout=30, interval=0.05)
            assert held >= 1
            signalled = time.monotonic()
            first.stop()  # SIGTERM, then waits for the exit
            took = time.monotonic() - signalled
            assert first.proc.returncode == 0, first.log_path.read_text()[-2000:]
            assert took < grace_s + 5, f"exit took {took:.1f}s with a {grace_s}s grace"
            second.start()

            states: dict[str, str] = {}

            async def all_done() -> bool:
                for job_id in [i for i in ids if i not in states]:
                    status = (await http.get(f"/v1/jobs/{job_id}")).json()["status"]
                    if status in TERMINAL:
                        states[job_id] = status
                return len(states) == len(ids)

            # Well within ack_wait: what the first worker held was finished or handed back, not abandoned.
            await eventually(all_done, timeout=ACK_WAIT_S / 2, interval=0.2,
                             message=lambda: f"jobs still open: {len(ids) - len(states)}")
            assert Counter(states.values()) == Counter({"completed": JOBS})
            ledger = (await http.get("/v1/ledger", params={"model": "drain-1", "limit": 1000})).json()["data"]
            billed = Counter(row["request_id"] for row in ledger)
            assert sorted(billed) == sorted(ids) and set(billed.values()) == {1}, billed

            outcomes = [[a["outcome"] for a in (await http.get(f"/v1/requests/{i}")).json()["attempts"]]
                        for i in ids]
            interrupted = sum(1 for o in outcomes if "interrupted" in o)
            print(f"\ndrain ({latency_ms} ms calls, {grace_s}s grace): {held:g} in flight at SIGTERM, exit 0 "
                  f"after {took:.2f}s, {interrupted} handed back and redone")
            if grace_s * 1000 > latency_ms:
                assert interrupted == 0, outcomes  # every call in flight was finished by the first worker
            else:
                assert interrupted >= 1, outcomes  # handed back, then done by the second
    finally:
        second.stop()
        first.stop()
        core.stop()
        nats.stop()
