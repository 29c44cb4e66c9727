"""The HTTP server every process runs: uvicorn under the bootstrap's shutdown, and the ops endpoints.

``/healthz``, ``/readyz`` (every target of this process started and the bus
connected) and ``/metrics`` are served beside the API by a gateway, and on
``SWITCHYARD_METRICS_PORT`` by a process that runs no gateway, on
``SWITCHYARD_METRICS_HOST`` (127.0.0.1 unless the operator opens it, e.g. to
``0.0.0.0`` for a scraper in a pod). Every server here reads requests through
``services.http_limits`` (head and body deadlines, head size).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.http_limits import guarded_protocol
from services.runtime import Deps


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded by msgspec (the API's one encoder)."""
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers)


def install_ops_routes(app: FastAPI, deps: Deps) -> None:
    """/healthz, /readyz and /metrics: served by every process."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        ready = deps.is_ready()
        body = {"ready": ready, "bus": deps.bus.connected, "targets": {t: deps.ready.get(t, False)
                                                                      for t in deps.targets}}
        return json_response(body, status=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(deps.telemetry.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)



class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the bootstrap owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


async def serve(app, host: str, port: int, deps: Deps) -> None:
    limits = deps.settings.http
    # No proxy-headers middleware: nothing here reads the client address, and it ran on every request.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                            loop="none", http=guarded_protocol(limits), timeout_keep_alive=limits.keep_alive_s,
                            backlog=4096, proxy_headers=False)
    server = _Server(config)
    finished = asyncio.Event()

    async def stop() -> None:
        # Stop accepting; uvicorn answers the requests it holds before ``serve`` returns.
        server.should_exit = True
        await finished.wait()

    deps.on_drain.append(stop)
    try:
        await server.serve()
    finally:
        finished.set()


async def serve_ops(deps: Deps, port: int) -> None:
    """Only /healthz, /readyz and /metrics (processes that run no gateway), on ``SWITCHYARD_METRICS_HOST``."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_ops_routes(app, deps)
    await serve(app, deps.settings.metrics_host, port, deps)


