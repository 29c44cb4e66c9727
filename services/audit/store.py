"""The audit store: per-request traces and the cost ledger in SQL (SQLite by default, PostgreSQL by URL).

SQLAlchemy 2 Core on async engines; a SQLite file's batches are written
through ``sqlite3`` directly with the same statements (``_SqliteWriter``).
``apply`` writes one batch of rows from
``services.audit.handlers.build_rows`` in one transaction of upserts whose
merge rules live in SQL, so redeliveries, batches applied out of order and
concurrent replicas all converge on the same contents:

- requests: a row only moves to a higher stage (the first terminal status
  stored is final); identity columns keep their first value; the model and
  trace id are filled in once known.
- attempts: the first resolved outcome stands over ``dispatched``; ``ts`` is
  the earliest seen.
- ledger: insert once per ``(request_id, attempt)``, never updated.
- admissions: insert once per request (policy's first decision stands).
- budget events: insert once per event id.
- routing decisions (per request) and attempt routing (per attempt): insert once.
- audit events (the audit trail, per event id): insert once.

The request list, statistics and audit-trail reads are in ``services.audit.queries``.

A request's cost, token and attempt totals are re-summed from its attempt rows
in the same transaction. The request rows are upserted first, in key order,
which on PostgreSQL takes their row locks in a fixed order: a concurrent
transaction touching the same request waits, then sums what was committed, so
totals are never computed from half of two batches (and no deadlock arises).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.audit.handlers import DISPATCHED, FINAL_DELIVERY, TERMINAL_STAGE, AuditBatch

MAX_LEDGER_PAGE = 1000
OPEN_JOBS = f"job AND stage < {TERMINAL_STAGE}"  # spelled the same in the partial index and its query
COST_DIGITS = 10  # sums of floats are rounded so equal ledgers print equal totals


@dataclass(frozen=True)
class Schema:
    """The audit tables, named with a prefix so several stores can share one database."""

    metadata: MetaData
    requests: Table
    attempts: Table
    ledger: Table
    admissions: Table
    budget: Table
    routing: Table | None = None
    attempt_routes: Table | None = None
    events: Table | None = None


def build_schema(prefix: str = "audit_") -> Schema:
    """Table definitions for ``prefix`` (built per store: nothing is shared at module level)."""
    md = MetaData()
    requests = Table(
        f"{prefix}requests", md,
        Column("request_id", String(128), primary_key=True),
        Column("tenant", String(128), nullable=False),
        Column("team", String(128), nullable=False),
        Column("key_id", String(128), nullable=False),
        Column("model", String(256)),
        Column("stage", Integer, nullable=False),
        Column("status", String(32), nullable=False),
        Column("job", Boolean, nullable=False, default=False),
        Column("created_at", Float, nullable=False),
        Column("completed_at", Float),
        Column("error_status", Integer),
        Column("error_type", String(64)),
        Column("error_code", String(128)),
        Column("error_message", Text),
        Column("attempts", Integer, nullable=False, default=0),
        Column("prompt_tokens", BigInteger, nullable=False, default=0),
        Column("completion_tokens", BigInteger, nullable=False, default=0),
        Column("cached_tokens", BigInteger, nullable=False, default=0),
        Column("reasoning_tokens", BigInteger, nullable=False, default=0),
        Column("cost_usd", Float, nullable=False, default=0.0),
        Column("trace_id", String(32)),
        Column("completion_text", Text),
        Column("prompt_id", String(128)),
        Column("prompt_version", Integer),
        # The request list and statistics (added later, so nullable): see RequestRow.
        Column("api", String(32)),
        Column("served_model", String(256)),
        Column("provider", String(128)),
        Column("latency_ms", Float),
        Column("ttft_ms", Float),
        Column("degraded", Boolean),
        Column("pii", Text),
        Column("savings_usd", Float),
        Index(f"{prefix}requests_tenant", "tenant", "created_at"),
        # A team's requests over a time range (a viewer's every read, and team filters) without the tenant's.
        Index(f"{prefix}requests_team", "tenant", "team", "created_at"),
        # Unfinished jobs only (partial): the job gauges read these rows and no others; sync requests never enter.
        Index(f"{prefix}requests_open_jobs", "status", "created_at", sqlite_where=text(OPEN_JOBS),
              postgresql_where=text(OPEN_JOBS)),
    )
    attempts = Table(
        f"{prefix}attempts", md,
        Column("request_id", String(128), primary_key=True),
        Column("attempt", Integer, primary_key=True),
        Column("delivery", Integer, primary_key=True),  # 0: the attempt's record; n >= 1: interrupted delivery n
        Column("provider", String(128), nullable=False),
        Column("model", String(256), nullable=False),
        Column("deployment", String(256), nullable=False),
        Column("outcome", String(32), nullable=False),
        Column("ts", Float, nullable=False),
        Column("latency_ms", Float),
        Column("prompt_tokens", Integer, nullable=False, default=0),
        Column("completion_tokens", Integer, nullable=False, default=0),
        Column("cached_tokens", Integer, nullable=False, default=0),
        Column("reasoning_tokens", Integer, nullable=False, default=0),
        Column("cost_usd", Float, nullable=False, default=0.0),
        Column("error_code", String(128)),
        Column("error_message", Text),
        Column("ttft_ms", Float),
        Column("cache", Text),
        Column("detail", Text),  # operator-only (see AuditStore.trace); added later, so nullable
    )
    ledger = Table(
        f"{prefix}ledger", md,
        Column("request_id", String(128), primary_key=True),
        Column("attempt", Integer, primary_key=True),
        Column("tenant", String(128), nullable=False),
        Column("team", String(128), nullable=False),
        Column("key_id", String(128), nullable=False),
        Column("provider", String(128), nullable=False),
        Column("model", String(256), nullable=False),
        Column("deployment", String(256), nullable=False),
        Column("prompt_tokens", Integer, nullable=False),
        Column("completion_tokens", Integer, nullable=False),
        Column("cached_tokens", Integer, nullable=False),
        Column("reasoning_tokens", Integer, nullable=False),
        Column("cost_usd", Float, nullable=False),
        Column("ts", Float, nullable=False),
        Column("cache", String(16)),
        Column("savings_usd", Float),
        Index(f"{prefix}ledger_tenant_ts", "tenant", "ts"),
        Index(f"{prefix}ledger_team", "team"),
    )
    admissions = Table(
        f"{prefix}admissions", md,
        Column("request_id", String(128), primary_key=True),
        Column("decision", String(16), nullable=False),
        Column("reason", String(128), nullable=False),
        Column("data_class", String(32)),
        Column("details", Text, nullable=False),
        Column("ts", Float, nullable=False),
    )
    budget = Table(
        f"{prefix}budget_events", md,
        Column("event_id", String(256), primary_key=True),
        Column("request_id", String(128), nullable=False),
        Column("kind", String(16), nullable=False),
        Column("amount_usd", Float, nullable=False),
        Column("details", Text, nullable=False),
        Column("ts", Float, nullable=False),
        Index(f"{prefix}budget_events_request", "request_id"),
    )
    routing = Table(
        f"{prefix}routing", md,
        Column("request_id", String(128), primary_key=True),
        Column("decision", Text, nullable=False),
        Column("ts", Float, nullable=False),
    )
    attempt_routes = Table(
        f"{prefix}attempt_routes", md,
        Column("request_id", String(128), primary_key=True),
        Column("attempt", Integer, primary_key=True),
        Column("kind", String(16), nullable=False),
        Column("breaker_state", String(16), nullable=False),
        Column("reason", Text, nullable=False),
        Column("not_before", Float),
        Column("degraded", Boolean, nullable=False),
        Column("ts", Float, nullable=False),
    )
    events = Table(
        f"{prefix}events", md,  # the audit trail (services/audit/trail.py): metadata only
        Column("id", String(256), primary_key=True),
        Column("ts", Float, nullable=False),
        Column("type", String(32), nullable=False),
        Column("tenant", String(128), nullable=False),
        Column("team", String(128)),
        Column("key_id", String(128)),
        Column("request_id", String(128)),
        Column("actor", String(128)),
        Column("detail", Text, nullable=False),
        Index(f"{prefix}events_tenant_ts", "tenant", "ts", "id"),
        Index(f"{prefix}events_request", "request_id"),
    )
    return Schema(metadata=md, requests=requests, attempts=attempts, ledger=ledger, admissions=admissions,
                  budget=budget, routing=routing, attempt_routes=attempt_routes, events=events)


@dataclass(frozen=True)
class _WriteStatements:
    """The upserts and inserts ``apply`` runs, built once per store."""

    requests: Any
    attempts: Any
    ledger: Any
    admissions: Any
    budget: Any
    routing: Any
    attempt_routes: Any
    totals: Any
    sums: Any
    events: Any


def _attempt_sums(a: Table) -> Any:
    """Attempt count and token/cost sums of the requests in ``:ids``, which the batch touched."""
    return (select(a.c.request_id, func.count(a.c.attempt.distinct()), func.sum(a.c.prompt_tokens),
                   func.sum(a.c.completion_tokens), func.sum(a.c.cached_tokens), func.sum(a.c.reasoning_tokens),
                   func.sum(a.c.cost_usd))
            .where(a.c.request_id.in_(bindparam("ids", expanding=True)))
            .group_by(a.c.request_id)
            .order_by(a.c.request_id))


def _request_upsert(insert: Any, t: Table) -> Any:
    """Requests: a row only moves to a higher stage; the model and trace id are filled in once known."""
    stmt = insert(t)
    new = stmt.excluded
    advances = new.stage > t.c.stage
    by_stage = {name: case((advances, new[name]), else_=t.c[name]) for name in (
        "stage", "status", "completed_at", "error_status", "error_type", "error_code", "error_message",
        "completion_text", "served_model", "provider", "latency_ms", "ttft_ms", "degraded", "savings_usd")}
    return stmt.on_conflict_do_update(index_elements=["request_id"], set_={
        **by_stage, "model": func.coalesce(t.c.model, new.model), "trace_id": func.coalesce(t.c.trace_id, new.trace_id),
        "api": func.coalesce(t.c.api, new.api), "pii": func.coalesce(t.c.pii, new.pii),
        "prompt_id": func.coalesce(t.c.prompt_id, new.prompt_id),
        "prompt_version": func.coalesce(t.c.prompt_version, new.prompt_version)})


def _attempt_upsert(insert: Any, t: Table) -> Any:
    """Attempts: the first resolved outcome stands over ``dispatched``; ``ts`` is the earliest seen."""
    stmt = insert(t)
    new = stmt.excluded
    resolves = and_(t.c.outcome == DISPATCHED, new.outcome != DISPATCHED)
    on_resolve = {name: case((resolves, new[name]), else_=t.c[name]) for name in (
        "outcome", "latency_ms", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
        "cost_usd", "error_code", "error_message", "ttft_ms", "cache", "detail")}
    return stmt.on_conflict_do_update(index_elements=["request_id", "attempt", "delivery"], set_={
        **on_resolve, "ts": case((new.ts < t.c.ts, new.ts), else_=t.c.ts)})


class AuditStore:
    """Traces and the cost ledger behind one async SQLAlchemy engine."""

    def __init__(self, engine: AsyncEngine, schema: Schema) -> None:
        self.engine = engine
        self.schema = schema
        dialect = engine.dialect.name
        if dialect == "sqlite":
            insert = sqlite.insert
        elif dialect == "postgresql":
            insert = postgresql.insert
        else:
            raise ValueError(f"unsupported audit database {dialect!r}: use sqlite+aiosqlite or postgresql+asyncpg")
        # Every write statement is built once: constructing upserts with their CASE clauses per batch cost
        # more CPU than executing them.
        sc = schema
        self._writes = _WriteStatements(
            requests=_request_upsert(insert, sc.requests), attempts=_attempt_upsert(insert, sc.attempts),
            ledger=insert(sc.ledger).on_conflict_do_nothing(index_elements=["request_id", "attempt"]),
            admissions=insert(sc.admissions).on_conflict_do_nothing(index_elements=["request_id"]),
            budget=insert(sc.budget).on_conflict_do_nothing(index_elements=["event_id"]),
            routing=insert(sc.routing).on_conflict_do_nothing(index_elements=["request_id"]),
            attempt_routes=insert(sc.attempt_routes).on_conflict_do_nothing(index_elements=["request_id", "attempt"]),
            totals=update(sc.requests).where(sc.requests.c.request_id == bindparam("b_id")).values(
                attempts=bindparam("b_attempts"), prompt_tokens=bindparam("b_prompt"),
                completion_tokens=bindparam("b_completion"), cached_tokens=bindparam("b_cached"),
                reasoning_tokens=bindparam("b_reasoning"), cost_usd=bindparam("b_cost")),
            sums=_attempt_sums(sc.attempts),
            events=insert(sc.events).on_conflict_do_nothing(index_elements=["id"]))
        self._direct: _SqliteWriter | None = None  # a SQLite file's writes (see _SqliteWriter)

    @classmethod
    async def open(cls, url: str, *, prefix: str = "audit_", direct: bool = True) -> "AuditStore":
        """Connect to ``url`` and create the tables and indexes that are missing.

        ``direct``: write a SQLite file's batches through ``_SqliteWriter`` (False keeps them on the engine, as
        PostgreSQL's are: the tests compare the two)."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
                _owner_only(os.path.abspath(parsed.database))
            engine = create_async_engine(url)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(url, pool_pre_ping=True)
        store = cls(engine, build_schema(prefix))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(store.schema.metadata.create_all)
                await conn.run_sync(_add_missing_columns, store.schema.metadata)
                await conn.run_sync(_add_missing_indexes, store.schema.metadata)
            # A file with no URL options: writes go through sqlite3 directly (an in-memory database would be a
            # second, empty one on another connection, so it stays on the engine).
            if direct and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
                    and not parsed.query:
                store._direct = _SqliteWriter(os.path.abspath(parsed.database), store._writes)
                await store._direct.open()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
            self._direct = None
        await self.engine.dispose()

    async def ping(self) -> None:
        """Raise if the database cannot be reached (for readiness checks)."""
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    # ---- writing ----------------------------------------------------------------------------

    async def apply(self, batch: AuditBatch) -> None:
        """Write one batch in one transaction; applying it again changes nothing."""
        if not batch:
            return
        plan = _plan(batch)
        if self._direct is not None:
            await self._direct.apply(plan)
            return
        w = self._writes
        async with self.engine.begin() as conn:
            for name, rows in plan:
                if name == "resum":
                    params = _totals_params((await conn.execute(w.sums, {"ids": rows})).all())
                    if params:
                        await conn.execute(w.totals, params)
                else:
                    await conn.execute(getattr(w, name), rows)

    # ---- reading ----------------------------------------------------------------------------

    async def trace(self, request_id: str, tenant: str, operator: bool = False) -> dict | None:
        """The request's trace, or None when there is none *for this tenant* (callers answer 404 either way).

        Each attempt's ``detail`` (the scrubbed upstream status and error body) is in it for an operator only.
        """
        r, a = self.schema.requests, self.schema.attempts
        adm, bud = self.schema.admissions, self.schema.budget
        async with self.engine.connect() as conn:
            req = (await conn.execute(
                select(r).where(r.c.request_id == request_id, r.c.tenant == tenant))).mappings().first()
            if req is None:
                return None
            rows = (await conn.execute(
                select(a).where(a.c.request_id == request_id)
                # The attempt's own record (delivery 0) closes its group, after the interrupted deliveries.
                .order_by(a.c.attempt, case((a.c.delivery == FINAL_DELIVERY, 1), else_=0), a.c.delivery)
            )).mappings().all()
            decision = (await conn.execute(select(adm).where(adm.c.request_id == request_id))).mappings().first()
            budget_rows = (await conn.execute(
                select(bud).where(bud.c.request_id == request_id).order_by(bud.c.ts, bud.c.event_id)
            )).mappings().all()
            rt, ar = self.schema.routing, self.schema.attempt_routes
            routed = (await conn.execute(select(rt).where(rt.c.request_id == request_id))).mappings().first()
            whys = {row["attempt"]: row for row in (await conn.execute(
                select(ar).where(ar.c.request_id == request_id))).mappings().all()}

        completed = req["completed_at"]
        body: dict[str, Any] = {
            "id": req["request_id"],
            "object": "request.trace",
            "status": req["status"],
            "model": req["model"],
            "team": req["team"],
            "created_at": req["created_at"],
            "completed_at": completed,
            "latency_ms": round((completed - req["created_at"]) * 1000, 3) if completed is not None else None,
            "cost_usd": round(req["cost_usd"], COST_DIGITS),
            "usage": {
                "prompt_tokens": req["prompt_tokens"],
                "completion_tokens": req["completion_tokens"],
                "total_tokens": req["prompt_tokens"] + req["completion_tokens"],
                "cached_tokens": req["cached_tokens"],
                "reasoning_tokens": req["reasoning_tokens"],
            },
            "error": None if req["error_code"] is None else {
                "status": req["error_status"], "type": req["error_type"],
                "code": req["error_code"], "message": req["error_message"],
            },
            "job": req["job"],
            "trace_id": req["trace_id"],
            "attempts": [_attempt_view(row, whys.get(row["attempt"]), operator) for row in rows],
        }
        # How the router decided, when it recorded a decision: every candidate, and each attempt's outcome.
        if routed is not None:
            body["routing"] = _routing_view(json.loads(routed["decision"]))
            body["outcomes"] = _outcomes(body["attempts"])
            body["degraded"] = any(a.get("degraded") and a["outcome"] == "success" for a in body["attempts"])
        # Policy's decision and the budget events, when there are any (counts and amounts, never text).
        if decision is not None:
            body["admission"] = _admission_view(decision)
        if budget_rows:
            body["budget"] = [_budget_view(row) for row in budget_rows]
        if req["completion_text"] is not None:
            body["completion_text"] = req["completion_text"]
        if req["prompt_id"] is not None:  # the template it was rendered from: id and version, never the text
            body["prompt"] = {"id": req["prompt_id"], "version": req["prompt_version"]}
        return body

    async def open_jobs(self) -> dict[str, tuple[int, float]]:
        """Jobs not finished, by the status audit recorded: how many, and when the oldest was received."""
        r = self.schema.requests
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(r.c.status, func.count(), func.min(r.c.created_at))
                                       .where(text(OPEN_JOBS)).group_by(r.c.status))).all()
        return {status: (n, oldest) for status, n, oldest in rows}

    async def ledger(self, tenant: str, team: str | None = None, model: str | None = None,
                     provider: str | None = None, since: float | None = None, until: float | None = None,
                     limit: int = 100) -> dict:
        """Billed attempts of ``tenant``, newest first, with totals over everything the filters match.

        ``since`` is inclusive and ``until`` exclusive (epoch seconds); ``limit`` is held to 1..1000.
        """
        lg = self.schema.ledger
        where = [lg.c.tenant == tenant]
        if team is not None:
            where.append(lg.c.team == team)
        if model is not None:
            where.append(lg.c.model == model)
        if provider is not None:
            where.append(lg.c.provider == provider)
        if since is not None:
            where.append(lg.c.ts >= since)
        if until is not None:
            where.append(lg.c.ts < until)
        limit = max(1, min(int(limit), MAX_LEDGER_PAGE))
        sums = (func.count(lg.c.request_id.distinct()), func.sum(lg.c.prompt_tokens),
                func.sum(lg.c.completion_tokens), func.sum(lg.c.cost_usd))

        async with self.engine.connect() as conn:
            page = (await conn.execute(
                select(lg).where(*where)
                .order_by(lg.c.ts.desc(), lg.c.request_id.desc(), lg.c.attempt.desc())
                .limit(limit + 1))).mappings().all()
            totals = (await conn.execute(select(*sums).where(*where))).one()
            by_model = (await conn.execute(
                select(lg.c.model, *sums).where(*where).group_by(lg.c.model)
                .order_by(func.sum(lg.c.cost_usd).desc(), lg.c.model))).all()

        return {
            "object": "list",
            "data": [_ledger_view(row) for row in page[:limit]],
            "totals": _totals(*totals),
            "by_model": [{"model": m, **_totals(*rest)} for m, *rest in by_model],
            "has_more": len(page) > limit,
        }


def _plan(batch: AuditBatch) -> list[tuple[str, list[Any]]]:
    """The batch's statements in the order they run, each with its rows' parameters (``resum``: re-sum the
    totals of the requests whose attempts the batch touched; its list holds their ids)."""
    plan: list[tuple[str, list[Any]]] = []
    if batch.requests:
        # Key order: on PostgreSQL the row locks are then taken in a fixed order (no deadlocks).
        plan.append(("requests", [{**_row_params(r), "stage": r.stage}
                                  for r in sorted(batch.requests, key=lambda r: r.request_id)]))
    if batch.attempts:
        plan.append(("attempts", [_row_params(r) for r in batch.attempts]))
    if batch.ledger:
        plan.append(("ledger", [_row_params(r) for r in batch.ledger]))
    if batch.attempts:
        plan.append(("resum", sorted({a.request_id for a in batch.attempts})))
    for name, rows in (("admissions", batch.admissions), ("budget", batch.budget), ("routing", batch.routing),
                       ("attempt_routes", batch.attempt_routes), ("events", batch.trail)):
        if rows:
            plan.append((name, [_row_params(r) for r in rows]))
    return plan


def _totals_params(sums: Any) -> list[dict[str, Any]]:
    return [{"b_id": rid, "b_attempts": int(n), "b_prompt": int(p or 0), "b_completion": int(c or 0),
             "b_cached": int(ca or 0), "b_reasoning": int(rs or 0), "b_cost": float(cost or 0.0)}
            for rid, n, p, c, ca, rs, cost in sums]


class _SqliteWriter:
    """Batches for a SQLite file written through :mod:`sqlite3` directly, each in one trip to one thread.

    Through the async engine a batch cost several times the CPU of its SQL: aiosqlite hands every
    statement (and BEGIN and COMMIT) to its thread and back, and SQLAlchemy builds every row's parameters
    anew on each execution. Here the statements are the store's own (``_WriteStatements``), compiled once
    for SQLite per set of columns, and a batch is one call on a thread of its own: BEGIN IMMEDIATE, one
    ``executemany`` per statement, COMMIT. That cut audit's CPU per event offline and per request in the
    running system, and raised the split shape's throughput. Reads, and PostgreSQL, stay on the engine; WAL
    lets them read while this connection writes.

    Sharing a process with the request path (``--target all``), this thread binds a whole batch's rows
    holding the GIL the event loop waits for, where aiosqlite's trips hand it back between statements; under
    load that came out even, while at concurrency 1, where a batch lands in the middle of some request, the
    shorter batch won on latency and time to first token. So both shapes use it (paired measurements in
    docs/performance/README.md).
    """

    def __init__(self, path: str, writes: _WriteStatements) -> None:
        self.path = path
        self.writes = writes
        self.dialect = sqlite.dialect(paramstyle="named")
        self.sums = writes.sums.compile(dialect=self.dialect)
        self.statements: dict[tuple[str, tuple[str, ...]], tuple[str, dict[str, Any]]] = {}
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="audit-sqlite")
        self.conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.thread, self._connect)

    def _connect(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None)  # transactions are BEGIN/COMMIT below
        _sqlite_pragmas(self.conn, None)  # the engine's connections' settings, busy_timeout included

    async def apply(self, plan: list[tuple[str, list[Any]]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self.thread, self._apply, plan)

    def _statement(self, name: str, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Statement ``name``'s SQL for rows with ``row``'s keys, and what SQLAlchemy would add to each row's
        parameters: the statement's literals (``outcome = 'dispatched'``) and the missing columns' defaults."""
        key = (name, tuple(row))
        found = self.statements.get(key)
        if found is None:
            compiled = getattr(self.writes, name).compile(dialect=self.dialect, column_keys=list(row))
            extra = {k: v for k, v in compiled.params.items() if k not in row}
            for col in compiled.insert_prefetch:
                if col.key not in row:
                    if col.default is None or not col.default.is_scalar:
                        raise ValueError(f"audit column {col.key} needs a value or a scalar default")
                    extra[col.key] = col.default.arg
            found = self.statements[key] = (str(compiled), extra)
        return found

    def _apply(self, plan: list[tuple[str, list[Any]]]) -> None:
        conn = self.conn
        if conn is None:
            raise RuntimeError("the audit store is closed")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for name, rows in plan:
                if name == "resum":
                    expanded = self.sums.construct_expanded_state({"ids": rows})
                    rows = _totals_params(conn.execute(expanded.statement, expanded.parameters).fetchall())
                    name = "totals"
                    if not rows:
                        continue
                sql, extra = self._statement(name, rows[0])
                conn.executemany(sql, [{**extra, **r} for r in rows] if extra else rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self.conn is not None:
            await asyncio.get_running_loop().run_in_executor(self.thread, self.conn.close)  # after any batch
            self.conn = None
        self.thread.shutdown(wait=False)  # idle by now; never block the event loop on it


def _row_params(row: Any) -> dict[str, Any]:
    return {f: getattr(row, f) for f in row.__struct_fields__}


def _totals(requests: Any, prompt: Any, completion: Any, cost: Any) -> dict[str, Any]:
    # PostgreSQL sums integers as NUMERIC (Decimal): normalise to plain numbers.
    return {"requests": int(requests or 0), "prompt_tokens": int(prompt or 0),
            "completion_tokens": int(completion or 0), "cost_usd": round(float(cost or 0.0), COST_DIGITS)}


def _outcomes(attempts: list[dict[str, Any]]) -> dict[str, str]:
    """Each attempt's outcome keyed by model, in order (``gpt-4o#2`` when a model was tried again)."""
    out: dict[str, str] = {}
    for a in attempts:
        if a["delivery"] is not None:
            continue  # interrupted deliveries are part of their attempt
        key = a["model"] if a["model"] not in out else f"{a['model']}#{a['attempt']}"
        out[key] = a["outcome"]
    return out


def _add_missing_indexes(conn: Any, metadata: MetaData) -> None:
    """Indexes added since a table was created (``create_all`` makes indexes only with a new table)."""
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _add_missing_columns(conn: Any, metadata: MetaData) -> None:
    """Additive schema evolution: columns added since a table was created are added to it (nullable).

    ``create_all`` only creates missing tables; a database from an earlier version keeps working after an
    upgrade that adds columns. Removing or changing columns is not done here, by design.
    """
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                if not column.nullable and column.default is None:
                    raise RuntimeError(f"{table.name}.{column.name} is new and NOT NULL without a default: "
                                       f"migrate it by hand")
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}')


def _attempt_view(row: Any, why: Any = None, operator: bool = False) -> dict[str, Any]:
    routing = {} if why is None else {
        "kind": why["kind"], "breaker_state": why["breaker_state"] or None, "reason": why["reason"] or None,
        "not_before": why["not_before"], "degraded": bool(why["degraded"])}
    return {
        **routing,
        "attempt": row["attempt"],
        # The attempt's own record does not know which delivery produced it; interrupted ones do.
        "delivery": None if row["delivery"] == FINAL_DELIVERY else row["delivery"],
        "provider": row["provider"],
        "model": row["model"],
        "deployment": row["deployment"],
        "outcome": row["outcome"],
        "ts": row["ts"],
        "latency_ms": row["latency_ms"],
        "ttft_ms": row["ttft_ms"],
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "cost_usd": row["cost_usd"],
        "error": None if row["error_code"] is None else {"code": row["error_code"], "message": row["error_message"]},
        **({"cache": json.loads(row["cache"])} if row["cache"] else {}),
        **({"detail": row["detail"]} if operator and row["detail"] else {}),
    }


def _routing_view(decision: dict[str, Any]) -> dict[str, Any]:
    """The stored routing decision with the response's names: candidates' and the baseline's estimate is
    ``estimated_cost_usd`` (stored as ``est_cost_usd``; rows of every version read the same)."""
    for part in (*(decision.get("candidates") or ()), decision.get("baseline") or {}):
        if "est_cost_usd" in part:
            part["estimated_cost_usd"] = part.pop("est_cost_usd")
    return decision


def _admission_view(row: Any) -> dict[str, Any]:
    return {**json.loads(row["details"]), "decision": row["decision"], "reason": row["reason"] or None,
            "ts": row["ts"]}


def _budget_view(row: Any) -> dict[str, Any]:
    return {"event": row["kind"], "amount_usd": row["amount_usd"], "ts": row["ts"], **json.loads(row["details"])}


def _ledger_view(row: Any) -> dict[str, Any]:
    return {
        "object": "ledger.entry",
        "request_id": row["request_id"],
        "attempt": row["attempt"],
        "team": row["team"],
        "key_id": row["key_id"],
        "provider": row["provider"],
        "model": row["model"],
        "deployment": row["deployment"],
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "cached_tokens": row["cached_tokens"],
        "cost_usd": row["cost_usd"],
        "ts": row["ts"],
        **({"cache": row["cache"], "savings_usd": row["savings_usd"]} if row["cache"] else {}),
    }


def _owner_only(path: str) -> None:
    """Make the SQLite file (and its -wal/-shm, which SQLite creates with the database's mode) readable by
    this user only: traces hold error texts and ids no other local account needs. The file is created empty
    with mode 0600 before SQLite opens it, and an existing one is narrowed."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError:
        return  # SQLite reports an unusable path itself, with a better message
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            continue


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets traces be read while a batch is written; busy_timeout makes a second writer wait, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
