"""The audit store's list and statistics reads: the request list, statistics and the audit trail.

Each takes a query struct (what the gateway sends over ``sy.rpc.audit.*``,
already scoped to the caller's tenant and, for a viewer, team) and answers a
JSON-ready dict. Bad input the gateway could not check (a cursor) raises
``BadQuery``, which the service answers as a 400.

Pagination is by keyset, newest first: the cursor is the last row's sort key
(``created_at`` or ``ts``, then the id), so pages never repeat or skip a row
even while new rows arrive at the head.

Percentiles (``/v1/stats``) are computed in SQL by the nearest-rank method:
the p-th percentile of n values is the value at rank ⌈p·n/100⌉ in ascending
order. One window query per measure ranks the values of the window
(``row_number()`` over each group, with the group's ``count(*)``) and returns
only the rows at the three ranks, so no values leave the database; both SQLite
(3.25+) and PostgreSQL run it. Up to ``EXACT_PERCENTILES`` requests in the
window every value is ranked (exact). Beyond that, ranking is the cost (a sort
of every value), so the values ranked are a bounded systematic sample: the
requests whose receive time in microseconds is a multiple of
``m = ⌈requests / EXACT_PERCENTILES⌉`` (after a modulo by a prime, so
requests at a regular interval do not all fall in or out), about ``EXACT_PERCENTILES`` of them,
chosen by a property unrelated to latency; the response says ``m`` as
``percentile_sample`` (1: exact). Counts, tokens, cost and savings are always
summed over every request. The scan is bounded by the window through the
``(tenant, created_at)`` and ``(tenant, team, created_at)`` indexes.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import msgspec
from sqlalchemy import BigInteger, Integer, and_, case, cast, func, literal, or_, select

from services.audit.store import COST_DIGITS, AuditStore
from services.audit.trail import public as trail_public

PERCENTILES = (50, 95, 99)
EXACT_PERCENTILES = 100_000  # requests in a window up to which percentiles rank every value
SAMPLE_PRIME = 1_000_003
FAILED = ("failed", "expired")  # ended in an error (denied and cancelled are counted apart)
OPEN = ("requested", "admitted", "in_progress")  # not ended yet: shown and filtered as ``in_progress``
NONE_KEY = "(none)"


class BadQuery(ValueError):
    """A query the store cannot answer as asked (the caller gets a 400 naming ``param``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class RequestsQuery(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """GET /v1/requests, scoped by the gateway."""

    tenant: str
    team: str | None = None
    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    outcome: str | None = None
    degraded: bool | None = None
    pii: bool | None = None
    job: bool | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 50
    cursor: str | None = None


class StatsQuery(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """GET /v1/stats, scoped by the gateway (``since``/``until`` from the window)."""

    tenant: str
    since: float
    until: float
    window: str = "1h"
    team: str | None = None
    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    group_by: str | None = None
    interval_s: float | None = None
    day_start: float | None = None  # the UTC day's start, for spend_today_usd
    exact: int = EXACT_PERCENTILES  # requests up to which percentiles rank every value


class EventsQuery(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """GET /v1/audit/events, scoped by the gateway."""

    tenant: str
    types: list[str] | None = None
    team: str | None = None
    key_id: str | None = None
    request_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    cursor: str | None = None


# ---- cursors -----------------------------------------------------------------------------------

def encode_cursor(t: float, ident: str) -> str:
    """An opaque cursor for the row sorted at ``(t, ident)``."""
    return base64.urlsafe_b64encode(json.dumps([t, ident]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``encode_cursor``'s inverse; ``BadQuery`` for anything it did not make."""
    try:
        t, ident = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(t), str(ident)
    except (ValueError, TypeError):
        raise BadQuery("cursor is not one this API returned (use next_cursor as given)", "cursor") from None


def _after(t_col: Any, id_col: Any, cursor: str | None) -> list[Any]:
    if cursor is None:
        return []
    t, ident = decode_cursor(cursor)
    return [or_(t_col < t, and_(t_col == t, id_col < ident))]


# ---- requests ----------------------------------------------------------------------------------

def _request_filters(r: Any, q: RequestsQuery | StatsQuery, *, window: bool = True) -> list[Any]:
    """The tenant, the filters and (``window``) the query's time range."""
    where = [r.c.tenant == q.tenant]
    if q.team is not None:
        where.append(r.c.team == q.team)
    if q.key_id is not None:
        where.append(r.c.key_id == q.key_id)
    if q.model is not None:
        where.append(or_(r.c.model == q.model, r.c.served_model == q.model))
    if q.provider is not None:
        where.append(r.c.provider == q.provider)
    if window and q.since is not None:
        where.append(r.c.created_at >= q.since)
    if window and q.until is not None:
        where.append(r.c.created_at < q.until)
    return where


async def list_requests(store: AuditStore, q: RequestsQuery) -> dict[str, Any]:
    """Requests newest first with their attempts in short form, one page after ``q.cursor``."""
    r, a = store.schema.requests, store.schema.attempts
    where = _request_filters(r, q)
    if q.outcome is not None:
        where.append(r.c.status.in_(OPEN) if q.outcome == "in_progress" else r.c.status == q.outcome)
    if q.degraded is not None:
        where.append(r.c.degraded.is_(True) if q.degraded else or_(r.c.degraded.is_(None), r.c.degraded.is_(False)))
    if q.pii is not None:
        where.append(r.c.pii.is_not(None) if q.pii else r.c.pii.is_(None))
    if q.job is not None:
        where.append(r.c.job.is_(q.job))
    where += _after(r.c.created_at, r.c.request_id, q.cursor)
    async with store.engine.connect() as conn:
        page = (await conn.execute(select(r).where(*where).order_by(r.c.created_at.desc(), r.c.request_id.desc())
                                   .limit(q.limit + 1))).mappings().all()
        rows = page[: q.limit]
        attempts: dict[str, list[dict[str, Any]]] = {}
        if rows:
            for row in (await conn.execute(
                    select(a.c.request_id, a.c.provider, a.c.model, a.c.outcome, a.c.latency_ms, a.c.cost_usd)
                    .where(a.c.request_id.in_([x["request_id"] for x in rows]), a.c.delivery == 0)
                    .order_by(a.c.request_id, a.c.attempt))).mappings():
                attempts.setdefault(row["request_id"], []).append(
                    {"provider": row["provider"], "model": row["model"], "outcome": row["outcome"],
                     "latency_ms": row["latency_ms"], "cost_usd": row["cost_usd"]})
    more = len(page) > q.limit
    return {"object": "list", "data": [_request_view(x, attempts.get(x["request_id"], [])) for x in rows],
            "has_more": more,
            "next_cursor": encode_cursor(rows[-1]["created_at"], rows[-1]["request_id"]) if more else None}


def _request_view(row: Any, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row["request_id"], "created": row["created_at"], "completed": row["completed_at"],
        "team": row["team"], "key_id": row["key_id"], "api": row["api"] or "chat.completions", "job": bool(row["job"]),
        "requested_model": row["model"], "served_model": row["served_model"], "provider": row["provider"],
        "outcome": "in_progress" if row["status"] in OPEN else row["status"], "attempts": attempts,
        "attempt_chain": " → ".join(f"{x['provider']}/{x['model']} {x['outcome']}" for x in attempts),
        "latency_ms": row["latency_ms"], "ttft_ms": row["ttft_ms"],
        "usage": {"prompt_tokens": int(row["prompt_tokens"]), "completion_tokens": int(row["completion_tokens"]),
                  "total_tokens": int(row["prompt_tokens"] + row["completion_tokens"])},
        "cost_usd": round(row["cost_usd"], COST_DIGITS), "degraded": bool(row["degraded"]),
        "pii": json.loads(row["pii"]) if row["pii"] else None,
        "error": None if row["error_code"] is None else {
            "type": row["error_type"], "code": row["error_code"], "message": row["error_message"]},
    }


# ---- statistics --------------------------------------------------------------------------------

def _group_key(r: Any, group_by: str | None) -> Any:
    if group_by is None:
        return literal(NONE_KEY)
    return {"model": func.coalesce(r.c.served_model, r.c.model, NONE_KEY),
            "provider": func.coalesce(r.c.provider, NONE_KEY),
            "team": r.c.team, "outcome": case((r.c.status.in_(OPEN), "in_progress"), else_=r.c.status)}[group_by]


def _count_if(cond: Any) -> Any:
    return func.sum(case((cond, 1), else_=0))


def _aggregates(r: Any) -> list[Any]:
    return [func.count(), _count_if(r.c.status == "succeeded"), _count_if(r.c.status.in_(FAILED)),
            _count_if(r.c.status == "denied"), _count_if(r.c.status == "cancelled"), _count_if(r.c.status.in_(OPEN)),
            func.sum(r.c.prompt_tokens), func.sum(r.c.completion_tokens), func.sum(r.c.cost_usd),
            _count_if(r.c.attempts > 1), func.sum(r.c.savings_usd)]


def _stats_view(agg: Any, latency: dict[int, float], ttft: dict[int, float]) -> dict[str, Any]:
    n, ok, failed, denied, cancelled, open_, prompt, completion, cost, fallbacks, savings = agg
    ok, failed = int(ok or 0), int(failed or 0)
    prompt, completion = int(prompt or 0), int(completion or 0)
    return {"requests": int(n or 0), "succeeded": ok, "failed": failed, "denied": int(denied or 0),
            "cancelled": int(cancelled or 0), "in_progress": int(open_ or 0),
            "success_rate": round(ok / (ok + failed), 6) if ok + failed else None,
            "latency_ms": {f"p{p}": latency.get(p) for p in PERCENTILES},
            "ttft_ms": {f"p{p}": ttft.get(p) for p in PERCENTILES},
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            "cost_usd": round(float(cost or 0.0), COST_DIGITS), "fallbacks": int(fallbacks or 0),
            "savings_usd": round(float(savings or 0.0), COST_DIGITS)}


async def _percentiles(conn: Any, r: Any, column: Any, where: list[Any], keys: list[Any],
                       sample: int = 1) -> dict[tuple, dict[int, float]]:
    """Nearest-rank P50/P95/P99 of ``column`` per ``keys`` (none: one set, keyed ``()``), in one window query;
    over every ``sample``-th request by receive time (see the module docstring) when ``sample`` > 1."""
    part = keys or None
    ranked = select(*[k.label(f"k{i}") for i, k in enumerate(keys)], column.label("v"),
                    func.row_number().over(partition_by=part, order_by=column).label("rn"),
                    func.count().over(partition_by=part).label("n")) \
        .where(*where, column.is_not(None), *_sampled(r, sample, conn.dialect.name)).subquery()
    ranks = [(p * ranked.c.n + 99) // 100 for p in PERCENTILES]  # floor division: ⌈p·n/100⌉
    rows = (await conn.execute(select(*[ranked.c[f"k{i}"] for i in range(len(keys))], ranked.c.v, ranked.c.rn,
                                      ranked.c.n).where(or_(*[ranked.c.rn == rank for rank in ranks])))).all()
    out: dict[tuple, dict[int, float]] = {}
    for *key, v, rn, n in rows:
        found = out.setdefault(tuple(key), {})
        for p in PERCENTILES:
            if rn == (p * n + 99) // 100:
                found[p] = round(float(v), 3)
    return out


def _sampled(r: Any, sample: int, dialect: str) -> list[Any]:
    """Every ``sample``-th request by its receive time in microseconds (nothing to do with its latency)."""
    if sample <= 1:
        return []
    micros = r.c.created_at * 1_000_000
    whole = cast(func.floor(micros), BigInteger) if dialect == "postgresql" else cast(micros, Integer)
    # Modulo a prime first: requests arriving at a regular interval would otherwise all fall in or out.
    return [(whole % SAMPLE_PRIME) % sample == 0]


def _bucket(r: Any, q: StatsQuery, dialect: str) -> Any:
    offset = (r.c.created_at - q.since) / q.interval_s
    # Non-negative inside the window: truncation is the floor (PostgreSQL's cast rounds, so it floors first).
    return cast(func.floor(offset), Integer) if dialect == "postgresql" else cast(offset, Integer)


async def stats(store: AuditStore, q: StatsQuery) -> dict[str, Any]:
    """Counts, success rate, latency and TTFT percentiles, tokens, cost, fallbacks and savings for the window:
    totals, per ``group_by`` key, and per ``interval_s`` bucket when asked."""
    r = store.schema.requests
    where = _request_filters(r, q)
    key = _group_key(r, q.group_by)
    dialect = store.engine.dialect.name
    async with store.engine.connect() as conn:
        groups: list[Any] = []
        if q.group_by is not None:
            groups = (await conn.execute(select(key.label("key"), *_aggregates(r)).where(*where).group_by(key)
                                         .order_by(func.count().desc(), key))).all()
            # Every aggregate is a count or a sum: the totals are the groups' sums (one scan fewer).
            totals = tuple(sum(g[i] or 0 for g in groups) for i in range(1, len(_aggregates(r)) + 1))
        else:
            totals = (await conn.execute(select(*_aggregates(r)).where(*where))).one()
        sample = max(1, math.ceil(int(totals[0] or 0) / max(1, q.exact)))
        lat = await _percentiles(conn, r, r.c.latency_ms, where, [], sample)
        ttft = await _percentiles(conn, r, r.c.ttft_ms, where, [], sample)
        body: dict[str, Any] = {
            "object": "stats", "window": q.window, "since": q.since, "until": q.until, "group_by": q.group_by,
            "percentile_sample": sample,
            "totals": _stats_view(totals, lat.get((), {}), ttft.get((), {})), "groups": []}
        if q.day_start is not None:
            spend = (await conn.execute(select(func.sum(r.c.cost_usd)).where(
                *_request_filters(r, q, window=False), r.c.created_at >= q.day_start))).scalar()
            body["totals"]["spend_today_usd"] = round(float(spend or 0.0), COST_DIGITS)
        if q.group_by is not None:
            g_lat = await _percentiles(conn, r, r.c.latency_ms, where, [key], sample)
            g_ttft = await _percentiles(conn, r, r.c.ttft_ms, where, [key], sample)
            body["groups"] = [{"key": k, **_stats_view(rest, g_lat.get((k,), {}), g_ttft.get((k,), {}))}
                              for k, *rest in groups]
        if q.interval_s is not None:
            bucket = _bucket(r, q, dialect)
            keys = [bucket] + ([key] if q.group_by is not None else [])
            points = (await conn.execute(
                select(*[k.label(f"k{i}") for i, k in enumerate(keys)], func.count(),
                       _count_if(r.c.status.in_(FAILED)), func.sum(r.c.cost_usd))
                .where(*where).group_by(*keys).order_by(*keys))).all()
            s_lat = await _percentiles(conn, r, r.c.latency_ms, where, keys, sample)
            body["series"] = []
            for row in points:
                k = tuple(row[: len(keys)])
                n, errors, cost = row[len(keys):]
                pct = s_lat.get(k, {})
                body["series"].append({
                    "t": q.since + int(k[0]) * q.interval_s, "key": k[1] if q.group_by is not None else None,
                    "requests": int(n), "errors": int(errors or 0), "cost_usd": round(float(cost or 0.0), COST_DIGITS),
                    **{f"latency_ms_p{p}": pct.get(p) for p in PERCENTILES}})
    return body


# ---- the audit trail ---------------------------------------------------------------------------

async def list_events(store: AuditStore, q: EventsQuery) -> dict[str, Any]:
    """Audit events newest first, one page after ``q.cursor``."""
    e = store.schema.events
    where = [e.c.tenant == q.tenant]
    if q.types:
        where.append(e.c.type.in_(q.types))
    for name in ("team", "key_id", "request_id"):
        if getattr(q, name) is not None:
            where.append(e.c[name] == getattr(q, name))
    if q.since is not None:
        where.append(e.c.ts >= q.since)
    if q.until is not None:
        where.append(e.c.ts < q.until)
    where += _after(e.c.ts, e.c.id, q.cursor)
    async with store.engine.connect() as conn:
        page = (await conn.execute(select(e).where(*where).order_by(e.c.ts.desc(), e.c.id.desc())
                                   .limit(q.limit + 1))).mappings().all()
    rows = page[: q.limit]
    more = len(page) > q.limit
    return {"object": "list", "data": [trail_public(x) for x in rows], "has_more": more,
            "next_cursor": encode_cursor(rows[-1]["ts"], rows[-1]["id"]) if more else None}

