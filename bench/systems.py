"""The systems under test, each started in the same run against the same nginx upstream.

============  ==============================================================
``direct``    the nginx upstream itself (the floor every other system adds to)
``sy-all``    Switchyard, every target in one process (``--target all
              --embedded-nats``: nats-server is its child; ``make run``)
``sy-all-child``  the same with ``--audit-process`` (audit in a child process
              at nice 10); only with ``--systems``
``sy-split``  Switchyard, one process per target (gateway, policy, router,
              worker, audit) against a nats-server the bench starts
``sy-duo``    Switchyard, the request path (gateway, policy, router, worker)
              in one process and audit in another, against a nats-server
              the bench starts
``sy-trio``   Switchyard, the gateway alone, then policy, router and worker
              in one process, then audit, against a nats-server the bench
              starts
``litellm-1`` LiteLLM proxy, 1 worker, no database, same master key
``litellm-2`` LiteLLM proxy, 2 workers
``portkey``   Portkey AI gateway (npm ``@portkey-ai/gateway``, Node, one
              process, ``--headless``): the upstream is named per request
              with ``x-portkey-provider: openai`` and
              ``x-portkey-custom-host``; it keeps nothing durable and checks
              no policy
============  ==============================================================

Each system maps the upstream modes (``fast``, ``d50``, ``d1000``,
``stream``) to model names ``bench-<mode>``, so the same request body shape
is sent to every system and only the model (or, for ``direct``, the path)
picks the mode.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx

from bench.procs import Proc, Procs, tree
from bench.upstream import MODES, STREAM, Upstream
from services.targets import REQUEST_PATH
from shared.natsd import NatsServer, free_port

KEY = "sk-bench-0123456789abcdef"  # the one API key every system is called with
ALL_MODES = (*MODES, STREAM)
SY_SPLIT_TARGETS = ("gateway", "policy", "router", "worker", "audit")
# The request path in one process (the shape that busy-polls, services/targets.py) and audit beside it.
SY_DUO_TARGETS = (",".join(REQUEST_PATH), "audit")
# The gateway in a process of its own (job intake is not slowed by the drain), the rest of the request path in one.
SY_TRIO_TARGETS = ("gateway", ",".join(t for t in REQUEST_PATH if t != "gateway"), "audit")
PIPELINE_NICE = 10  # every process of sy-split, sy-duo and sy-trio but the one running the gateway
REPO = Path(__file__).resolve().parent.parent
PORTKEY_SHIM = Path(__file__).resolve().parent / "portkey_shim.mjs"


def model_for(mode: str) -> str:
    return f"bench-{mode}"


def chat_body(mode: str, stream: bool = False) -> dict:
    body = {"model": model_for(mode), "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "max_tokens": 16}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


class System:
    """A system under test: start it, know when it is ready, find all its processes, stop it."""

    name = "?"
    has_jobs = False

    def __init__(self, procs: Procs, upstream: Upstream, workdir: Path) -> None:
        self.procs = procs
        self.upstream = upstream
        self.workdir = workdir / self.name
        self.port = 0
        self.children: list[Proc] = []
        self.extra_pids: list[int] = []
        self.notes: list[str] = []

    # ---- addresses -------------------------------------------------------------------------

    def chat_url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def jobs_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/jobs"

    def body(self, mode: str, stream: bool = False) -> dict:
        return chat_body(mode, stream)

    def headers(self, mode: str) -> dict[str, str]:
        """Headers besides the bearer key that every request for ``mode`` carries (none but for Portkey)."""
        return {}

    @property
    def key(self) -> str | None:
        return KEY

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        """A real completion through the system succeeds."""
        r = httpx.post(self.chat_url("fast"), json=self.body("fast"), timeout=10,
                       headers={"authorization": f"Bearer {KEY}", **self.headers("fast")})
        return r.status_code == 200 and r.json()["choices"][0]["message"]["content"]

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in self.children if not p.alive()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited with {dead[0].popen.returncode}:\n{dead[0].log_tail()}")
            try:
                if self.ready():
                    return
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
                pass
            time.sleep(0.5)
        tails = "\n".join(f"--- {p.name}\n{p.log_tail(8)}" for p in self.children)
        raise RuntimeError(f"{self.name} not ready within {timeout_s:.0f}s\n{tails}")

    def pids(self) -> list[int]:
        return [p.pid for p in self.children] + self.extra_pids

    def process_count(self) -> int:
        return len(tree(self.pids()))

    def stop(self) -> None:
        for p in reversed(self.children):
            self.procs.stop(p)
        self.children.clear()

    def alive(self) -> bool:
        return all(p.alive() for p in self.children)


class Direct(System):
    """The upstream with nothing in between."""

    name = "direct"

    def chat_url(self, mode: str) -> str:
        return self.upstream.url(mode)

    def body(self, mode: str, stream: bool = False) -> dict:
        b = chat_body(mode, stream)
        b["model"] = "bench-model"
        return b

    def start(self) -> None:
        self.port = self.upstream.port

    def pids(self) -> list[int]:
        return self.upstream.pids()

    def stop(self) -> None:  # the upstream outlives every system
        pass


def switchyard_catalog(upstream: Upstream) -> str:
    """Operator catalog: one provider per upstream mode (path prefix), one model per provider."""
    providers, models = [], []
    for mode in ALL_MODES:
        # The 1 s mode must hold 5,000 requests in flight; the others never need more than the sweep's 256.
        in_flight = 8192 if mode == "d1000" else 1024
        providers.append({"name": f"up-{mode}", "type": "openai", "base_url": upstream.base_url(mode),
                          "max_in_flight": in_flight, "timeout_s": 60})
        models.append({"name": model_for(mode), "input_per_mtok": 0.1, "output_per_mtok": 0.2,
                       "latency_prior_ms": 1000 * MODES.get(mode, 0.005) + 1,
                       "deployments": [{"provider": f"up-{mode}", "upstream_model": "bench-model"}]})
    # Only the bench's providers: no idle mock consumer, and the documents of both shapes are identical.
    return json.dumps({"version": 1, "extends_builtin": False, "providers": providers, "models": models}, indent=1)


class Switchyard(System):
    """Common parts of both Switchyard shapes."""

    has_jobs = True

    def __init__(self, *args, repo: Path | None = None, name: str | None = None,
                 extra_env: dict[str, str] | None = None, **kw) -> None:
        """``repo``: another checkout to run (with its own ``.venv``), for paired runs of old and new code;
        ``name``: this instance's name (its processes, logs and work directory) when two run side by side;
        ``extra_env``: settings of this instance only (a setting on against off)."""
        if name:
            self.name = name
        super().__init__(*args, **kw)
        self.extra_env = extra_env or {}
        self.repo = repo or REPO
        python = self.repo / ".venv" / "bin" / "python"
        self.python = sys.executable if self.repo == REPO or not python.exists() else str(python)

    def env(self) -> dict[str, str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        catalog = self.workdir / "catalog.yaml"
        catalog.write_text(switchyard_catalog(self.upstream))  # JSON is YAML
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
        env.update({
            "SWITCHYARD_ADMIN_KEY": KEY,
            "SWITCHYARD_CATALOG_PATH": str(catalog),
            "SWITCHYARD_DATA_DIR": str(self.workdir / "data"),
            "SWITCHYARD_LOG_LEVEL": "WARNING",
            # Enough pooled upstream connections for the 5,000-concurrent run against the 1 s upstream.
            "SWITCHYARD_WORKERS__POOL_CONNECTIONS": "8192",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def command(self, target: str) -> list[str]:
        return [self.python, "-m", "services", "--target", target]

    def ready(self) -> bool:
        r = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5)
        return r.status_code == 200 and super().ready()


class SwitchyardAll(Switchyard):
    """``python -m services --target all --embedded-nats``: one Python process plus its nats-server child."""

    name = "sy-all"
    flags: tuple[str, ...] = ("--embedded-nats",)

    def start(self) -> None:
        env = self.env()
        self.port = free_port()
        env["SWITCHYARD_GATEWAY__PORT"] = str(self.port)
        env["SWITCHYARD_EMBEDDED_NATS_PORT"] = str(free_port())
        if "--audit-process" in self.flags:
            env["SWITCHYARD_METRICS_PORT"] = str(free_port())  # audit's child (else the gateway's port + 1)
        self.children.append(self.procs.start(self.name, [*self.command("all"), *self.flags], env=env,
                                              cwd=str(self.repo)))


class SwitchyardAllChild(SwitchyardAll):
    """``--target all --embedded-nats --audit-process``: audit in a child process, at nice 10.

    Every process is a descendant of the one started, so the process tree's CPU and memory hold them all."""

    name = "sy-all-child"
    flags = ("--embedded-nats", "--audit-process")


class SwitchyardSplit(Switchyard):
    """One process per target against a nats-server the bench starts (the Kubernetes shape on one machine).

    With other ``targets`` (each a ``--target`` value) the same start serves any grouping of targets into
    processes; ``SwitchyardDuo`` is one.
    """

    name = "sy-split"

    def __init__(self, *args, targets: tuple[str, ...] = SY_SPLIT_TARGETS, **kw) -> None:
        super().__init__(*args, **kw)
        self.targets = targets
        self.nats: NatsServer | None = None

    def start(self) -> None:
        env = self.env()
        self.nats = NatsServer(self.workdir / "data" / "nats").start()
        self.procs.extra.append(self.nats)
        self.extra_pids = [self.nats.proc.pid]
        env.update(self.nats.client_env())  # its URL, and the passwords each process takes its role's from
        self.port = free_port()
        env["SWITCHYARD_GATEWAY__PORT"] = str(self.port)
        for target in self.targets:
            # One host, one process per target: the pipeline runs at a lower CPU priority than the gateway and
            # nats-server, so accepting work is not starved by draining it (SWITCHYARD_NICE, docs/operations.md).
            nice = {} if "gateway" in target.split(",") else {"SWITCHYARD_NICE": str(PIPELINE_NICE)}
            self.children.append(self.procs.start(f"{self.name}-{target.replace(':', '-').replace(',', '+')}",
                                                  self.command(target), env=env | nice, cwd=str(self.repo)))

    def stop(self) -> None:
        super().stop()
        if self.nats is not None:
            self.nats.stop()
            if self.nats in self.procs.extra:
                self.procs.extra.remove(self.nats)
            self.nats = None
        self.extra_pids = []


class SwitchyardDuo(SwitchyardSplit):
    """The request path in one process, audit in a second one (at the pipeline's nice), one nats-server.

    Audit reads every event of every request; in the request path's process its batches and its SQLite
    thread share that event loop and GIL (docs/performance/README.md: what audit costs at concurrency 1).
    """

    name = "sy-duo"

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, targets=SY_DUO_TARGETS, **kw)


class SwitchyardTrio(SwitchyardSplit):
    """The gateway alone, policy, router and worker in a second process, audit in a third, one nats-server.

    Between sy-duo and sy-split: the gateway's process accepts jobs while the pipeline drains them at the
    pipeline's nice (as in sy-split), and a synchronous request crosses between processes only twice.
    """

    name = "sy-trio"

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, targets=SY_TRIO_TARGETS, **kw)


class RequestPathOnly(SwitchyardSplit):
    """The request path's process and nats-server with no audit running: a diagnostic, not a shape to deploy.

    Nothing reads the stream behind it, so nothing is audited; ``bench.attribution`` measures it beside sy-duo
    to show what the request path costs on its own (what it would cost with audit on cores of its own).
    """

    name = "sy-path"

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, targets=SY_DUO_TARGETS[:1], **kw)


def litellm_config(upstream: Upstream) -> str:
    """model_list entries pointing at the nginx upstream as ``openai/`` models; master key, no database."""
    model_list = [{"model_name": model_for(mode),
                   "litellm_params": {"model": "openai/bench-model", "api_base": upstream.base_url(mode),
                                      "api_key": "sk-upstream-unused"}}
                  for mode in ALL_MODES]
    return json.dumps({"model_list": model_list,
                       "general_settings": {"master_key": KEY},
                       "litellm_settings": {"drop_params": True, "telemetry": False}}, indent=1)


class LiteLLM(System):
    """``litellm --config cfg.yaml --port P --num_workers N`` from bench/.venv-litellm."""

    def __init__(self, *args, litellm: str, workers: int = 1, **kw) -> None:
        self.name = f"litellm-{workers}"
        super().__init__(*args, **kw)
        self.litellm = litellm
        self.workers = workers

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.yaml"
        cfg.write_text(litellm_config(self.upstream))
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHYARD_", "DATABASE_URL", "LITELLM_"))}
        env.update({
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map from the internet at start
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "PYTHONUNBUFFERED": "1",
        })
        cmd = [self.litellm, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(self.port),
               "--num_workers", str(self.workers)]
        self.children.append(self.procs.start(self.name, cmd, env=env, cwd=str(self.workdir)))


class Portkey(System):
    """``node start-server.js --headless --port=P`` from bench/.portkey, pointed at the upstream per request.

    The request names the provider format and the upstream's base URL in headers (as a Portkey user with a
    self-hosted OpenAI-compatible server does); the bearer key is passed through to the upstream, which
    ignores it. The model in the body is forwarded as is.
    """

    name = "portkey"

    def __init__(self, *args, node: str, script: str, **kw) -> None:
        super().__init__(*args, **kw)
        self.node = node
        self.script = script

    def headers(self, mode: str) -> dict[str, str]:
        return {"x-portkey-provider": "openai", "x-portkey-custom-host": self.upstream.base_url(mode)}

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
        env.update({"NODE_ENV": "production"})
        # The shim fixes one bug of the gateway's Node HTTP adapter that failed every streamed request
        # (bench/portkey_shim.mjs); nothing else of the gateway changes.
        cmd = [self.node, "--import", str(PORTKEY_SHIM), self.script, "--headless", f"--port={self.port}"]
        self.children.append(self.procs.start(self.name, cmd, env=env, cwd=str(self.workdir)))
