"""The Grafana dashboards as code: ``python tools/dashboards.py`` (``make dashboards``) writes them to
deploy/grafana/dashboards/.

Five dashboards (Overview, Providers, Cost & budgets, Governance, Pipeline) in
Grafana 10+'s JSON model (schema 39), each with a ``datasource`` template
variable (no ``${DS_…}`` import inputs), so a provisioned copy works as it is.
Every panel carries a unit and a description saying what it shows and which
alert of deploy/prometheus/rules/ fires on it; every query is evaluated
against a real Prometheus by tests/e2e/test_observability.py, and
tests/unit/test_dashboards.py checks the files are what this module writes.
``$__rate_interval`` is the one Grafana variable the queries use.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39  # Grafana 10.4 / 11
R = "$__rate_interval"


@dataclass(frozen=True)
class Q:
    """One query of a panel."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel: its kind, title, what it means, unit and queries; laid out by ``dashboard``."""

    title: str
    description: str
    unit: str
    queries: tuple[Q, ...]
    kind: str = "timeseries"  # timeseries / stat / bargauge / state-timeline
    width: int = 12
    height: int = 8
    thresholds: tuple[tuple[float, str], ...] = ()  # (value, color) steps above the base green
    mappings: tuple[tuple[int, str, str], ...] = ()  # (value, text, color)
    extra: dict[str, Any] = field(default_factory=dict)


def q(expr: str, legend: str = "") -> Q:
    return Q(" ".join(expr.split()), legend)


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in p.thresholds]
    defaults: dict[str, Any] = {"unit": p.unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if p.mappings:
        defaults["mappings"] = [{"type": "value", "options": {
            str(v): {"text": t, "color": c, "index": i} for i, (v, t, c) in enumerate(p.mappings)}}]
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False}
        options: dict[str, Any] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "state-timeline":
        defaults["color"] = {"mode": "thresholds"}
        options = {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                   "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
    else:  # stat / bargauge
        defaults["color"] = {"mode": "thresholds"}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "orientation": "horizontal" if p.kind == "bargauge" else "auto"}
        if p.kind == "stat":
            options.update({"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto"})
        else:
            options.update({"displayMode": "gradient", "showUnfilled": True})
    panel = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": t.expr,
                     "legendFormat": t.legend or "__auto", "range": p.kind != "bargauge",
                     "instant": p.kind == "bargauge"} for i, t in enumerate(p.queries)],
    }
    panel.update(p.extra)
    return panel


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    """A dashboard with its panels laid out left to right, top to bottom on Grafana's 24-column grid."""
    laid, x, y, row_h = [], 0, 0, 0
    for pid, p in enumerate(panels, 1):
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        laid.append(_panel_json(p, pid, x, y))
        x, row_h = x + p.width, max(row_h, p.height)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["switchyard"],
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"type": "dashboards", "tags": ["switchyard"], "asDropdown": True, "title": "Switchyard"}],
        "templating": {"list": [{"name": "datasource", "label": "Data source", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": "",
                                 "options": []}]},
        "panels": laid,
    }


# ---- the dashboards --------------------------------------------------------------------------------

ERRORS = 'outcome=~"failed|expired|timeout|overloaded"'  # the outcomes the error SLO counts (rules too)
FAILING = 'outcome=~"failed|timeout|stream_broken|auth|circuit_open"'  # provider calls that show it down


def overview() -> dict[str, Any]:
    return dashboard("switchyard-overview", "Switchyard / Overview",
                     "Traffic, errors, latency, overhead, time to first token and cost burn: the gateway's view.", [
        Panel("Requests by outcome", "Synchronous requests finished at the gateway per second, by outcome "
              "(succeeded, failed, denied, timeout, overloaded, ...). Jobs are counted on the Pipeline dashboard.",
              "reqps", (q(f"sum by (outcome) (rate(switchyard_requests_total[{R}]))", "{{outcome}}"),)),
        Panel("Error ratio (SLO)", "Share of requests that ended failed, expired, timed out or overloaded, over 5 "
              "minutes and 1 hour (recording rules). SwitchyardErrorBudgetBurnFast/Slow fire when it burns the "
              "99.9 % availability budget 14.4× (1 h and 5 m) or 6× (6 h and 30 m) too fast.", "percentunit",
              (q("switchyard:request_errors:ratio_rate5m", "5m"), q("switchyard:request_errors:ratio_rate1h", "1h")),
              thresholds=((0.0144, "orange"), (0.05, "red"))),
        Panel("Latency", "End-to-end latency at the gateway (p50, p95, p99), provider time included.", "s",
              tuple(q(f"histogram_quantile({p}, sum by (le) (rate(switchyard_request_duration_seconds_bucket[{R}])))",
                      f"p{int(p * 100)}") for p in (0.5, 0.95, 0.99))),
        Panel("Overhead", "Time a request spent in Switchyard rather than waiting on the provider that answered "
              "(failed attempts and retry waits count here). The latency SLO: 99 % under 250 ms; "
              "SwitchyardLatencyBudgetBurnFast/Slow fire on its burn rate.", "s",
              tuple(q(f"histogram_quantile({p}, sum by (le) (rate(switchyard_gateway_overhead_seconds_bucket[{R}])))",
                      f"p{int(p * 100)}") for p in (0.5, 0.99)) + (
                  q("switchyard:request_slow:ratio_rate5m", "share over 250 ms (5m)"),)),
        Panel("Time to first token", "Streamed requests: time until the first chunk, at the gateway (p50, p95).",
              "s", tuple(q(f"histogram_quantile({p}, sum by (le) (rate("
                           f"switchyard_time_to_first_token_seconds_bucket{{gen_ai_provider_name=\"gateway\"}}[{R}])))",
                           f"p{int(p * 100)}") for p in (0.5, 0.95))),
        Panel("Cost burn rate by tenant", "US dollars per hour billed, per tenant (tenants past the label cap: "
              "'other').", "currencyUSD",
              (q(f"sum by (tenant) (rate(switchyard_tenant_cost_usd_total[{R}])) * 3600", "{{tenant}}"),)),
        Panel("Tokens per second", "Tokens billed per second, input and output.", "short",
              (q(f"sum by (gen_ai_token_type) (rate(switchyard_tenant_tokens_total[{R}]))", "{{gen_ai_token_type}}"),)),
        Panel("Open breakers", "Deployments whose circuit breaker is open now (SwitchyardBreakerOpen).", "short",
              (q('sum(max by (deployment) (switchyard_circuit_breaker_state{state="open"}))', "open"),),
              kind="stat", width=6, thresholds=((1, "red"),)),
        Panel("Jobs submitted", "Async jobs accepted per second.", "reqps",
              (q(f"sum(rate(switchyard_jobs_submitted_total[{R}]))", "jobs"),), kind="stat", width=6),
    ])


def providers() -> dict[str, Any]:
    return dashboard("switchyard-providers", "Switchyard / Providers",
                     "Per deployment: calls and outcomes, breakers, latency, fallbacks, rate limits, tokens, cost.", [
        Panel("Calls by deployment and outcome", "Provider calls per second by deployment and outcome (success, "
              "failed, timeout, rate_limited, circuit_open: refused by an open breaker without a call).", "reqps",
              (q(f"sum by (deployment, outcome) (rate(switchyard_deployment_attempts_total[{R}]))",
                 "{{deployment}} {{outcome}}"),)),
        Panel("Failing share by deployment", "Share of a deployment's calls that failed, timed out, broke or were "
              "refused by its breaker. SwitchyardProviderDown fires above 90 % for 5 minutes.", "percentunit",
              (q(f"sum by (deployment) (rate(switchyard_deployment_attempts_total{{{FAILING}}}[{R}])) / "
                 f"sum by (deployment) (rate(switchyard_deployment_attempts_total[{R}]))", "{{deployment}}"),),
              thresholds=((0.5, "orange"), (0.9, "red"))),
        Panel("Breaker state", "Each deployment's circuit breaker: closed, half-open (probing) or open "
              "(SwitchyardBreakerOpen fires after 1 minute open).", "short",
              (q('max by (deployment) (switchyard_circuit_breaker_state{state="half_open"}) '
                 '+ 2 * max by (deployment) (switchyard_circuit_breaker_state{state=~"open|forced_open"})',
                 "{{deployment}}"),),
              kind="state-timeline", width=24, height=6,
              mappings=((0, "closed", "green"), (1, "half-open", "orange"), (2, "open", "red"))),
        Panel("Call latency p95 by model", "Provider call duration (GenAI gen_ai.client.operation.duration, "
              "whole answers and embeddings), p95 per provider and model.", "s",
              (q(f"histogram_quantile(0.95, sum by (le, gen_ai_provider_name, gen_ai_request_model) "
                 f"(rate(gen_ai_client_operation_duration_seconds_bucket[{R}])))",
                 "{{gen_ai_provider_name}} {{gen_ai_request_model}}"),)),
        Panel("Time to first token p95 by provider", "Streamed calls: time until the provider's first chunk.", "s",
              (q(f"histogram_quantile(0.95, sum by (le, gen_ai_provider_name) (rate("
                 f"switchyard_time_to_first_token_seconds_bucket{{gen_ai_provider_name!=\"gateway\"}}[{R}])))",
                 "{{gen_ai_provider_name}}"),)),
        Panel("Fallbacks and retries", "Attempts dispatched after a failed one, by the deployment that failed and "
              "the kind (fallback to another candidate, retry of the same, last resort).", "ops",
              (q(f"sum by (deployment, kind) (rate(switchyard_fallbacks_total[{R}]))", "{{deployment}} {{kind}}"),)),
        Panel("Rate-limited calls", "Calls a provider answered 429, per deployment (retried or fallen back by the "
              "router).", "ops",
              (q(f'sum by (deployment) (rate(switchyard_deployment_attempts_total{{outcome="rate_limited"}}[{R}]))',
                 "{{deployment}}"),)),
        Panel("Calls in flight", "Provider calls in progress per provider (bounded by each provider's "
              "max_in_flight).", "short",
              (q("sum by (gen_ai_provider_name) (switchyard_worker_in_flight)", "{{gen_ai_provider_name}}"),)),
        Panel("Tokens by model", "Tokens per second per provider, model and type (GenAI gen_ai.client.token.usage; "
              "whole answers and embeddings).", "short",
              (q(f"sum by (gen_ai_provider_name, gen_ai_request_model, gen_ai_token_type) "
                 f"(rate(gen_ai_client_token_usage_sum[{R}]))",
                 "{{gen_ai_provider_name}} {{gen_ai_request_model}} {{gen_ai_token_type}}"),)),
        Panel("Cost by provider", "US dollars per hour billed per provider.", "currencyUSD",
              (q(f"sum by (gen_ai_provider_name) (rate(switchyard_cost_usd_total[{R}])) * 3600",
                 "{{gen_ai_provider_name}}"),)),
    ])


def cost() -> dict[str, Any]:
    return dashboard("switchyard-cost", "Switchyard / Cost & budgets",
                     "Spend and tokens per tenant, team and model; budget use; what routing saved.", [
        Panel("Burn rate by tenant", "US dollars per hour billed per tenant.", "currencyUSD",
              (q(f"sum by (tenant) (rate(switchyard_tenant_cost_usd_total[{R}])) * 3600", "{{tenant}}"),)),
        Panel("Burn rate by team", "US dollars per hour billed per tenant and team (past the cap: 'other').",
              "currencyUSD",
              (q(f"sum by (tenant, team) (rate(switchyard_tenant_cost_usd_total[{R}])) * 3600",
                 "{{tenant}}/{{team}}"),)),
        Panel("Burn rate by model", "US dollars per hour billed per model.", "currencyUSD",
              (q(f"sum by (gen_ai_request_model) (rate(switchyard_tenant_cost_usd_total[{R}])) * 3600",
                 "{{gen_ai_request_model}}"),)),
        Panel("Tokens by tenant", "Tokens billed per second per tenant and type.", "short",
              (q(f"sum by (tenant, gen_ai_token_type) (rate(switchyard_tenant_tokens_total[{R}]))",
                 "{{tenant}} {{gen_ai_token_type}}"),)),
        Panel("Budget use by team", "Spent share of each team's budget in the current period (spent / limit). "
              "SwitchyardBudgetNearLimit fires at 80 %.", "percentunit",
              (q("max by (tenant, team, period) (switchyard_budget_utilization_ratio)",
                 "{{tenant}}/{{team}} {{period}}"),),
              kind="bargauge", thresholds=((0.8, "orange"), (1, "red"))),
        Panel("Budget spent and limit", "Each team's spend in the current period against its limit.",
              "currencyUSD",
              (q("max by (tenant, team, period) (switchyard_budget_spent_usd)",
                 "{{tenant}}/{{team}} {{period}} spent"),
               q("max by (tenant, team, period) (switchyard_budget_limit_usd)",
                 "{{tenant}}/{{team}} {{period}} limit"))),
        Panel("Budget refusals", "Requests refused because a budget could not cover them, per team "
              "(SwitchyardBudgetExhausted).", "reqps",
              (q(f"sum by (tenant, team) (rate(switchyard_budget_denials_total[{R}]))", "{{tenant}}/{{team}}"),)),
        Panel("Savings from routing", "US dollars per hour the answers would have cost beyond their cost on the "
              "most expensive eligible candidate (aliases, routes and auto routing).", "currencyUSD",
              (q(f"sum by (tenant) (rate(switchyard_routing_savings_usd_total[{R}])) * 3600", "{{tenant}}"),)),
        Panel("Spend in the last 24 hours", "US dollars billed per tenant over the last day.", "currencyUSD",
              (q("sum by (tenant) (increase(switchyard_tenant_cost_usd_total[24h]))", "{{tenant}}"),),
              kind="stat", width=24, height=5),
    ])


def governance() -> dict[str, Any]:
    return dashboard("switchyard-governance", "Switchyard / Governance",
                     "Admission decisions and their reasons, personal data found, prompt-risk flags, budget events.", [
        Panel("Admissions by decision", "Policy's decisions per second.", "reqps",
              (q(f"sum by (decision) (rate(switchyard_admissions_total[{R}]))", "{{decision}}"),)),
        Panel("Denials by reason", "Denied requests per second by reason (the error code: budget_exceeded, "
              "rate_limit_exceeded, pii_detected, prompt_risk_blocked, ...).", "reqps",
              (q(f'sum by (reason) (rate(switchyard_admissions_total{{decision="denied"}}[{R}]))', "{{reason}}"),)),
        Panel("Requests by tenant", "Admission decisions per second per tenant (past the cap: 'other').", "reqps",
              (q(f"sum by (tenant, decision) (rate(switchyard_tenant_requests_total[{R}]))",
                 "{{tenant}} {{decision}}"),)),
        Panel("PII entities", "Personal data and secrets found in prompts per second, by kind and the team's "
              "action (redact, block, allow).", "ops",
              (q(f"sum by (kind, action) (rate(switchyard_pii_entities_total[{R}]))", "{{kind}} {{action}}"),)),
        Panel("Prompt-risk flags", "Requests whose prompt-injection risk reached the team's threshold, by action.",
              "reqps", (q(f"sum by (action) (rate(switchyard_risk_flagged_total[{R}]))", "{{action}}"),)),
        Panel("Budget events", "Budget reservations, settlements and releases per second.", "ops",
              (q(f"sum by (kind) (rate(switchyard_budget_events_total[{R}]))", "{{kind}}"),)),
        Panel("Budget alerts sent", "Soft budget alerts in the last hour, by scope kind, period and threshold.",
              "short",
              (q("sum by (scope_kind, period, threshold) (increase(switchyard_budget_alerts_total[1h]))",
                 "{{scope_kind}} {{period}} ≥{{threshold}}"),)),
        Panel("Budget use by team", "Spent share of each team's budget (SwitchyardBudgetNearLimit at 80 %).",
              "percentunit", (q("max by (tenant, team, period) (switchyard_budget_utilization_ratio)",
                                "{{tenant}}/{{team}} {{period}}"),),
              thresholds=((0.8, "orange"), (1, "red"))),
    ])


def pipeline() -> dict[str, Any]:
    return dashboard("switchyard-pipeline", "Switchyard / Pipeline",
                     "The event stream and its consumers: lag, redeliveries, stage latency, stream fill, loop lag, "
                     "jobs.", [
        Panel("Consumer lag", "Messages each durable consumer has not finished (pending + unacknowledged), from "
              "JetStream's consumer info. SwitchyardConsumerLagGrowing fires above 100 and still growing.",
              "short", (q("switchyard:consumer_lag:max", "{{consumer}}"),)),
        Panel("Oldest unacknowledged message", "Age of each consumer's oldest message not yet acknowledged. "
              "SwitchyardAuditBehind fires when audit's passes 30 s for 5 minutes.", "s",
              (q("max by (consumer) (switchyard_consumer_oldest_unacked_age_seconds)", "{{consumer}}"),)),
        Panel("Redeliveries", "Messages received again per second, by service (a failed or timed-out delivery, "
              "or a planned retry). SwitchyardRedeliveryStorm fires above 1/s for 10 minutes.", "ops",
              (q(f"sum by (service) (rate(switchyard_redeliveries_total[{R}]))", "{{service}}"),)),
        Panel("Redelivered, not yet acknowledged", "Messages each consumer has delivered more than once and "
              "still holds.", "short",
              (q("max by (consumer) (switchyard_consumer_redelivered_messages)", "{{consumer}}"),)),
        Panel("Stage latency p99", "Handler time per message, by stage (service), p99.", "s",
              (q(f"histogram_quantile(0.99, sum by (le, service) "
                 f"(rate(switchyard_handler_duration_seconds_bucket[{R}])))",
                 "{{service}}"),)),
        Panel("Messages handled", "Messages handled per second by service and result (ack, nak, defer, term).",
              "ops", (q(f"sum by (service, result) (rate(switchyard_events_handled_total[{R}]))",
                        "{{service}} {{result}}"),)),
        Panel("Stream fill", "The stream's bytes and messages against its limits (SwitchyardStreamNearLimit at "
              "80 %).", "percentunit",
              (q("switchyard:stream_fill:ratio", "{{stream}}"),), thresholds=((0.8, "orange"), (0.95, "red"))),
        Panel("Stream size", "Messages in the stream.", "short",
              (q("max by (stream) (switchyard_stream_messages)", "{{stream}} messages"),)),
        Panel("Event loop lag p99", "How late each process's event loop ran a timer: time every request waits "
              "for the loop.", "s",
              (q(f"histogram_quantile(0.99, sum by (le, instance) "
                 f"(rate(switchyard_event_loop_lag_seconds_bucket[{R}])))",
                 "{{instance}}"),)),
        Panel("Jobs by status", "Async jobs not finished, by status (queued, in progress), as audit recorded them.",
              "short", (q("max by (status) (switchyard_jobs)", "{{status}}"),)),
        Panel("Jobs finished", "Async jobs finished per second, by status.", "ops",
              (q(f"sum by (status) (rate(switchyard_jobs_finished_total[{R}]))", "{{status}}"),)),
        Panel("Oldest unfinished job", "Age of the oldest job in each unfinished status.", "s",
              (q("max by (status) (switchyard_jobs_oldest_age_seconds)", "{{status}}"),)),
    ])


DASHBOARDS = {"overview.json": overview, "providers.json": providers, "cost.json": cost,
              "governance.json": governance, "pipeline.json": pipeline}


def render(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUT
    out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (out / name).write_text(render(build()))
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
