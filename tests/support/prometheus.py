"""A real Prometheus (Debian's ``prometheus``, installed by ``make tools-observe``) for tests.

``PrometheusServer`` scrapes the given targets every second with the project's
rules (deploy/prometheus/rules/) evaluated every second; ``for_s`` rewrites
each rule's ``for:`` in the test's copy, so an alert fires within seconds of
its condition instead of minutes (the conditions themselves are unchanged).
Queries and alerts go through Prometheus' HTTP API.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from shared.natsd import free_port
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
_FOR = re.compile(r"^(\s+)for: .*$", re.MULTILINE)


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; a clear failure when the tools are not installed."""
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make tools-observe` (Debian's prometheus package)"
    return path


class PrometheusServer:
    """Prometheus in a temporary directory, scraping ``targets`` (host:port) every second."""

    def __init__(self, workdir: Path, targets: list[str], for_s: float = 1.0) -> None:
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = workdir / "rules"
        rules.mkdir(parents=True, exist_ok=True)
        for f in sorted(RULES.glob("*.yml")):
            (rules / f.name).write_text(_FOR.sub(rf"\g<1>for: {for_s:g}s", f.read_text()))
        (workdir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}\n"
            "rule_files: [rules/*.yml]\n"
            "scrape_configs:\n"
            f"  - job_name: switchyard\n    static_configs: [{{targets: {targets!r}}}]\n")
        self.proc: subprocess.Popen | None = None
        self.http = httpx.AsyncClient(base_url=self.url, timeout=10)

    async def start(self) -> "PrometheusServer":
        log = open(self.dir / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        async def ready() -> bool:
            assert self.proc.poll() is None, f"prometheus exited: see {self.dir / 'prometheus.log'}"
            try:
                return (await self.http.get("/-/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=30, interval=0.1, message="prometheus did not become ready")
        return self

    async def stop(self) -> None:
        await self.http.aclose()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (a failed query raises with Prometheus' error)."""
        r = await self.http.get("/api/v1/query", params={"query": expr})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body.get('error', r.text)}"
        return body["data"]["result"]

    async def finite(self, expr: str) -> list[dict[str, Any]]:
        """The samples of ``expr`` with a number for a value (not NaN or infinite)."""
        return [s for s in await self.query(expr) if math.isfinite(float(s["value"][1]))]

    async def alerts(self) -> dict[str, str]:
        """Every active alert's name and state (pending or firing; firing wins when both appear)."""
        body = (await self.http.get("/api/v1/alerts")).json()
        out: dict[str, str] = {}
        for a in body["data"]["alerts"]:
            name = a["labels"]["alertname"]
            if out.get(name) != "firing":
                out[name] = a["state"]
        return out

    async def up(self) -> bool:
        return any(s["value"][1] == "1" for s in await self.query("up"))
