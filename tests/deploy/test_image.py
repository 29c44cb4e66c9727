"""The container image, built and run with podman (``make image-test``: it builds the image first).

One container runs ``--target all --embedded-nats`` with a read-only root filesystem and every capability
dropped; a completion goes through its published port; its HEALTHCHECK passes; ``podman stop`` (SIGTERM)
while requests are in flight answers them and exits 0 well inside the stop timeout. Skipped unless
SWITCHYARD_IMAGE_TEST names the image to test (``make image-test`` sets it).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from shared.natsd import free_port
from tests.support.wait import eventually

IMAGE = os.environ.get("SWITCHYARD_IMAGE_TEST")
pytestmark = pytest.mark.skipif(not IMAGE or not shutil.which("podman"),
                                reason="make image-test builds the image and runs this")
KEY = "sk-image-test-admin"
CATALOG = """version: 1
extends_builtin: true
providers:
  - {name: mock-slow, type: mock, options: {latency_ms: 2000}}
models:
  - name: slow-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{provider: mock-slow, upstream_model: slow-1}]
"""


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
    return done


def test_image_metadata():
    (info,) = json.loads(podman("image", "inspect", IMAGE).stdout)
    config = info["Config"]
    assert config["User"].split(":")[0] not in ("", "0", "root")
    assert config["Entrypoint"] == ["python", "-m", "services"]
    health = info.get("Healthcheck") or config.get("Healthcheck") or {}
    assert health.get("Test", [])[:2] == ["CMD", "python"], info.keys()
    assert config.get("StopSignal") in ("SIGTERM", "15", None)


async def test_container_answers_and_drains_on_stop(tmp_path: Path):
    port = free_port()
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    catalog.chmod(0o644)
    name = f"switchyard-image-test-{port}"
    podman("run", "-d", "--name", name, "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "-p", f"127.0.0.1:{port}:8080", "-e", f"SWITCHYARD_ADMIN_KEY={KEY}",
           "-e", f"SWITCHYARD_KEY_SECRET={secrets.token_urlsafe(32)}",
           "-e", "SWITCHYARD_CATALOG_PATH=/etc/switchyard/catalog.yaml", "-e", "SWITCHYARD_SHUTDOWN_GRACE_S=20",
           "-v", f"{catalog}:/etc/switchyard/catalog.yaml:ro", IMAGE, "--target", "all", "--embedded-nats")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                     headers={"authorization": f"Bearer {KEY}"}) as http:
            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout=60, interval=0.25,
                             message=lambda: podman("logs", name, check=False).stdout[-2000:])
            r = await http.post("/v1/chat/completions",
                                json={"model": "mock-1", "messages": [{"role": "user", "content": "hello"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]
            assert podman("healthcheck", "run", name, check=False).returncode == 0

            # Requests in flight when the container is stopped are answered, then it exits 0.
            slow = [asyncio.ensure_future(http.post("/v1/chat/completions", json={
                "model": "slow-1", "messages": [{"role": "user", "content": f"slow {i}"}]})) for i in range(3)]
            await asyncio.sleep(0.5)  # the requests reach the gateway before the stop
            started = time.monotonic()
            stop = await asyncio.to_thread(podman, "stop", "-t", "30", name)
            took = time.monotonic() - started
            answers = await asyncio.gather(*slow, return_exceptions=True)
        assert stop.returncode == 0
        assert [a.status_code for a in answers if isinstance(a, httpx.Response)] == [200, 200, 200], answers
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, podman("logs", name, check=False).stdout[-3000:]
        assert took < 25, f"podman stop took {took:.1f}s: the drain did not finish within its grace"
        print(f"\nimage: completion answered; stop with 3 requests in flight took {took:.2f}s, exit code 0")
    finally:
        podman("rm", "-f", name, check=False)
