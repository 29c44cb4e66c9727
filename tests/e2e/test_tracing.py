"""One OpenTelemetry trace per request across every service, exported over OTLP/HTTP to a real receiver.

The five services run as five processes (one per target, as on Kubernetes), each exporting its spans to the
receiver of tests/support/otlp.py. A request to an alias whose first candidate fails falls back once; its
trace must hold spans of all five services under one trace id (the one audit stored), a GenAI client span per
provider call (the failed first attempt and the fallback, with the semantic-convention attributes), and no
trace of the prompt's text anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from shared.natsd import NatsServer, free_port
from tests.support.catalogs import OBSERVABILITY_CATALOG
from tests.support.otlp import OtlpReceiver
from tests.support.procs import ServiceProcess, wait_http_ready
from tests.support.wait import eventually

KEY = "sk-tracing-admin-0123456789"
SERVICES = ("gateway", "policy", "router", "worker", "audit")
MARKER = "zebra-quartz-7731"  # in the prompt only: it must appear in no span


@pytest.fixture
def nats(tmp_path: Path):
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


async def test_a_request_that_fell_back_is_one_trace_across_all_five_services(nats, tmp_path: Path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(OBSERVABILITY_CATALOG)  # `resilient`: flaky-1 always fails, then mock-1
    gateway_port = free_port()
    with OtlpReceiver() as otlp:
        base = {
            **nats.client_env(),
            "SWITCHYARD_ADMIN_KEY": KEY,
            "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
            "SWITCHYARD_CATALOG_PATH": str(catalog),
            "SWITCHYARD_GATEWAY__PORT": str(gateway_port),
            "SWITCHYARD_TELEMETRY__OTLP_ENDPOINT": otlp.url,  # the standard /v1/traces is added
            "SWITCHYARD_TELEMETRY__SAMPLE_RATIO": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # the SDK's batch processor: export within 0.1 s
            "SWITCHYARD_LOG_LEVEL": "WARNING",
        }
        procs = []
        try:
            ops = []
            for target in SERVICES:
                env = dict(base)
                if target != "gateway":
                    ops.append(port := free_port())
                    env["SWITCHYARD_METRICS_PORT"] = str(port)
                procs.append(ServiceProcess(target, env, tmp_path).start())
            for url in [f"http://127.0.0.1:{gateway_port}/readyz"] + [f"http://127.0.0.1:{p}/readyz" for p in ops]:
                await wait_http_ready(url, timeout=60)

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway_port}", timeout=20,
                                         headers={"authorization": f"Bearer {KEY}"}) as http:
                r = await http.post("/v1/chat/completions", json={
                    "model": "resilient", "max_tokens": 12, "temperature": 0.2,
                    "messages": [{"role": "user", "content": f"please summarise {MARKER} in one line"}]})
                assert r.status_code == 200, r.text
                rid = r.headers["x-request-id"]
                path = r.json()["switchyard"]["path"]
                assert [(a["model"], a["outcome"]) for a in path] == [("flaky-1", "failed"), ("mock-1", "success")]

                async def stored_trace_id() -> str | None:
                    t = await http.get(f"/v1/requests/{rid}")
                    return t.json().get("trace_id") if t.status_code == 200 else None
                trace_id = await eventually(stored_trace_id, timeout=30, message="audit stored no trace id")

            def whole_trace() -> list | None:
                """The trace once every process has exported its part (each exports on its own schedule)."""
                spans = otlp.trace(trace_id)
                ids = {s.span_id for s in spans}
                whole = ({s.service for s in spans} >= {f"switchyard-{s}" for s in SERVICES}
                         and all(s.parent_id in ids for s in spans if s.parent_id)
                         and sum(s.kind == "SPAN_KIND_CLIENT" for s in spans) == 2
                         and any(s.name == "audit CompletionSucceeded" for s in spans))
                return spans if whole else None
            spans = await eventually(whole_trace, timeout=30, message=lambda: (
                f"trace {trace_id}: {sorted((s.service, s.name) for s in otlp.trace(trace_id))}"))
        finally:
            for p in procs:
                p.stop()

    # the gateway's server span is the root, and carries the request's id and the client's parameters
    root = [s for s in spans if s.service == "switchyard-gateway"]
    assert len(root) == 1 and root[0].kind == "SPAN_KIND_SERVER" and root[0].parent_id == ""
    assert root[0].name == "chat resilient"
    assert root[0].attributes["switchyard.request_id"] == rid
    assert root[0].attributes["gen_ai.request.model"] == "resilient"
    assert root[0].attributes["gen_ai.request.max_tokens"] == 12
    assert all(s.parent_id for s in spans if s is not root[0]), "another root in the trace"

    # one GenAI client span per provider call: the failed first attempt, then the fallback that answered
    calls = sorted((s for s in spans if s.kind == "SPAN_KIND_CLIENT"), key=lambda s: s.attributes["switchyard.attempt"])
    assert [(s.name, s.attributes["switchyard.attempt.kind"]) for s in calls] == [
        ("chat flaky-1", "first"), ("chat mock-1", "fallback")]
    first, fallback = (c.attributes for c in calls)
    assert calls[0].error and first["error.type"] and first["gen_ai.provider.name"] == "mock-flaky"
    assert not calls[1].error and "error.type" not in fallback
    assert fallback["gen_ai.operation.name"] == "chat" and fallback["gen_ai.provider.name"] == "mock"
    assert fallback["gen_ai.request.model"] == "mock-1" and fallback["gen_ai.request.temperature"] == 0.2
    assert fallback["gen_ai.usage.input_tokens"] > 0 and fallback["gen_ai.usage.output_tokens"] > 0
    assert fallback["gen_ai.response.model"] and fallback["switchyard.previous.deployment"] == "mock-flaky/flaky-1"
    assert fallback["switchyard.request_id"] == rid

    # every stage is there: policy admitted, the router routed both attempts, audit recorded the end
    names = {(s.service, s.name) for s in spans}
    assert ("switchyard-policy", "policy CompletionRequested") in names
    assert ("switchyard-router", "router RequestAdmitted") in names
    assert ("switchyard-router", "router AttemptFailed") in names
    assert ("switchyard-audit", "audit CompletionSucceeded") in names

    # no prompt text: not in a name, not in an attribute
    assert MARKER not in json.dumps([[s.name, s.attributes] for s in spans])
