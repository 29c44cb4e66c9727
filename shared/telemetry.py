"""Metrics (Prometheus) and tracing (OpenTelemetry, W3C trace context over NATS headers).

One ``Telemetry`` object is built per process in the bootstrap and passed to
every service; nothing here is module-level mutable state. Metric names follow
Prometheus base units and the OpenTelemetry GenAI semantic conventions; label
sets are bounded (never a request id, key or team).
"""

from __future__ import annotations

import contextvars
import os
import random
from contextlib import contextmanager
from typing import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shared.settings import TelemetrySettings

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


class Metrics:
    """Every metric a Switchyard process exports, on its own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("switchyard_requests", "Requests finished at the gateway, by API and outcome",
                                ["api", "outcome"], registry=r)
        self.request_duration = Histogram("switchyard_request_duration_seconds",
                                          "End-to-end latency seen at the gateway", ["api"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("switchyard_gateway_overhead_seconds",
                                  "Time a request spent in Switchyard, not waiting on the provider",
                                  ["api"], buckets=OVERHEAD_BUCKETS, registry=r)
        self.jobs_submitted = Counter("switchyard_jobs_submitted", "Async jobs accepted", registry=r)
        self.events = Counter("switchyard_events_handled", "Bus messages handled, by service, event and result",
                              ["service", "event", "result"], registry=r)
        self.handler_duration = Histogram("switchyard_handler_duration_seconds", "Handler time per message",
                                          ["service", "event"], buckets=LATENCY_BUCKETS, registry=r)
        self.attempts = Counter("switchyard_attempts", "Provider attempts by outcome",
                                ["gen_ai_provider_name", "outcome"], registry=r)
        self.in_flight = Gauge("switchyard_worker_in_flight", "Provider calls in flight",
                               ["gen_ai_provider_name"], registry=r)
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds", "GenAI operation duration (provider call)",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "error_type"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.token_usage = Histogram(
            "gen_ai_client_token_usage", "Tokens used per provider call",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS, registry=r)
        self.cost = Counter("switchyard_cost_usd", "Cost billed, in US dollars",
                            ["gen_ai_provider_name", "gen_ai_request_model"], registry=r)
        self.ttft = Histogram("switchyard_time_to_first_token_seconds", "Streaming time to first token",
                              ["gen_ai_provider_name"], buckets=LATENCY_BUCKETS, registry=r)
        self.breaker_state = Gauge("switchyard_circuit_breaker_state",
                                   "Circuit breaker state per deployment (1 for the current state, else 0)",
                                   ["deployment", "gen_ai_provider_name", "state"], registry=r)
        self.routing_decisions = Counter("switchyard_routing_decisions", "First routing decisions by mode and strategy",
                                         ["mode", "strategy"], registry=r)
        self.router_attempts = Counter("switchyard_router_attempts",
                                       "Attempts the router dispatched or deferred, by kind "
                                       "(first, fallback, retry, last_resort, deferred)", ["kind"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Telemetry:
    """Metrics plus a tracer; carries W3C trace context across the bus."""

    def __init__(self, settings: TelemetrySettings, service_name: str = "switchyard") -> None:
        self.metrics = Metrics()
        provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}),
            sampler=ParentBasedTraceIdRatio(settings.sample_ratio),
        )
        if settings.otlp_endpoint:
            # The exporter is an optional extra: only operators who ship traces install it.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
        self.tracing = settings.otlp_endpoint is not None
        self._ids = random.Random(int.from_bytes(os.urandom(32), "big") ^ os.getpid())
        # The trace context being carried through this task when spans are off (a per-task value).
        self._carried: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)
        self.tracer = provider.get_tracer("switchyard")
        self._propagator = TraceContextTextMapPropagator()

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        """Add the current trace context to outgoing headers.

        With an exporter, the current span's; without one, the ``traceparent`` carried in unchanged,
        so the trace id still spans every service without paying for spans nobody collects.
        """
        if self.tracing:
            self._propagator.inject(headers)
        else:
            carried = self._carried.get()
            if carried:
                headers["traceparent"] = carried
        return headers

    def new_traceparent(self) -> str:
        """A fresh W3C ``traceparent`` for a request that arrived without one (ids need uniqueness, not secrecy)."""
        return f"00-{self._ids.getrandbits(128):032x}-{self._ids.getrandbits(64):016x}-01"

    def extract(self, headers: Mapping[str, str] | None) -> Context:
        return self._propagator.extract(headers or {})

    @contextmanager
    def span(self, name: str, headers: Mapping[str, str] | None = None, **attributes) -> Iterator[None]:
        """Work continuing the trace carried in ``headers``: a real span when traces are exported."""
        if not self.tracing:
            token = self._carried.set((headers or {}).get("traceparent"))
            try:
                yield None
            finally:
                self._carried.reset(token)
            return
        ctx = self.extract(headers) if headers is not None else None
        with self.tracer.start_as_current_span(name, context=ctx, attributes=attributes):
            yield None
