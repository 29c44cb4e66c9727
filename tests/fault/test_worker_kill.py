"""Fault test: services as separate processes; the worker is SIGKILLed mid-flight and restarted.

Invariants checked (DESIGN §3): every accepted job reaches exactly one
terminal state, none is lost, no ledger row is duplicated, billing matches
the completed jobs, and the trace shows the attempt that was retried after the
worker died (an ``interrupted`` delivery followed by the final outcome).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from shared.natsd import NatsServer, free_port
from tests.support.invariants import final_job_states, tally
from tests.support.procs import ServiceProcess, wait_http_ready
from tests.support.wait import eventually

pytestmark = pytest.mark.fault
KEY = "sk-fault-admin"
JOBS = 200


async def submit_jobs(http: httpx.AsyncClient, n: int) -> list[str]:
    async def one(i: int) -> str:
        r = await http.post("/v1/jobs", json={"model": "fault-1",
                                              "messages": [{"role": "user", "content": f"job {i}"}]})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def billed_rows(http: httpx.AsyncClient) -> int:
    return len((await http.get("/v1/ledger", params={"model": "fault-1", "limit": 1000})).json()["data"])


def nice_of(pid: int) -> int:
    """The nice value of a process, from /proc (the 19th field of its stat line)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])


async def test_worker_sigkill_mid_flight_loses_nothing(tmp_path: Path):
    nats = NatsServer(tmp_path / "nats").start()
    port = free_port()
    env = {
        **nats.client_env(),  # each process connects as the bus role of its targets
        "SWITCHYARD_ADMIN_KEY": KEY,
        "SWITCHYARD_CATALOG_PATH": str(Path(__file__).parent / "catalog.yaml"),
        "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
        "SWITCHYARD_GATEWAY__PORT": str(port),
        # Short ack wait so the dead worker's attempts are redelivered within seconds.
        "SWITCHYARD_WORKERS__CONSUMER__ACK_WAIT_S": "2",
        "SWITCHYARD_LOG_LEVEL": "WARNING",
    }
    core = ServiceProcess("gateway,policy,router,audit", env, tmp_path).start()
    # As on one host in the bench's split shape: the pipeline runs below the gateway's CPU priority.
    worker = ServiceProcess("worker:mock-fault", env | {"SWITCHYARD_NICE": "10"}, tmp_path).start()
    try:
        await wait_http_ready(f"http://127.0.0.1:{port}/readyz")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                     headers={"authorization": f"Bearer {KEY}"}) as http:
            ids = await submit_jobs(http, JOBS)
            # 200 jobs × 400 ms at 20 in flight ≈ 4 s of work: kill the worker while it is busy, once its
            # first round of jobs is billed (the next round is then in flight).
            await eventually(lambda: billed_rows(http), timeout=30, interval=0.05)
            assert worker.alive()
            assert nice_of(worker.proc.pid) == 10
            worker.kill()
            # Behaviour under test: a second with no worker at all (jobs wait in the stream, the dead worker's
            # attempts wait for their ack wait to run out); this sleep is that outage, not a wait for a state.
            await asyncio.sleep(1.0)
            worker.start()

            states = await final_job_states(http, ids, timeout=90)
            ledger = (await http.get("/v1/ledger", params={"model": "fault-1", "limit": 1000})).json()
            t = tally(ids, {i: s["status"] for i, s in states.items()}, ledger["data"])
            print(f"\nfault tally: {t}")
            assert t.lost == 0, f"{t.lost} jobs never reached a terminal state"
            assert t.terminal == t.submitted
            assert t.completed == JOBS, Counter(s["status"] for s in states.values())
            assert t.duplicated_ledger_rows == 0
            assert t.billed == t.completed

            # The trace shows the attempt the dead worker left behind, then its retry.
            interrupted = []
            for job_id in ids:
                trace = (await http.get(f"/v1/requests/{job_id}")).json()
                outcomes = [a["outcome"] for a in trace["attempts"]]
                assert outcomes[-1] == "success", trace
                if "interrupted" in outcomes:
                    interrupted.append(outcomes)
            assert interrupted, "no trace shows an interrupted attempt: the worker was not killed mid-flight"
            assert all(o.index("interrupted") < o.index("success") for o in interrupted)
            print(f"traces with an interrupted delivery: {len(interrupted)}")
    finally:
        worker.stop()
        core.stop()
        nats.stop()
