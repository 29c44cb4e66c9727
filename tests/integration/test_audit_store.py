"""The audit store on real databases: SQLite always, PostgreSQL when one listens on 127.0.0.1:5432.

Rows come from the real handlers, so these tests cover the path events →
``build_rows`` → ``AuditStore.apply`` → trace / ledger, including redelivery,
batches applied out of order and the first-terminal-wins rule in SQL.
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid

import msgspec
import pytest
from sqlalchemy import inspect, select

from services.audit.handlers import build_rows
from services.audit.store import AuditStore
from shared.canonical import ChatRequest, ChatResponse, Choice, Message, Usage
from shared.errors import ErrorInfo, UpstreamRateLimited, UpstreamTimeout
from shared.events import (
    AttemptAbandoned,
    AttemptDispatched,
    AttemptFailed,
    CompletionExpired,
    CompletionFailed,
    CompletionRequested,
    CompletionSucceeded,
    RequestAdmitted,
    RequestContext,
    Target,
    terminal_id,
)

T0 = 1_700_000_000.0
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PROMPT = "PROMPT-SECRET: the launch code is 0000"
ANSWER = "COMPLETION-SECRET: here is the answer"
OPENAI = Target(deployment="openai-gpt4o-mini", provider="openai", model="gpt-4o-mini",
                upstream_model="gpt-4o-mini-2024-07-18")
AZURE = Target(deployment="azure-gpt4o-mini", provider="azure", model="gpt-4o-mini", upstream_model="gpt-4o-mini")
CLAUDE = Target(deployment="anthropic-haiku", provider="anthropic", model="claude-haiku",
                upstream_model="claude-3-5-haiku-latest")


def postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


class Story:
    """The events of one request, built with the real structs and deterministic ids."""

    def __init__(self, rid: str, *, tenant: str = "acme", team: str = "research", model: str = "gpt-4o-mini",
                 at: float = 0.0) -> None:
        self.rid = rid
        self.t = T0 + at
        self.ctx = RequestContext(tenant=tenant, team=team, key_id="key_1", origin="gw-1",
                                  deadline=self.t + 60, received_at=self.t)
        self.request = ChatRequest(model=model, messages=[Message(role="user", content=PROMPT)])

    def requested(self) -> CompletionRequested:
        return CompletionRequested(event_id=f"{self.rid}.requested", request_id=self.rid, ts=self.t,
                                   ctx=self.ctx, request=self.request)

    def admitted(self) -> RequestAdmitted:
        return RequestAdmitted(event_id=f"{self.rid}.admitted", request_id=self.rid, ts=self.t + 0.1,
                               ctx=self.ctx, request=self.request)

    def dispatched(self, attempt: int, target: Target, at: float) -> AttemptDispatched:
        return AttemptDispatched(event_id=f"{self.rid}.a{attempt}", request_id=self.rid, ts=self.t + at,
                                 ctx=self.ctx, request=self.request, attempt=attempt, target=target)

    def attempt_failed(self, attempt: int, target: Target, at: float, *, error: ErrorInfo,
                       usage: Usage | None = None, cost: float = 0.0) -> AttemptFailed:
        return AttemptFailed(event_id=f"{self.rid}.a{attempt}.failed", request_id=self.rid, ts=self.t + at,
                             ctx=self.ctx, dispatch=self.dispatched(attempt, target, at - 0.3), error=error,
                             latency_ms=300.0, usage=usage, cost_usd=cost)

    def abandoned(self, attempt: int, delivery: int, target: Target, at: float) -> AttemptAbandoned:
        return AttemptAbandoned(event_id=f"{self.rid}.a{attempt}.abandoned.{delivery}", request_id=self.rid,
                                ts=self.t + at, ctx=self.ctx, attempt=attempt, target=target, delivery=delivery)

    def succeeded(self, attempt: int, target: Target, at: float, *, cost: float,
                  usage: Usage | None = None) -> CompletionSucceeded:
        usage = usage or Usage(prompt_tokens=100, completion_tokens=20, cached_tokens=40, reasoning_tokens=5)
        response = ChatResponse(model=target.upstream_model, usage=usage, choices=[
            Choice(index=0, message=Message(role="assistant", content=ANSWER), finish_reason="stop")])
        return CompletionSucceeded(event_id=terminal_id(self.rid), request_id=self.rid, ts=self.t + at,
                                   ctx=self.ctx, attempt=attempt, target=target, response=response,
                                   cost_usd=cost, latency_ms=800.0)

    def failed(self, at: float, kind: type[CompletionFailed] = CompletionFailed) -> CompletionFailed:
        error = ErrorInfo(status=502, type="upstream_error", code="upstream_unavailable",
                          message="no provider could answer")
        return kind(event_id=terminal_id(self.rid), request_id=self.rid, ts=self.t + at, ctx=self.ctx, error=error)

    def simple(self, target: Target = OPENAI, cost: float = 0.001, tokens: tuple[int, int] = (100, 20)) -> list:
        """Requested → admitted → one attempt → succeeded."""
        usage = Usage(prompt_tokens=tokens[0], completion_tokens=tokens[1])
        return [self.requested(), self.admitted(), self.dispatched(1, target, 0.2),
                self.succeeded(1, target, 1.0, cost=cost, usage=usage)]


def retried(story: Story) -> list:
    """Attempt 1 times out after being billed, attempt 2 is interrupted once and then succeeds."""
    return [
        story.requested(),
        story.admitted(),
        story.dispatched(1, OPENAI, 0.2),
        story.attempt_failed(1, OPENAI, 0.5, error=UpstreamTimeout().info(),
                             usage=Usage(prompt_tokens=100, completion_tokens=3), cost=0.0002),
        story.dispatched(2, AZURE, 0.6),
        story.abandoned(2, 1, AZURE, 0.9),
        story.succeeded(2, AZURE, 1.5, cost=0.0015),
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = await AuditStore.open(f"sqlite+aiosqlite:///{tmp_path}/audit/audit.db")
        yield s
        await s.close()
        return
    if not postgres_reachable():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    # A prefix per test keeps concurrent runs (and other suites) on the same database apart.
    s = await AuditStore.open(PG_URL, prefix=f"t{uuid.uuid4().hex[:10]}_")
    try:
        yield s
    finally:
        async with s.engine.begin() as conn:
            await conn.run_sync(s.schema.metadata.drop_all)
        await s.close()


async def dump(store: AuditStore) -> dict[str, list[tuple]]:
    """Every row of every table, in key order."""
    out = {}
    async with store.engine.connect() as conn:
        for table in (store.schema.requests, store.schema.attempts, store.schema.ledger):
            rows = await conn.execute(select(table).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(r) for r in rows]
    return out


async def apply(store: AuditStore, events: list, **kwargs) -> None:
    await store.apply(build_rows(events, **kwargs))


# ---- traces ------------------------------------------------------------------------------------

async def test_trace_of_a_retried_request(store: AuditStore) -> None:
    await apply(store, retried(Story("r1")))
    trace = await store.trace("r1", "acme")

    attempts = trace.pop("attempts")
    assert trace == {
        "id": "r1", "object": "request.trace", "status": "succeeded", "model": "gpt-4o-mini", "team": "research",
        "created_at": T0, "completed_at": T0 + 1.5, "latency_ms": pytest.approx(1500.0),
        "cost_usd": pytest.approx(0.0017),
        "usage": {"prompt_tokens": 200, "completion_tokens": 23, "total_tokens": 223, "cached_tokens": 40,
                  "reasoning_tokens": 5},
        "error": None, "job": False, "trace_id": None,
    }
    assert [(a["attempt"], a["delivery"], a["provider"], a["outcome"]) for a in attempts] == [
        (1, None, "openai", "timeout"),
        (2, 1, "azure", "interrupted"),
        (2, None, "azure", "success"),
    ]
    timeout, interrupted, success = attempts
    assert timeout["error"] == {"code": "upstream_timeout", "message": "The provider did not answer in time."}
    assert (timeout["latency_ms"], timeout["prompt_tokens"], timeout["cost_usd"]) == (300.0, 100, 0.0002)
    assert timeout["ts"] == T0 + 0.2
    assert interrupted["error"] is None and interrupted["cost_usd"] == 0
    assert (success["model"], success["deployment"], success["latency_ms"]) == (
        "gpt-4o-mini", "azure-gpt4o-mini", 800.0)
    assert (success["prompt_tokens"], success["completion_tokens"], success["cost_usd"]) == (100, 20, 0.0015)


async def test_trace_is_tenant_scoped(store: AuditStore) -> None:
    await apply(store, Story("r1", tenant="acme").simple())
    assert await store.trace("r1", "acme") is not None
    assert await store.trace("r1", "globex") is None
    assert await store.trace("missing", "acme") is None


async def test_trace_of_a_request_in_flight_and_of_a_failure(store: AuditStore) -> None:
    s = Story("r1")
    await apply(store, [s.requested(), s.admitted(), s.dispatched(1, OPENAI, 0.2)])
    trace = await store.trace("r1", "acme")
    assert trace["status"] == "in_progress" and trace["completed_at"] is None and trace["latency_ms"] is None
    assert [(a["attempt"], a["outcome"]) for a in trace["attempts"]] == [(1, "dispatched")]

    await apply(store, [s.attempt_failed(1, OPENAI, 0.5, error=UpstreamRateLimited().info()), s.failed(0.6)])
    trace = await store.trace("r1", "acme")
    assert trace["status"] == "failed" and trace["cost_usd"] == 0
    assert trace["error"] == {"status": 502, "type": "upstream_error", "code": "upstream_unavailable",
                              "message": "no provider could answer"}
    assert [(a["attempt"], a["outcome"]) for a in trace["attempts"]] == [(1, "rate_limited")]


# ---- idempotency and convergence -----------------------------------------------------------------

async def test_same_batch_twice_changes_nothing(store: AuditStore) -> None:
    events = retried(Story("r1")) + Story("r2", team="ops").simple(CLAUDE)
    await apply(store, events)
    once = await dump(store)
    await apply(store, events)
    assert await dump(store) == once
    assert len(once[store.schema.ledger.name]) == 3


async def test_any_split_and_order_of_batches_converges(store: AuditStore) -> None:
    events = retried(Story("r1")) + Story("r2", team="ops").simple(CLAUDE)
    await apply(store, events)
    expected = await dump(store)

    for seed in range(3):
        order = list(events)
        random.Random(seed).shuffle(order)
        await _reset(store)
        # Redelivery: each event arrives in its own batch, some of them twice, in a shuffled order.
        for event in order + order[:4]:
            await apply(store, [event])
        assert await dump(store) == expected, f"seed {seed}"


async def _reset(store: AuditStore) -> None:
    async with store.engine.begin() as conn:
        for table in (store.schema.ledger, store.schema.attempts, store.schema.requests):
            await conn.execute(table.delete())


async def test_redelivered_success_is_billed_once(store: AuditStore) -> None:
    s = Story("r1")
    events = s.simple(cost=0.004)
    await apply(store, events)
    await apply(store, events[-1:])
    await apply(store, [events[-1], events[-1]])
    ledger = await store.ledger("acme")
    assert len(ledger["data"]) == 1 and ledger["totals"]["cost_usd"] == pytest.approx(0.004)
    assert (await store.trace("r1", "acme"))["cost_usd"] == pytest.approx(0.004)


async def test_first_terminal_stored_wins(store: AuditStore) -> None:
    s = Story("r1")
    await apply(store, s.simple())
    await apply(store, [s.failed(2.0, kind=CompletionExpired)])
    await apply(store, [s.requested(), s.admitted(), s.dispatched(1, OPENAI, 0.2)])
    trace = await store.trace("r1", "acme")
    assert trace["status"] == "succeeded" and trace["error"] is None and trace["completed_at"] == T0 + 1.0

    t = Story("r2")
    await apply(store, [t.requested(), t.failed(0.5, kind=CompletionExpired)])
    await apply(store, t.simple())
    trace = await store.trace("r2", "acme")
    assert trace["status"] == "expired" and trace["completed_at"] == T0 + 0.5
    assert trace["error"]["code"] == "upstream_unavailable"
    # The late success still happened and was paid for: its attempt and charge are recorded.
    assert [a["outcome"] for a in trace["attempts"]] == ["success"]
    assert trace["cost_usd"] == pytest.approx(0.001)


async def test_first_attempt_outcome_stored_wins(store: AuditStore) -> None:
    s = Story("r1")
    await apply(store, [s.dispatched(1, OPENAI, 0.2)])
    await apply(store, [s.attempt_failed(1, OPENAI, 0.5, error=UpstreamTimeout().info())])
    await apply(store, [s.attempt_failed(1, OPENAI, 0.7, error=UpstreamRateLimited().info())])
    await apply(store, [s.dispatched(1, OPENAI, 0.2)])
    [attempt] = (await store.trace("r1", "acme"))["attempts"]
    assert (attempt["outcome"], attempt["ts"]) == ("timeout", T0 + 0.2)
    assert attempt["error"]["code"] == "upstream_timeout"


async def test_concurrent_batches_for_one_request(store: AuditStore) -> None:
    s = Story("r1")
    events = retried(s)
    # Each event in its own transaction, all at once: totals must still add up.
    await asyncio.gather(*(apply(store, [e]) for e in events + events))
    trace = await store.trace("r1", "acme")
    assert trace["status"] == "succeeded"
    assert trace["cost_usd"] == pytest.approx(0.0017)
    assert trace["usage"]["prompt_tokens"] == 200
    assert len(trace["attempts"]) == 3


# ---- ledger ------------------------------------------------------------------------------------

async def _ledger_fixture(store: AuditStore) -> None:
    events = []
    events += Story("a1", team="research", at=0).simple(OPENAI, cost=0.001, tokens=(100, 10))
    events += Story("a2", team="research", at=10).simple(CLAUDE, cost=0.003, tokens=(300, 30))
    events += Story("a3", team="ops", at=20, model="claude-haiku").simple(CLAUDE, cost=0.002, tokens=(200, 20))
    events += retried(Story("a4", team="ops", at=30))  # two billed attempts, one request
    events += Story("g1", tenant="globex", team="research", at=40).simple(OPENAI, cost=0.5)
    await apply(store, events)


async def test_ledger_lists_newest_first_with_totals(store: AuditStore) -> None:
    await _ledger_fixture(store)
    ledger = await store.ledger("acme")
    assert ledger["object"] == "list" and ledger["has_more"] is False
    assert [(d["request_id"], d["attempt"]) for d in ledger["data"]] == [
        ("a4", 2), ("a4", 1), ("a3", 1), ("a2", 1), ("a1", 1)]
    first = ledger["data"][0]
    assert first == {
        "object": "ledger.entry", "request_id": "a4", "attempt": 2, "team": "ops", "key_id": "key_1",
        "provider": "azure", "model": "gpt-4o-mini", "deployment": "azure-gpt4o-mini", "prompt_tokens": 100,
        "completion_tokens": 20, "cached_tokens": 40, "cost_usd": 0.0015, "ts": T0 + 31.5,
    }
    assert ledger["totals"] == {"requests": 4, "prompt_tokens": 800, "completion_tokens": 83,
                                "cost_usd": pytest.approx(0.0077)}
    assert ledger["by_model"] == [
        {"model": "claude-haiku", "requests": 2, "prompt_tokens": 500, "completion_tokens": 50,
         "cost_usd": pytest.approx(0.005)},
        {"model": "gpt-4o-mini", "requests": 2, "prompt_tokens": 300, "completion_tokens": 33,
         "cost_usd": pytest.approx(0.0027)},
    ]


async def test_ledger_filters(store: AuditStore) -> None:
    await _ledger_fixture(store)

    async def ids(**filters) -> list[tuple[str, int]]:
        return [(d["request_id"], d["attempt"]) for d in (await store.ledger("acme", **filters))["data"]]

    assert await ids(team="ops") == [("a4", 2), ("a4", 1), ("a3", 1)]
    assert await ids(model="claude-haiku") == [("a3", 1), ("a2", 1)]
    assert await ids(provider="openai") == [("a4", 1), ("a1", 1)]
    assert await ids(team="ops", provider="anthropic") == [("a3", 1)]
    assert await ids(since=T0 + 11.5, until=T0 + 31) == [("a4", 1), ("a3", 1)]
    assert await ids(since=T0 + 11) == [("a4", 2), ("a4", 1), ("a3", 1), ("a2", 1)]
    assert await ids(since=T0 + 31.5) == [("a4", 2)], "since is inclusive"
    assert await ids(until=T0 + 1.0) == [], "until is exclusive"
    assert await ids(team="nobody") == []

    ops = await store.ledger("acme", team="ops")
    assert ops["totals"] == {"requests": 2, "prompt_tokens": 400, "completion_tokens": 43,
                             "cost_usd": pytest.approx(0.0037)}

    page = await store.ledger("acme", limit=2)
    assert [(d["request_id"], d["attempt"]) for d in page["data"]] == [("a4", 2), ("a4", 1)]
    assert page["has_more"] is True
    assert page["totals"]["requests"] == 4, "totals cover every match, not just the page"
    assert (await store.ledger("acme", limit=5))["has_more"] is False


async def test_ledger_is_tenant_scoped(store: AuditStore) -> None:
    await _ledger_fixture(store)
    globex = await store.ledger("globex")
    assert [d["request_id"] for d in globex["data"]] == ["g1"]
    assert globex["totals"]["cost_usd"] == pytest.approx(0.5)
    empty = await store.ledger("initech")
    assert empty == {"object": "list", "data": [], "by_model": [], "has_more": False,
                     "totals": {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}}


# ---- text ----------------------------------------------------------------------------------------

async def test_no_prompt_or_completion_text_stored_by_default(store: AuditStore) -> None:
    await apply(store, retried(Story("r1")))
    assert "SECRET" not in repr(await dump(store))
    assert "completion_text" not in await store.trace("r1", "acme")


async def test_completion_text_only_when_turned_on(store: AuditStore) -> None:
    await apply(store, retried(Story("r1")), store_text=True)
    stored = repr(await dump(store))
    assert ANSWER in stored and PROMPT not in stored
    assert (await store.trace("r1", "acme"))["completion_text"] == ANSWER


async def test_trace_id_is_kept(store: AuditStore) -> None:
    s = Story("r1")
    await apply(store, [s.requested()])
    await apply(store, [s.admitted()], trace_ids={"r1": "4bf92f3577b34da6a3ce929d0e0e4736"})
    await apply(store, [s.dispatched(1, OPENAI, 0.2)], trace_ids={"r1": "ffffffffffffffffffffffffffffffff"})
    assert (await store.trace("r1", "acme"))["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    store = await AuditStore.open(f"sqlite+aiosqlite:///{tmp_path}/wal.db")
    try:
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        await store.close()


async def test_open_is_repeatable(store: AuditStore, tmp_path) -> None:
    await apply(store, Story("r1").simple())
    url = store.engine.url.render_as_string(hide_password=False)
    again = await AuditStore.open(url, prefix=store.schema.requests.name.removesuffix("requests"))
    try:
        assert (await again.trace("r1", "acme"))["status"] == "succeeded"
        await again.ping()
    finally:
        await again.close()


@pytest.mark.parametrize("column", ["ttft_ms", "detail"])
async def test_a_database_from_an_earlier_version_gains_new_columns(store: AuditStore, column: str) -> None:
    """Columns added since a table was created (here: ttft_ms, detail) are added when the store opens."""
    attempts = store.schema.attempts.name
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(f"ALTER TABLE {attempts} DROP COLUMN {column}")
    url = store.engine.url.render_as_string(hide_password=False)
    reopened = await AuditStore.open(url, prefix=attempts[: -len("attempts")])
    try:
        async with reopened.engine.connect() as conn:
            cols = await conn.run_sync(lambda c: {x["name"] for x in inspect(c).get_columns(attempts)})
        assert column in cols
        story = Story("r-migrated")
        await apply(reopened, [story.requested(), story.admitted(), story.dispatched(1, OPENAI, 0.1),
                               story.succeeded(1, OPENAI, 0.9, cost=0.001)])
        trace = await reopened.trace("r-migrated", "acme")
        assert trace is not None and trace["attempts"][0]["outcome"] == "success"
        await apply(reopened, failed_with_detail(Story("r-failed")))
        assert (await reopened.trace("r-failed", "acme", operator=True))["attempts"][0]["detail"] == DETAIL
    finally:
        await reopened.close()


DETAIL = "openai returned HTTP 500; body: {\"error\": {\"type\": \"server_error\"}}"


def failed_with_detail(story: Story) -> list:
    """A request whose one attempt failed with an operator-only detail."""
    failure = msgspec.structs.replace(
        story.attempt_failed(1, OPENAI, 0.5, error=UpstreamRateLimited().info()), detail=DETAIL)
    return [story.requested(), story.admitted(), story.dispatched(1, OPENAI, 0.2), failure, story.failed(0.6)]


async def test_an_attempts_detail_is_in_the_trace_for_an_operator_only(store: AuditStore) -> None:
    await apply(store, failed_with_detail(Story("r-detail")))
    tenant_view = await store.trace("r-detail", "acme")
    assert [a["outcome"] for a in tenant_view["attempts"]] == ["rate_limited"]
    assert "detail" not in tenant_view["attempts"][0]
    operator_view = await store.trace("r-detail", "acme", operator=True)
    assert operator_view["attempts"][0]["detail"] == DETAIL
    # Everything else is the same for both readers; attempts without a detail carry no key at all.
    operator_view["attempts"][0].pop("detail")
    assert operator_view == tenant_view
    await apply(store, Story("r-plain").simple())
    assert all("detail" not in a for a in (await store.trace("r-plain", "acme", operator=True))["attempts"])


# ---- the SQLite file's direct writer -------------------------------------------------------------

async def _every_row(store: AuditStore) -> dict[str, list[tuple]]:
    out = {}
    async with store.engine.connect() as conn:
        for table in store.schema.metadata.sorted_tables:
            rows = await conn.execute(select(table).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(r) for r in rows]
    return out


async def test_sqlite_direct_writer_stores_what_the_engine_stores(tmp_path) -> None:
    direct = await AuditStore.open(f"sqlite+aiosqlite:///{tmp_path}/direct.db")
    engine = await AuditStore.open(f"sqlite+aiosqlite:///{tmp_path}/engine.db", direct=False)  # as PostgreSQL
    try:
        assert direct._direct is not None and engine._direct is None
        stories = [retried(Story("r1")), Story("r2").simple(), Story("r3", team="ops").simple(cost=0.02)]
        batches = [stories[0][:3], stories[1], stories[0][3:], stories[2], stories[0]]  # split, out of order, again
        for store in (direct, engine):
            for batch in batches:
                await apply(store, batch, store_text=True)
        rows = await _every_row(direct)
        assert rows == await _every_row(engine)
        assert sum(len(v) for v in rows.values()) > 10
        assert (await direct.trace("r1", "acme"))["cost_usd"] == pytest.approx(0.0017)
    finally:
        await direct.close()
        await engine.close()


async def test_sqlite_direct_writer_batch_is_all_or_nothing(tmp_path, monkeypatch) -> None:
    store = await AuditStore.open(f"sqlite+aiosqlite:///{tmp_path}/atomic.db")
    try:
        writer = store._direct
        real = writer._statement

        def broken(name, row):
            sql, extra = real(name, row)
            return (sql.replace("audit_ledger", "no_such_table"), extra) if name == "ledger" else (sql, extra)

        monkeypatch.setattr(writer, "_statement", broken)
        with pytest.raises(Exception, match="no_such_table"):
            await apply(store, Story("r1").simple())
        assert all(not rows for rows in (await _every_row(store)).values())  # the requests written first are gone
        monkeypatch.setattr(writer, "_statement", real)
        await apply(store, Story("r1").simple())  # the same connection goes on
        assert (await store.trace("r1", "acme"))["status"] == "succeeded"
    finally:
        await store.close()


@pytest.mark.parametrize("how", ["memory", "engine asked for"])
async def test_sqlite_stays_on_the_engine(how, tmp_path) -> None:
    if how == "memory":
        store = await AuditStore.open("sqlite+aiosqlite:///:memory:")
    else:
        store = await AuditStore.open(f"sqlite+aiosqlite:///{tmp_path}/shared.db", direct=False)
    try:
        assert store._direct is None
        await apply(store, Story("r1").simple())
        assert (await store.trace("r1", "acme"))["status"] == "succeeded"
    finally:
        await store.close()
