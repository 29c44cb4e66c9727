"""Metrics (Prometheus) and tracing (OpenTelemetry, W3C trace context over NATS headers).

One ``Telemetry`` object is built per process in the bootstrap and passed to
every service; nothing here is module-level mutable state. Metric names follow
Prometheus base units and the OpenTelemetry GenAI semantic conventions; label
sets are bounded (never a request id or key; tenants and teams only through
``TenantLabels``, which folds those past a configured cap into ``other``).
The catalogue, with what each dashboard panel and alert reads, is in
docs/operations.md#metrics.
"""

from __future__ import annotations

import contextvars
import os
import random
from contextlib import contextmanager
from typing import Iterator, Mapping
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from shared.settings import TelemetrySettings

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
OTHER = "other"  # the label value of tenants and teams past the cap


class TenantLabels:
    """Tenant and team label values with a bounded number of distinct ones.

    The first ``max_tenants`` tenants and ``max_teams`` tenant/team pairs a process sees keep their names;
    later ones are labelled ``other`` (a later team of a known tenant: ``<tenant>``/``other``), so a
    tenant flood cannot grow a metric without limit. Which names are kept is per process and first come,
    first served; dashboards sum over processes, so a name kept in one and folded in another still adds up
    per tenant where it is named.
    """

    def __init__(self, max_tenants: int, max_teams: int) -> None:
        self.max_tenants, self.max_teams = max_tenants, max_teams
        self._tenants: set[str] = set()
        self._teams: set[tuple[str, str]] = set()

    def __call__(self, tenant: str, team: str) -> tuple[str, str]:
        if (tenant, team) in self._teams:
            return tenant, team
        if tenant not in self._tenants:
            if len(self._tenants) >= self.max_tenants:
                return OTHER, OTHER
            self._tenants.add(tenant)
        if len(self._teams) >= self.max_teams:
            return tenant, OTHER
        self._teams.add((tenant, team))
        return tenant, team


def memoize_labels(metric: MetricWrapperBase) -> None:
    """Give ``metric`` a ``labels`` that hands back the child it made before for the same values.

    prometheus_client's ``labels`` checks and converts every value and takes a lock on each call; the hot
    path calls it several times per request with the same few values. The label sets are bounded (see the
    module's docstring) and no child is ever removed, so the dict stays small and never goes stale.
    """
    made: dict[tuple, MetricWrapperBase] = {}
    make = metric.labels

    def labels(*values: object, **by_name: object) -> MetricWrapperBase:
        if by_name:  # labels(api=..., outcome=...): rare, not memoized
            return make(*values, **by_name)
        child = made.get(values)
        if child is None:
            child = made[values] = make(*values)
        return child

    metric.labels = labels  # type: ignore[method-assign]


def memoize_all_labels(holder: object) -> None:
    """``memoize_labels`` for every labelled metric among ``holder``'s attributes (one call after they are made,
    so a metric added later is covered too)."""
    for metric in vars(holder).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            memoize_labels(metric)


class Metrics:
    """Every metric a Switchyard process exports, on its own registry."""

    def __init__(self, max_tenants: int = 100, max_teams: int = 500) -> None:
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

        # ---- the operators' view: dashboards in deploy/grafana/, alerts in deploy/prometheus/ ----
        self.tenants = TenantLabels(max_tenants, max_teams)
        self.tenant_cost = Counter("switchyard_tenant_cost_usd", "Cost billed per tenant, team and model, in US "
                                   "dollars (tenants and teams past the cap: 'other')",
                                   ["tenant", "team", "gen_ai_request_model"], registry=r)
        self.tenant_tokens = Counter("switchyard_tenant_tokens", "Tokens billed per tenant, team, model and type "
                                     "(input, output)", ["tenant", "team", "gen_ai_request_model", "gen_ai_token_type"],
                                     registry=r)
        self.savings = Counter("switchyard_routing_savings_usd", "What the answers would have cost beyond their "
                               "cost on the most expensive eligible candidate, per tenant and team",
                               ["tenant", "team"], registry=r)
        self.deployment_attempts = Counter("switchyard_deployment_attempts", "Provider calls per deployment and "
                                           "outcome (success, failed, timeout, rate_limited, circuit_open, ...)",
                                           ["deployment", "gen_ai_provider_name", "gen_ai_request_model", "outcome"],
                                           registry=r)
        self.fallbacks = Counter("switchyard_fallbacks", "Attempts dispatched after a failed one, by kind (fallback, "
                                 "retry, last_resort) and the deployment whose attempt failed",
                                 ["kind", "deployment", "gen_ai_provider_name", "gen_ai_request_model"], registry=r)
        self.redeliveries = Counter("switchyard_redeliveries", "Stream messages received again (delivery count above "
                                    "1: a failed or timed-out delivery, or a planned retry), by service", ["service"],
                                    registry=r)
        self.consumer_pending = Gauge("switchyard_consumer_pending_messages", "Messages a durable consumer has not "
                                      "delivered yet", ["stream", "consumer"], registry=r)
        self.consumer_ack_pending = Gauge("switchyard_consumer_ack_pending_messages", "Messages a durable consumer "
                                          "delivered and has no acknowledgement for yet", ["stream", "consumer"],
                                          registry=r)
        self.consumer_redelivered = Gauge("switchyard_consumer_redelivered_messages", "Messages delivered more than "
                                          "once and not acknowledged yet", ["stream", "consumer"], registry=r)
        self.consumer_oldest_age = Gauge("switchyard_consumer_oldest_unacked_age_seconds", "Age of the oldest message "
                                         "a consumer has not acknowledged (0: it has caught up)",
                                         ["stream", "consumer"], registry=r)
        self.stream_messages = Gauge("switchyard_stream_messages", "Messages in the stream", ["stream"], registry=r)
        self.stream_bytes = Gauge("switchyard_stream_bytes", "Bytes in the stream", ["stream"], registry=r)
        self.stream_max_messages = Gauge("switchyard_stream_max_messages", "The stream's message limit (-1: none)",
                                         ["stream"], registry=r)
        self.stream_max_bytes = Gauge("switchyard_stream_max_bytes", "The stream's byte limit (-1: none)", ["stream"],
                                      registry=r)
        self.loop_lag = Histogram("switchyard_event_loop_lag_seconds", "How late the event loop ran a timer (sampled "
                                  "every loop_lag_interval_s)", buckets=LAG_BUCKETS, registry=r)
        self.jobs = Gauge("switchyard_jobs", "Async jobs not finished, by status (queued, in_progress), as audit "
                          "recorded them", ["status"], registry=r)
        self.jobs_oldest_age = Gauge("switchyard_jobs_oldest_age_seconds", "Age of the oldest job in each unfinished "
                                     "status (0: none)", ["status"], registry=r)
        self.jobs_finished = Counter("switchyard_jobs_finished", "Async jobs finished, by status (completed, failed, "
                                     "cancelled, expired)", ["status"], registry=r)
        self.collect_errors = Counter("switchyard_collector_errors", "Periodic collections that failed, by collector",
                                      ["collector"], registry=r)

        # ---- accepted work is never evicted (docs/security.md): how close the stream is to refusing new work ----
        self.stream_fill = Gauge("switchyard_stream_fill_ratio", "How full the event stream is: the larger of "
                                 "bytes / max_bytes and messages / max_msgs (0 without limits); the gateway refuses "
                                 "new requests from nats.admit_below on", ["stream"], registry=r)
        self.not_accepted = Counter("switchyard_requests_not_accepted", "Requests refused before they were "
                                    "accepted, by reason (stream_full: 503; job_queue_full: a tenant's queued-job "
                                    "cap, 429)", ["reason"], registry=r)

        memoize_all_labels(self)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Telemetry:
    """Metrics plus a tracer; carries W3C trace context across the bus."""

    def __init__(self, settings: TelemetrySettings, service_name: str = "switchyard") -> None:
        self.settings = settings
        self.metrics = Metrics(settings.max_tenants, settings.max_teams)
        provider = self._provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}),
            sampler=ParentBasedTraceIdRatio(settings.sample_ratio),
        )
        if settings.otlp_endpoint:
            # Imported only when traces are shipped: the exporter's import is not free at start-up.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            exporter = OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint))
            provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracing = settings.otlp_endpoint is not None
        self._ids = random.Random(int.from_bytes(os.urandom(32), "big") ^ os.getpid())
        # The trace context being carried through this task when spans are off (a per-task value).
        self._carried: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)
        self.tracer = provider.get_tracer("switchyard")
        self._propagator = TraceContextTextMapPropagator()
        # The request a task is working on, for JSON log lines (kept only when they are on).
        self.log_ids = settings.log_format == "json"
        self._request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

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
    def span(self, name: str, headers: Mapping[str, str] | None = None, *, kind: SpanKind = SpanKind.INTERNAL,
             **attributes) -> Iterator[Span]:
        """Work continuing the trace carried in ``headers`` (None: the current one), as a real span when traces
        are exported; yields the span (a non-recording one otherwise) so the caller can add what it learns."""
        request_id = attributes.get("switchyard.request_id") if self.log_ids else None
        rid = self._request_id.set(request_id) if request_id else None
        try:
            if not self.tracing:
                if headers is None:
                    yield INVALID_SPAN
                    return
                token = self._carried.set(headers.get("traceparent"))
                try:
                    yield INVALID_SPAN
                finally:
                    self._carried.reset(token)
                return
            ctx = self.extract(headers) if headers is not None else None
            with self.tracer.start_as_current_span(name, context=ctx, kind=kind, attributes=attributes) as span:
                yield span
        finally:
            if rid is not None:
                self._request_id.reset(rid)

    @contextmanager
    def request_span(self, name: str, traceparent: str | None, **attributes) -> Iterator[Span]:
        """A request's root span at the edge (a server span), continuing the client's ``traceparent`` if it sent
        one; without an exporter, a ``traceparent`` (the client's or a new one) is carried instead."""
        if self.tracing:
            headers = {"traceparent": traceparent} if traceparent else {}
        else:
            headers = {"traceparent": traceparent or self.new_traceparent()}
        with self.span(name, headers, kind=SpanKind.SERVER, **attributes) as span:
            yield span

    def in_trace(self) -> bool:
        """Whether this task works inside a trace already (a current span, or a carried ``traceparent``)."""
        if self.tracing:
            return trace.get_current_span().get_span_context().is_valid
        return self._carried.get() is not None

    def log_fields(self) -> dict[str, str]:
        """The trace, span and request ids of the work in progress, for a log line (empty outside any)."""
        out: dict[str, str] = {}
        if self.tracing:
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                out["trace_id"], out["span_id"] = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
        else:
            parts = (self._carried.get() or "").split("-")
            if len(parts) == 4:
                out["trace_id"], out["span_id"] = parts[1], parts[2]
        rid = self._request_id.get()
        if rid:
            out["request_id"] = rid
        return out

    def shutdown(self) -> None:
        """Send the spans still buffered (at process stop)."""
        self._provider.shutdown()


def traces_url(endpoint: str) -> str:
    """An OTLP/HTTP endpoint as the traces URL: a bare ``http://host:4318`` gets the standard ``/v1/traces``."""
    return endpoint.rstrip("/") + "/v1/traces" if urlsplit(endpoint).path in ("", "/") else endpoint
