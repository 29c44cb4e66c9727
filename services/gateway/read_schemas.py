"""Response schemas of the read endpoints (request list, statistics, audit trail, who am I) for the OpenAPI document.

The bodies themselves are built by audit (``services/audit/queries.py``);
these structs describe them for ``/docs`` and clients. ``schema_of`` gives a
route's ``returns`` with every reference inlined (no component to register),
and ``query`` declares its query parameters, so "Try it out" offers them.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct


class Usage(Struct):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AttemptBrief(Struct):
    """One attempt of a request, in short."""

    provider: str
    model: str
    outcome: str
    latency_ms: float | None
    cost_usd: float


class ErrorBrief(Struct):
    """Why a request did not succeed."""

    type: str | None
    code: str
    message: str | None


class RequestSummary(Struct):
    """One row of GET /v1/requests."""

    id: str
    created: float
    completed: float | None
    team: str
    key_id: str
    api: str
    job: bool
    requested_model: str | None
    served_model: str | None
    provider: str | None
    outcome: str
    attempts: list[AttemptBrief]
    attempt_chain: str
    latency_ms: float | None
    ttft_ms: float | None
    usage: Usage
    cost_usd: float
    degraded: bool
    pii: dict[str, int] | None
    error: ErrorBrief | None


class RequestList(Struct):
    """GET /v1/requests: newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    object: str
    data: list[RequestSummary]
    has_more: bool
    next_cursor: str | None


class Percentiles(Struct):
    """Nearest-rank percentiles in milliseconds (null without values)."""

    p50: float | None
    p95: float | None
    p99: float | None


class Stats(Struct, kw_only=True):
    """Figures over the window."""

    requests: int
    succeeded: int
    failed: int  # failed or expired
    denied: int
    cancelled: int
    in_progress: int
    success_rate: float | None  # succeeded / (succeeded + failed)
    latency_ms: Percentiles
    ttft_ms: Percentiles
    usage: Usage
    cost_usd: float
    fallbacks: int  # requests that took more than one attempt
    savings_usd: float  # against the most expensive eligible alternative
    spend_today_usd: float | None = None  # totals only: the UTC day so far


class GroupStats(Stats, kw_only=True):
    """Figures of one ``group_by`` key."""

    key: str


class SeriesPoint(Struct):
    """One ``interval`` bucket (per group key when grouped)."""

    t: float
    key: str | None
    requests: int
    errors: int
    cost_usd: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None


class StatsBody(Struct, kw_only=True):
    """GET /v1/stats."""

    object: str
    window: str
    since: float
    until: float
    group_by: str | None
    totals: Stats
    groups: list[GroupStats]
    series: list[SeriesPoint] | None = None
    percentile_sample: int = 1  # 1: percentiles rank every value; m: every m-th request (a bounded sample)


class AuditEvent(Struct):
    """One audit event (metadata only: never prompt or completion text, never a key)."""

    id: str
    ts: float
    type: str
    tenant: str
    team: str | None
    key_id: str | None
    request_id: str | None
    actor: str | None
    detail: dict[str, Any]


class AuditEventList(Struct):
    """GET /v1/audit/events (JSON; ``Accept: application/x-ndjson`` gives one event per line)."""

    object: str
    data: list[AuditEvent]
    has_more: bool
    next_cursor: str | None


class Me(Struct):
    """GET /v1/me: who the caller's key is."""

    tenant: str
    team: str
    role: str
    key_id: str
    operator: bool


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def schema_of(body: type) -> dict[str, Any]:
    """``body``'s JSON Schema with every reference inlined (a route's ``returns``)."""
    schema = msgspec.json.schema(body)
    return _inline(schema, schema.get("$defs", {}))


_FILTERS = {"team": "a team (a viewer's own team whatever it asks)", "key_id": "a key id",
            "model": "requested or served model", "provider": "the provider that answered"}
_RANGE = {"since": "epoch seconds or ISO 8601, inclusive", "until": "epoch seconds or ISO 8601, exclusive",
          "limit": "1 to 1000", "cursor": "next_cursor of the previous page"}
REQUESTS_PARAMS = {**_FILTERS, "outcome": "succeeded, failed, denied, cancelled, expired or in_progress",
                   "degraded": "true or false", "pii": "true or false", "job": "true or false", **_RANGE}
STATS_PARAMS = {**_FILTERS, "window": "15m, 1h, 24h, 7d, ... (default 1h, at most 31d)",
                "group_by": "model, provider, team or outcome", "interval": "1m, 5m, 1h, ...: adds a time series"}
EVENTS_PARAMS = {"type": "comma list of event types", "team": _FILTERS["team"], "key_id": "a key id",
                 "request_id": "a request id", **_RANGE}


def query(params: dict[str, str], ndjson: bool = False) -> dict[str, Any]:
    """A route's ``openapi_extra``: its query parameters (all optional strings), and NDJSON when offered."""
    out: dict[str, Any] = {"parameters": [
        {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in params.items()]}
    if ndjson:
        out["responses"] = {"200": {"content": {"application/x-ndjson": {
            "schema": {"type": "string", "description": "one event per line; the next page's cursor in x-next-cursor"}}}}}
    return out
