"""``make run``'s shape: ``--target all --embedded-nats --audit-process`` as a real process tree.

Audit runs in a child process of its own: it records what the request path does, answers on its own
``/readyz``, comes back after a SIGKILL (nothing published meanwhile is lost: its consumer is durable), stops
after the parent on SIGTERM, and ends when the parent is SIGKILLed too (it follows its parent), as does the
embedded nats-server.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from shared.natsd import free_port
from tests.support.procs import ServiceProcess, wait_http_ready
from tests.support.wait import eventually

KEY = "sk-audit-process-admin-0123456789"


def children(pid: int) -> list[int]:
    """Every child of ``pid``, whichever of its threads started it (a restarted one: the supervising thread)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def audit_child(parent: int) -> int | None:
    return next((c for c in children(parent) if "--target audit" in cmdline(c)), None)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped


@pytest.fixture
def tree(tmp_path: Path):
    gateway, metrics = free_port(), free_port()
    env = {
        "SWITCHYARD_EMBEDDED_NATS": "true",
        "SWITCHYARD_EMBEDDED_NATS_PORT": str(free_port()),
        "SWITCHYARD_AUDIT_PROCESS": "true",
        "SWITCHYARD_ADMIN_KEY": KEY,
        "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
        "SWITCHYARD_GATEWAY__PORT": str(gateway),
        "SWITCHYARD_METRICS_PORT": str(metrics),
        "SWITCHYARD_LOG_LEVEL": "WARNING",
    }
    main = ServiceProcess("all", env, tmp_path).start()
    nats_pids: list[int] = []
    try:
        yield main, gateway, metrics, nats_pids
    finally:
        main.stop()
        for pid in [*children(main.proc.pid), *nats_pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def answered_and_audited(http: httpx.AsyncClient, text: str) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "mock-1", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]

    async def traced() -> dict | None:
        t = await http.get(f"/v1/requests/{rid}")
        return t.json() if t.status_code == 200 and t.json().get("status") == "succeeded" else None
    trace = await eventually(traced, timeout=30, message=f"no trace of {rid}")
    assert [a["outcome"] for a in trace["attempts"]] == ["success"]


async def test_audit_runs_in_a_child_that_is_restarted_and_stops_with_its_parent(tree):
    main, gateway, metrics, nats_pids = tree
    await wait_http_ready(f"http://127.0.0.1:{gateway}/readyz", timeout=60)
    await wait_http_ready(f"http://127.0.0.1:{metrics}/readyz", timeout=60)
    pid = main.proc.pid
    nats_pids.extend(c for c in children(pid) if "nats-server" in cmdline(c))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway}", timeout=10,
                                 headers={"authorization": f"Bearer {KEY}"}) as http:
        ready = (await http.get(f"http://127.0.0.1:{gateway}/readyz")).json()
        assert "audit" not in ready["targets"] and "gateway" in ready["targets"], ready
        ready = (await http.get(f"http://127.0.0.1:{metrics}/readyz")).json()
        assert ready["targets"] == {"audit": True}, ready
        first = audit_child(pid)
        assert first is not None and os.getpriority(os.PRIO_PROCESS, first) >= 10
        await answered_and_audited(http, "audited by the child")

        os.kill(first, signal.SIGKILL)
        second = await eventually(lambda: (c := audit_child(pid)) not in (None, first) and c, timeout=20,
                                  message="audit's child was not restarted")
        # Requests go on while audit is down and back; what they published is recorded once it is back.
        await answered_and_audited(http, "audited after the restart")
        assert main.alive()

    os.kill(pid, signal.SIGTERM)
    main.proc.wait(40)
    await eventually(lambda: gone(second), timeout=10, message="audit's child outlived its parent's stop")


async def test_the_child_ends_when_its_parent_is_killed(tree):
    main, gateway, metrics, nats_pids = tree
    await wait_http_ready(f"http://127.0.0.1:{metrics}/readyz", timeout=60)
    pid = main.proc.pid
    nats_pids.extend(c for c in children(pid) if "nats-server" in cmdline(c))
    child = audit_child(pid)
    assert child is not None and nats_pids
    main.kill()
    await eventually(lambda: gone(child), timeout=15, message="audit's child outlived its SIGKILLed parent")
    # The embedded nats-server follows its parent too: a SIGKILLed `make run` leaves no server on its port.
    await eventually(lambda: all(gone(n) for n in nats_pids), timeout=20,
                     message="the embedded nats-server outlived its SIGKILLed parent")


def test_the_childs_environment_joins_the_parents_bus_and_never_starts_a_second_server(monkeypatch):
    from services.supervise import CHILD_NICE, child_env

    monkeypatch.setenv("SWITCHYARD_EMBEDDED_NATS", "true")
    monkeypatch.setenv("SWITCHYARD_ADMIN_KEY", KEY)
    env = child_env(nats_url="nats://127.0.0.1:4", passwords_file="/x/passwords.json", nice=0, metrics_port=9)
    assert "SWITCHYARD_EMBEDDED_NATS" not in env and env["SWITCHYARD_ADMIN_KEY"] == KEY
    assert env["SWITCHYARD_NATS__URL"] == "nats://127.0.0.1:4"
    assert env["SWITCHYARD_NATS__PASSWORDS_FILE"] == "/x/passwords.json"
    assert env["SWITCHYARD_NICE"] == str(CHILD_NICE) and env["SWITCHYARD_METRICS_PORT"] == "9"
    assert child_env(nats_url="n", passwords_file=None, nice=15, metrics_port=None)["SWITCHYARD_NICE"] == "15"
