"""Audit in a child process of its own (``--audit-process``, ``SWITCHYARD_AUDIT_PROCESS``): the process layer.

Audit reads every event of every request and writes the store; in the request path's process its batches
and its SQLite thread take the event loop and the GIL that requests wait for (docs/performance). With this
on, a process started with audit among other targets runs the others itself and audit as a child: at a
lower CPU priority, connected to the same bus as its own role, restarted when it dies (its durable consumer
keeps every event meanwhile), and stopped after this process's own drain. The child follows its parent: it
gets SIGTERM when the parent dies, however it dies.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from shared.natsd import die_with

log = logging.getLogger("switchyard.supervise")

PARENT_ENV = "SWITCHYARD_PARENT_PID"  # set for a child: it ends when that process does
CHILD_NICE = 10  # the pipeline's nice on one host (SWITCHYARD_NICE)


def follow_parent() -> None:
    """In a child started by ``Child``: receive SIGTERM when the parent dies (Linux), and stop at once if it
    is gone already (it died between the fork and this call)."""
    parent = os.environ.get(PARENT_ENV)
    if parent:
        die_with(int(parent))


class Child:
    """One target list run as a child process: started, restarted with backoff when it dies, stopped on ``stop``."""

    MAX_BACKOFF_S = 10.0
    STABLE_S = 30.0  # a child that ran this long before dying restarts at once

    def __init__(self, targets: list[str], env: dict[str, str], grace_s: float) -> None:
        self.targets = targets
        self.env = {**env, PARENT_ENV: str(os.getpid())}
        self.grace_s = grace_s
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="supervise-" + ",".join(targets), daemon=True)

    @property
    def name(self) -> str:
        return ",".join(self.targets)

    def start(self) -> "Child":
        self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            # Its own session: its nice applies to its own autogroup, and a terminal's Ctrl-C reaches only
            # this process, which then stops the child after its own drain.
            self.proc = subprocess.Popen([sys.executable, "-m", "services", "--target", self.name], env=self.env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        print(f"switchyard: {self.name} in a child process (pid {self.proc.pid})", flush=True)

    def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            proc, started = self.proc, time.monotonic()
            rc = proc.wait()
            if self._stopping.is_set():
                return
            backoff = 0.5 if time.monotonic() - started > self.STABLE_S else min(self.MAX_BACKOFF_S, backoff * 2)
            log.warning("%s (pid %d) exited with %s; restarting in %.1fs", self.name, proc.pid, rc, backoff)
            if self._stopping.wait(backoff):
                return
            self.restarts += 1
            self._spawn()

    def stop(self) -> None:
        """SIGTERM the child and wait for its drain (``grace_s`` and a little more), then SIGKILL what is left."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.grace_s + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def child_env(*, nats_url: str, passwords_file: str | None, nice: int, metrics_port: int | None) -> dict[str, str]:
    """The child's environment: this process's settings, the bus this process found or started (never a second
    embedded server), the pipeline's nice, and the port its /metrics and /readyz listen on."""
    env = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_EMBEDDED_NATS"}
    env["SWITCHYARD_NATS__URL"] = nats_url
    if passwords_file:
        env["SWITCHYARD_NATS__PASSWORDS_FILE"] = passwords_file
    env["SWITCHYARD_NICE"] = str(max(nice, CHILD_NICE))
    if metrics_port:
        env["SWITCHYARD_METRICS_PORT"] = str(metrics_port)
    return env
