"""Switchyard services as real OS processes, for fault tests that SIGKILL them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """``python -m services --target <target>`` in its own process group, with its log in a file."""

    def __init__(self, target: str, env: dict[str, str], log_dir: Path, name: str | None = None) -> None:
        self.target = target
        self.env = {**os.environ, **env}
        # ``name``: the log's name when several processes run one target (two gateways)
        self.log_path = log_dir / f"{(name or target).replace(':', '_').replace(',', '+')}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServiceProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "services", "--target", self.target], cwd=ROOT,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no acks, no goodbyes."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


async def wait_http_ready(url: str, timeout: float = 30) -> None:
    """Until ``url`` answers 200 (a service process's /readyz)."""
    async with httpx.AsyncClient(timeout=1) as http:
        async def ready() -> bool:
            try:
                return (await http.get(url)).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=timeout, interval=0.1, message=f"{url} not ready")
