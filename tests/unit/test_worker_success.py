"""A worker's successful attempt, in each shape (whole, streamed, embeddings): the terminal event and its metrics."""

from __future__ import annotations

import asyncio
import contextlib

from services.workers.adapters import adapter_class
from services.workers.handlers import WorkerDeps, attempt
from shared.bus import Delivery
from shared.canonical import EmbeddingRequest
from shared.catalog import load_catalog
from shared.events import AttemptDispatched, AttemptFailed, CompletionSucceeded, RoutingDecision, terminal_id
from shared.pricing import cost_usd
from shared.telemetry import Metrics
from tests.support.events import chat, ctx

CATALOG = load_catalog(None)
DECISION = RoutingDecision(mode="auto", requested="auto", reason="cheapest eligible", task="code")


class Relay:
    """Keeps the relayed chunks; the client never disconnects."""

    def __init__(self) -> None:
        self.sent: list = []

    async def send(self, origin: str, request_id: str, message) -> None:
        self.sent.append(message)

    @contextlib.asynccontextmanager
    async def cancellation(self, request_id: str):
        yield asyncio.Event()


async def run(event: AttemptDispatched, relay: Relay | None = None) -> tuple[CompletionSucceeded, Metrics]:
    spec = CATALOG.providers["mock"]
    metrics = Metrics()

    async def never_cancelled(request_id: str) -> bool:
        return False

    deps = WorkerDeps(adapters={"mock": adapter_class(spec.type)(spec)}, catalog=CATALOG, metrics=metrics,
                      is_cancelled=never_cancelled, relay=relay)
    [out] = await attempt(event, Delivery(num_delivered=1, headers={}, stream_seq=1), deps)
    assert isinstance(out, CompletionSucceeded)
    return out, metrics


def dispatched(model: str, **kw) -> AttemptDispatched:
    return AttemptDispatched(event_id="req_1.attempt.1", request_id="req_1", attempt=1,
                             target=CATALOG.targets(model)[0], decision=DECISION, degraded=True, **kw)


def sample(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def tokens(metrics: Metrics, operation: str, model: str, kind: str) -> float | None:
    return sample(metrics, "gen_ai_client_token_usage_count", gen_ai_operation_name=operation,
                  gen_ai_provider_name="mock", gen_ai_request_model=model, gen_ai_token_type=kind)


def assert_success(out: CompletionSucceeded, metrics: Metrics) -> None:
    model = out.target.model
    assert out.event_id == terminal_id("req_1")
    assert (out.request_id, out.attempt, out.decision, out.degraded) == ("req_1", 1, DECISION, True)
    assert out.cost_usd == cost_usd(CATALOG.models[model], out.response.usage) > 0
    assert sample(metrics, "switchyard_attempts_total", gen_ai_provider_name="mock", outcome="success") == 1
    assert sample(metrics, "switchyard_cost_usd_total", gen_ai_provider_name="mock",
                  gen_ai_request_model=model) == out.cost_usd


async def test_a_whole_completion_records_duration_and_both_token_kinds():
    out, metrics = await run(dispatched("mock-1", ctx=ctx(), request=chat(max_tokens=40)))
    assert_success(out, metrics)
    assert (out.chunks, out.ttft_ms, out.embeddings) == (0, None, None) and out.response.choices
    assert sample(metrics, "gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name="chat",
                  gen_ai_provider_name="mock", gen_ai_request_model="mock-1", error_type="") == 1
    assert tokens(metrics, "chat", "mock-1", "input") == tokens(metrics, "chat", "mock-1", "output") == 1


async def test_a_streamed_completion_counts_its_chunks_and_time_to_first_token():
    relay = Relay()
    out, metrics = await run(dispatched("mock-1", ctx=ctx(stream=True), request=chat(max_tokens=40)), relay)
    assert_success(out, metrics)
    assert out.chunks == len(relay.sent) > 0 and out.ttft_ms is not None and out.embeddings is None
    assert sample(metrics, "switchyard_time_to_first_token_seconds_count", gen_ai_provider_name="mock") == 1
    # the streamed shape records no operation duration or token usage
    assert tokens(metrics, "chat", "mock-1", "input") is None


async def test_embeddings_carry_their_vectors_and_record_input_tokens_only():
    request = EmbeddingRequest(model="mock-embed-1", input="alpha beta")
    out, metrics = await run(dispatched("mock-embed-1", ctx=ctx(api="embeddings"), embedding=request,
                                        request=chat("mock-embed-1", "alpha beta")))
    assert_success(out, metrics)
    assert out.embeddings and len(out.embeddings) == 1 and out.response.choices == []
    assert sample(metrics, "gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name="embeddings",
                  gen_ai_provider_name="mock", gen_ai_request_model="mock-embed-1", error_type="") == 1
    assert tokens(metrics, "embeddings", "mock-embed-1", "input") == 1
    assert tokens(metrics, "embeddings", "mock-embed-1", "output") is None


async def test_a_job_cancelled_before_its_call_began_has_its_attempt_closed_not_called_and_not_billed():
    """Else the attempt stays ``dispatched`` under a cancelled job (what make chaos counted as trace drift)."""
    spec = CATALOG.providers["mock"]
    calls = []

    async def cancelled(request_id: str) -> bool:
        calls.append(request_id)
        return True

    event = dispatched("mock-1", ctx=ctx(job=True), request=chat("mock-1"))
    for relay in (None, Relay()):
        deps = WorkerDeps(adapters={"mock": adapter_class(spec.type)(spec)}, catalog=CATALOG, metrics=Metrics(),
                          is_cancelled=cancelled, relay=relay)
        [out] = await attempt(event, Delivery(num_delivered=1, headers={}, stream_seq=1), deps)
        assert isinstance(out, AttemptFailed) and out.after_end and out.cost_usd == 0 and out.usage is None
        assert (out.error.outcome, out.error.code) == ("cancelled", "cancelled_before_call")
    assert calls == ["req_1", "req_1"] and not relay.sent  # asked twice, and nothing was relayed or called
