"""Telemetry without a bus: bounded tenant labels, the traceparent carried without an exporter, JSON log lines
with the trace and request ids, the OTLP endpoint's URL, and GenAI span attributes that never hold text."""

from __future__ import annotations

import io
import json
import logging

from shared import genai
from shared.canonical import ChatResponse, Choice, Message, Usage
from shared.errors import ErrorInfo
from shared.events import AttemptDispatched, AttemptFailed, AttemptSummary, CompletionSucceeded, Target
from shared.logs import use_json_logs
from shared.settings import TelemetrySettings
from shared.telemetry import OTHER, TenantLabels, Telemetry, traces_url
from tests.support.events import chat, ctx, requested

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_tenants_and_teams_past_the_cap_are_folded_into_other():
    labels = TenantLabels(max_tenants=2, max_teams=3)
    assert labels("acme", "ml") == ("acme", "ml")
    assert labels("acme", "web") == ("acme", "web")
    assert labels("globex", "ops") == ("globex", "ops")
    assert labels("globex", "data") == ("globex", OTHER)  # the fourth team
    assert labels("initech", "ops") == (OTHER, OTHER)  # the third tenant
    assert labels("acme", "ml") == ("acme", "ml")  # those kept stay kept
    assert len(labels._teams) == 3 and len(labels._tenants) == 2


def test_the_cap_comes_from_the_settings():
    t = Telemetry(TelemetrySettings(max_tenants=1, max_teams=1))
    assert t.metrics.tenants("a", "x") == ("a", "x") and t.metrics.tenants("b", "y") == (OTHER, OTHER)


def test_a_bare_otlp_endpoint_gets_the_traces_path():
    assert traces_url("http://tempo:4318") == "http://tempo:4318/v1/traces"
    assert traces_url("http://tempo:4318/") == "http://tempo:4318/v1/traces"
    assert traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"


def test_without_an_exporter_the_request_carries_a_traceparent_through_its_work():
    t = Telemetry(TelemetrySettings())
    assert not t.in_trace()
    with t.request_span("chat mock-1", None):
        carried = t.inject({})["traceparent"]
        assert t.in_trace() and carried.startswith("00-") and len(carried) == 55
        with t.span("inner", None):  # no headers: the same trace goes on
            assert t.inject({})["traceparent"] == carried
    with t.request_span("chat mock-1", TRACEPARENT):  # the client's own is continued
        assert t.inject({})["traceparent"] == TRACEPARENT
    assert not t.in_trace() and "traceparent" not in t.inject({})


def test_json_log_lines_carry_the_trace_and_request_ids():
    t = Telemetry(TelemetrySettings(log_format="json"))
    logger, out = logging.getLogger("switchyard.test-json"), io.StringIO()
    logger.addHandler(logging.StreamHandler(out))
    logger.propagate = False
    use_json_logs("switchyard-test", t, logger)
    logger.warning("outside any request")
    with t.span("worker AttemptDispatched", {"traceparent": TRACEPARENT}, **{"switchyard.request_id": "req_42"}):
        logger.warning("inside %s", "a request")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "outside any request" and "trace_id" not in first and "request_id" not in first
    assert second["message"] == "inside a request" and second["level"] == "WARNING"
    assert second["service"] == "switchyard-test" and second["logger"] == "switchyard.test-json"
    assert second["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and second["request_id"] == "req_42"


def test_with_an_exporter_log_lines_carry_the_span_s_ids():
    t = Telemetry(TelemetrySettings(otlp_endpoint="http://127.0.0.1:9/v1/traces", log_format="json"))
    try:
        # a parent that was not sampled: the span is not exported (nothing listens here), its ids still exist
        unsampled = TRACEPARENT[:-2] + "00"
        with t.span("policy CompletionRequested", {"traceparent": unsampled}, **{"switchyard.request_id": "r1"}):
            fields = t.log_fields()
        assert fields["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and fields["request_id"] == "r1"
        assert len(fields["span_id"]) == 16 and fields["span_id"] != "b7ad6b7169203331"  # a child span of its own
    finally:
        t.shutdown()


def _dispatched(**kw) -> AttemptDispatched:
    marker = "secret prompt text"
    return AttemptDispatched(
        event_id="r1.attempt.2", request_id="r1", ctx=ctx(), attempt=2, kind="fallback",
        request=chat(text=marker, max_tokens=32, temperature=0.5),
        target=Target(deployment="mock/mock-1", provider="mock", model="mock-1", upstream_model="mock-1"),
        history=[AttemptSummary(attempt=1, deployment="openai/gpt", provider="openai", model="gpt",
                                outcome="failed")], **kw)


def test_genai_attributes_of_an_attempt_and_its_outcome_and_never_the_text():
    event = _dispatched()
    attrs = genai.attempt_attributes(event)
    assert genai.attempt_span_name(event) == "chat mock-1"
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "mock"
    assert attrs["gen_ai.request.model"] == "mock-1" and attrs["gen_ai.request.max_tokens"] == 32
    assert attrs["gen_ai.request.temperature"] == 0.5 and attrs["switchyard.attempt.kind"] == "fallback"
    assert attrs["switchyard.previous.deployment"] == "openai/gpt"
    done = CompletionSucceeded(event_id="r1.done", request_id="r1", ctx=event.ctx, attempt=2, target=event.target,
                               response=ChatResponse(model="mock-1", choices=[Choice(
                                   index=0, message=Message(role="assistant", content="an answer"),
                                   finish_reason="stop")], usage=Usage(prompt_tokens=7, completion_tokens=3)),
                               cost_usd=0.001, latency_ms=5)
    ok, error = genai.outcome_attributes([done])
    assert error is None and ok["gen_ai.usage.input_tokens"] == 7 and ok["gen_ai.usage.output_tokens"] == 3
    assert ok["gen_ai.response.finish_reasons"] == ["stop"]
    failed = AttemptFailed(event_id="r1.attempt.2.failed", request_id="r1", ctx=event.ctx, dispatch=event,
                           error=ErrorInfo(status=503, type="upstream_error", code="upstream_unavailable",
                                           message="down", outcome="failed"))
    bad, error = genai.outcome_attributes([failed])
    assert error == "upstream_unavailable" and bad["error.type"] == error
    text = json.dumps([attrs, ok, bad, genai.request_attributes(requested(chat(text="secret prompt text")), "/v1")])
    assert "secret prompt text" not in text and "an answer" not in text
