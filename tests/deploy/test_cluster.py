"""The chart's topology on this machine (``tools/cluster.py``): the stream's leader node dies under load.

Three nats-server nodes form a JetStream cluster (R3 stream and KV, per-role users, encryption at rest) and two
processes of every component run against it. While clients send synchronous completions and submit jobs
through the balancer, the node leading the event stream is SIGKILLed, and restarted later. Checked
(DESIGN §3): every accepted request (a job answered 202, a completion answered with a request id) reaches a
terminal state, every completed one is billed exactly once (no request has two ledger rows), service
resumes, the stream has a new leader, and the restarted node rejoins; every process then drains on SIGTERM
and exits 0. The time without service is measured and printed; docs/deploy.md carries the figures.

The short run is part of ``make test``; ``make cluster-test`` runs the long one (SWITCHYARD_CLUSTER_FULL=1).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.wait import eventually
from tools.cluster import Cluster

pytestmark = pytest.mark.fault
CATALOG = Path(__file__).parent / "catalog.yaml"
MODEL = "cluster-1"
TERMINAL = {"completed", "failed", "cancelled", "expired"}
FULL = os.environ.get("SWITCHYARD_CLUSTER_FULL") == "1"
# (seconds of load before the kill, seconds the node stays dead, seconds of load after the restart)
TIMELINE = (15.0, 20.0, 25.0) if FULL else (4.0, 6.0, 4.0)
SYNC_CLIENTS = 8 if FULL else 4
JOB_INTERVAL_S = 0.05 if FULL else 0.1


@dataclass
class Load:
    """What the clients saw."""

    started: float = field(default_factory=time.monotonic)
    sync: list[tuple[float, float, int, str | None]] = field(default_factory=list)  # sent, done, status, rid
    jobs: list[str] = field(default_factory=list)  # accepted (202)
    job_refusals: Counter = field(default_factory=Counter)
    # 503s that say the request was not acknowledged: request id -> not_accepted (never runs) / outcome_unknown
    unacknowledged: dict[str, str] = field(default_factory=dict)

    def successes(self) -> list[float]:
        return sorted(done for _, done, status, _ in self.sync if status == 200)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest stretch within [start, end] with no completion answered 200."""
        points = [start, *[t for t in self.successes() if start <= t <= end], end]
        return max(b - a for a, b in zip(points, points[1:]))


async def run_load(http: httpx.AsyncClient, load: Load, stop: asyncio.Event) -> None:
    n = itertools.count()

    def body() -> dict:  # every prompt different: no response cache or coalescing between them
        return {"model": MODEL, "messages": [{"role": "user", "content": f"failover {next(n)}"}]}

    async def sync_client() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = await http.post("/v1/chat/completions", json=body(), headers={"x-switchyard-timeout": "60"})
                status, rid = r.status_code, r.headers.get("x-request-id")
                code = (r.json().get("error") or {}).get("code") if status == 503 else None
                if rid and code in ("not_accepted", "outcome_unknown"):
                    load.unacknowledged[rid] = code
            except httpx.HTTPError:
                status, rid = 0, None
                await asyncio.sleep(0.05)
            load.sync.append((sent, time.monotonic(), status, rid))

    async def job_client() -> None:
        while not stop.is_set():
            try:
                r = await http.post("/v1/jobs", json=body())
                if r.status_code == 202:
                    load.jobs.append(r.json()["id"])
                else:
                    load.job_refusals[r.status_code] += 1
            except httpx.HTTPError:
                load.job_refusals["connection"] += 1
            await asyncio.sleep(JOB_INTERVAL_S)

    await asyncio.gather(*(sync_client() for _ in range(SYNC_CLIENTS)), job_client())


async def terminal_states(http: httpx.AsyncClient, ids: list[str], path: str, timeout: float) -> dict[str, str]:
    states: dict[str, str] = {}

    async def all_ended() -> bool:
        pending = [i for i in ids if i not in states]
        for chunk in (pending[i:i + 50] for i in range(0, len(pending), 50)):
            for rid, r in zip(chunk, await asyncio.gather(*(http.get(path.format(i)) for i in chunk))):
                status = r.json().get("status") if r.status_code == 200 else None
                if status in TERMINAL or status in ("succeeded", "denied"):
                    states[rid] = status
        return len(states) == len(ids)

    try:
        await eventually(all_ended, timeout=timeout, interval=0.5)
    except AssertionError:
        pass  # the tally below names what never ended
    return states


async def ledger_rows(database_url: str) -> Counter:
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch("SELECT request_id, count(*) AS n FROM audit_ledger GROUP BY request_id")
    finally:
        await conn.close()
    return Counter({r["request_id"]: r["n"] for r in rows})


async def test_stream_leader_killed_under_load_loses_nothing(tmp_path: Path):
    cluster = Cluster(tmp_path, providers=["mock-cluster"], catalog_path=str(CATALOG))
    await cluster.start()
    codes: dict[str, int | None] = {}
    try:
        if cluster.database_url is None:
            pytest.skip("PostgreSQL is not listening on 127.0.0.1:5432: two audit replicas need it")
        assert cluster.nats.replicas_of() == 3  # the event stream, and the KV buckets, at R3
        assert cluster.nats.replicas_of("KV_sy_jobs") == 3 and cluster.nats.replicas_of("KV_sy_budgets") == 3
        async with httpx.AsyncClient(base_url=cluster.url, timeout=90, limits=httpx.Limits(max_connections=64),
                                     headers={"authorization": f"Bearer {cluster.admin_key}"}) as http:
            load, stop = Load(), asyncio.Event()
            clients = asyncio.ensure_future(run_load(http, load, stop))
            before, dead, after = TIMELINE
            await asyncio.sleep(before)  # the scenario's timeline: load, then the kill
            leader = cluster.nats.stream_leader()
            assert leader is not None
            killed_at = time.monotonic()
            cluster.nats.node(leader).kill()
            new_leader = await eventually(lambda: (lambda n: n if n and n != leader else None)(
                cluster.nats.stream_leader()), timeout=30, interval=0.05, message="no new stream leader")
            elected_s = time.monotonic() - killed_at
            await asyncio.sleep(max(0.0, dead - elected_s))  # the node stays dead this long
            cluster.nats.node(leader).start()
            restarted_at = time.monotonic()
            await asyncio.sleep(after)
            stop.set()
            await clients
            ended_at = time.monotonic()
            await eventually(lambda: cluster.nats.node(leader).jetstream_ready(), timeout=30,
                             message="the restarted node did not rejoin")

            accepted_sync = [rid for _, _, _, rid in load.sync if rid and rid not in load.unacknowledged]
            sync_states = await terminal_states(http, accepted_sync, "/v1/requests/{}", timeout=90)
            # Answered "not acknowledged": by now (every accepted request has ended) each either ran to an end
            # or never reached the stream; "not accepted" must never have run.
            unacked_states = await terminal_states(http, list(load.unacknowledged), "/v1/requests/{}", timeout=2)
            job_states = await terminal_states(http, load.jobs, "/v1/jobs/{}", timeout=120)
            rows = await ledger_rows(cluster.database_url)

            ok = [s for s in load.sync if s[2] == 200]
            statuses = Counter(s[2] for s in load.sync)
            gap = load.longest_gap(killed_at - 1.0, min(ended_at, restarted_at + after))
            worst = max(done - sent for sent, done, status, _ in ok)
            figures = {
                "killed": leader, "new_leader": new_leader, "election_s": round(elected_s, 2),
                "longest_gap_without_a_200_s": round(gap, 2), "slowest_200_s": round(worst, 2),
                "sync_requests": len(load.sync), "sync_statuses": dict(statuses),
                "sync_unacknowledged": dict(Counter(load.unacknowledged.values())),
                "jobs_accepted": len(load.jobs), "jobs_refused": dict(load.job_refusals),
                "jobs_completed": sum(1 for s in job_states.values() if s == "completed"),
                "ledger_rows": sum(rows.values()),
            }
            print(f"\ncluster failover ({'full' if FULL else 'short'} run): {figures}")

            lost_jobs = [j for j in load.jobs if j not in job_states]
            lost_sync = [r for r in accepted_sync if r not in sync_states]
            assert not lost_jobs, f"{len(lost_jobs)} accepted jobs never ended: {lost_jobs[:5]}"
            assert not lost_sync, f"{len(lost_sync)} accepted completions never ended: {lost_sync[:5]}"
            ran = [rid for rid, code in load.unacknowledged.items() if code == "not_accepted"
                   and (rid in unacked_states or rid in rows)]
            assert not ran, f"answered not_accepted, yet ran: {ran[:5]}"
            half_run = [rid for rid in load.unacknowledged if rid not in unacked_states and rid in rows]
            assert not half_run, f"answered outcome_unknown, billed, but no terminal state: {half_run[:5]}"
            assert Counter(job_states.values()) == Counter({"completed": len(load.jobs)}), Counter(job_states.values())
            duplicated = {rid: n for rid, n in rows.items() if n > 1}
            assert not duplicated, f"requests billed more than once: {duplicated}"
            billed = [rid for rid in [*load.jobs, *(s[3] for s in ok)] if rows.get(rid) != 1]
            assert not billed, f"completed requests not billed exactly once: {billed[:5]}"
            assert len(ok) > 0 and any(sent > restarted_at for sent, _, _, _ in ok), "service did not resume"
            assert new_leader != leader
    finally:
        codes = await cluster.stop()
    assert all(rc == 0 for rc in codes.values()), f"a process did not drain cleanly on SIGTERM: {codes}"


def test_cluster_forms_when_a_chosen_port_is_taken_before_the_node_binds_it(tmp_path: Path):
    """Ports are chosen free, but another process may bind one before nats-server does (a CI run once saw the
    cluster never form): the node that exits makes the cluster take fresh ports and start again."""
    import socket

    from tools.cluster import NatsCluster

    nats = NatsCluster(tmp_path)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", nats.nodes[1].port))
    squatter.listen()
    taken = nats.nodes[1].port
    try:
        nats.start(timeout=30)
        assert taken not in {n.port for n in nats.nodes}
        assert all(n.alive() and n.jetstream_ready() for n in nats.nodes)
        assert nats.nodes[0].monitor("/routez")["num_routes"] >= 2
    finally:
        nats.stop()
        squatter.close()
