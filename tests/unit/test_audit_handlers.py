"""Audit handlers: events → rows and job changes, idempotent under redelivery and any batch order."""

from __future__ import annotations

import random

import msgspec
import pytest

from services.audit.handlers import (
    AuditBatch,
    AttemptRow,
    JobUpdate,
    build_rows,
    job_updates,
    render_completion,
    trace_id_from_headers,
)
from shared.canonical import ChatRequest, ChatResponse, Choice, FunctionCall, Message, ToolCall, Usage
from shared.errors import ErrorInfo, UpstreamRateLimited, UpstreamTimeout
from shared.events import (
    AttemptAbandoned,
    AttemptDispatched,
    AttemptFailed,
    CancelRequested,
    CompletionCancelled,
    CompletionExpired,
    CompletionFailed,
    CompletionRequested,
    CompletionSucceeded,
    JobRecord,
    RequestAdmitted,
    RequestContext,
    RequestDenied,
    Target,
    terminal_id,
)
from shared.state.jobs import moves_forward

T0 = 1_700_000_000.0
PROMPT = "PROMPT-SECRET: the launch code is 0000"
ANSWER = "COMPLETION-SECRET: here is the answer"
OPENAI = Target(deployment="openai-gpt4o-mini", provider="openai", model="gpt-4o-mini",
                upstream_model="gpt-4o-mini-2024-07-18")
AZURE = Target(deployment="azure-gpt4o-mini", provider="azure", model="gpt-4o-mini", upstream_model="gpt-4o-mini")


class Story:
    """The events of one request, built with the real structs and deterministic ids."""

    def __init__(self, rid: str, *, tenant: str = "acme", team: str = "research", job: bool = False,
                 model: str = "gpt-4o-mini") -> None:
        self.rid = rid
        self.ctx = RequestContext(tenant=tenant, team=team, key_id="key_1", origin="gw-1",
                                  deadline=T0 + 60, received_at=T0, job=job)
        self.request = ChatRequest(model=model, messages=[Message(role="user", content=PROMPT)])

    def requested(self, at: float = 0.0) -> CompletionRequested:
        return CompletionRequested(event_id=f"{self.rid}.requested", request_id=self.rid, ts=T0 + at,
                                   ctx=self.ctx, request=self.request)

    def admitted(self, at: float = 0.1) -> RequestAdmitted:
        return RequestAdmitted(event_id=f"{self.rid}.admitted", request_id=self.rid, ts=T0 + at, ctx=self.ctx,
                               request=self.request)

    def dispatched(self, attempt: int, target: Target = OPENAI, at: float = 0.2) -> AttemptDispatched:
        return AttemptDispatched(event_id=f"{self.rid}.a{attempt}", request_id=self.rid, ts=T0 + at, ctx=self.ctx,
                                 request=self.request, attempt=attempt, target=target)

    def attempt_failed(self, attempt: int, target: Target = OPENAI, at: float = 0.5, *,
                       error: ErrorInfo | None = None, usage: Usage | None = None,
                       cost: float = 0.0) -> AttemptFailed:
        return AttemptFailed(event_id=f"{self.rid}.a{attempt}.failed", request_id=self.rid, ts=T0 + at,
                             ctx=self.ctx, dispatch=self.dispatched(attempt, target),
                             error=error or UpstreamTimeout("provider too slow").info(),
                             latency_ms=300.0, usage=usage, cost_usd=cost)

    def abandoned(self, attempt: int, delivery: int, target: Target = OPENAI, at: float = 0.4) -> AttemptAbandoned:
        return AttemptAbandoned(event_id=f"{self.rid}.a{attempt}.abandoned.{delivery}", request_id=self.rid,
                                ts=T0 + at, ctx=self.ctx, attempt=attempt, target=target, delivery=delivery)

    def succeeded(self, attempt: int = 1, target: Target = OPENAI, at: float = 1.0, *,
                  cost: float = 0.0015, usage: Usage | None = None,
                  message: Message | None = None, finish: str = "stop") -> CompletionSucceeded:
        usage = usage or Usage(prompt_tokens=100, completion_tokens=20, cached_tokens=40, reasoning_tokens=5)
        response = ChatResponse(model=target.upstream_model, usage=usage, choices=[
            Choice(index=0, message=message or Message(role="assistant", content=ANSWER), finish_reason=finish)])
        return CompletionSucceeded(event_id=terminal_id(self.rid), request_id=self.rid, ts=T0 + at, ctx=self.ctx,
                                   attempt=attempt, target=target, response=response, cost_usd=cost,
                                   latency_ms=800.0)

    def failed(self, at: float = 1.0, kind: type[CompletionFailed] = CompletionFailed,
               code: str = "upstream_unavailable") -> CompletionFailed:
        error = ErrorInfo(status=502, type="upstream_error", code=code, message="no provider could answer")
        return kind(event_id=terminal_id(self.rid), request_id=self.rid, ts=T0 + at, ctx=self.ctx, error=error)

    def cancel(self, at: float = 0.3) -> CancelRequested:
        return CancelRequested(event_id=f"{self.rid}.cancel", request_id=self.rid, ts=T0 + at, ctx=self.ctx)


def lifecycle(story: Story) -> list:
    """A request whose first attempt times out with a charge, second is interrupted once, then succeeds."""
    return [
        story.requested(),
        story.admitted(),
        story.dispatched(1, OPENAI, at=0.2),
        story.attempt_failed(1, OPENAI, at=0.5, usage=Usage(prompt_tokens=100, completion_tokens=3), cost=0.0002),
        story.dispatched(2, AZURE, at=0.6),
        story.abandoned(2, delivery=1, target=AZURE, at=0.9),
        story.succeeded(2, AZURE, at=1.5, cost=0.0015),
    ]


def shuffled(events: list, seed: int) -> list:
    out = list(events)
    random.Random(seed).shuffle(out)
    return out


# ---- rows ------------------------------------------------------------------------------------

def test_lifecycle_rows() -> None:
    batch = build_rows(lifecycle(Story("r1")))

    [req] = batch.requests
    assert (req.request_id, req.tenant, req.team, req.key_id) == ("r1", "acme", "research", "key_1")
    assert req.model == "gpt-4o-mini"
    assert req.status == "succeeded" and req.stage == 3
    assert req.created_at == T0 and req.completed_at == T0 + 1.5
    assert req.error_code is None and req.completion_text is None and req.job is False

    assert [(a.attempt, a.delivery, a.provider, a.outcome) for a in batch.attempts] == [
        (1, 0, "openai", "timeout"),
        (2, 0, "azure", "success"),
        (2, 1, "azure", "interrupted"),
    ]
    first, second, interrupted = batch.attempts
    assert first.ts == T0 + 0.2, "an attempt's ts is its dispatch time"
    assert first.latency_ms == 300.0 and first.cost_usd == 0.0002 and first.prompt_tokens == 100
    assert first.error_code == "upstream_timeout"
    assert (second.latency_ms, second.prompt_tokens, second.completion_tokens, second.cached_tokens,
            second.reasoning_tokens, second.cost_usd) == (800.0, 100, 20, 40, 5, 0.0015)
    assert interrupted.cost_usd == 0 and interrupted.latency_ms is None

    assert [(l.request_id, l.attempt, l.provider, l.cost_usd) for l in batch.ledger] == [
        ("r1", 1, "openai", 0.0002), ("r1", 2, "azure", 0.0015)]
    assert batch.ledger[1].cached_tokens == 40 and batch.ledger[1].deployment == "azure-gpt4o-mini"


def test_same_rows_for_any_order_and_any_repetition() -> None:
    events = lifecycle(Story("r1")) + lifecycle(Story("r2", team="ops"))
    expected = build_rows(events)
    for seed in range(20):
        assert build_rows(shuffled(events, seed)) == expected
    assert build_rows(events + events) == expected
    assert build_rows(shuffled(events + events[:3] + events[-2:], 7)) == expected


def test_one_ledger_row_per_billed_attempt() -> None:
    s = Story("r1")
    unbilled = s.attempt_failed(1, usage=Usage(prompt_tokens=10), cost=0.0)
    billed_without_usage = s.attempt_failed(2, AZURE, error=UpstreamRateLimited().info(), cost=0.0001)
    success = s.succeeded(3, OPENAI, cost=0.0)  # a free model still leaves its (zero) ledger row
    batch = build_rows([unbilled, billed_without_usage, success, success, billed_without_usage])

    assert [(l.attempt, l.cost_usd, l.prompt_tokens) for l in batch.ledger] == [(2, 0.0001, 0), (3, 0.0, 100)]
    assert {a.attempt: a.outcome for a in batch.attempts} == {1: "timeout", 2: "rate_limited", 3: "success"}


def test_first_terminal_wins_whatever_the_order() -> None:
    s = Story("r1")
    success, failure = s.succeeded(at=1.0), s.failed(at=2.0)
    for events in ([success, failure], [failure, success], [failure, s.requested(), success, s.admitted()]):
        [req] = build_rows(events).requests
        assert req.status == "succeeded" and req.completed_at == T0 + 1.0 and req.error_code is None

    [req] = build_rows([s.failed(at=1.0, kind=CompletionExpired), s.succeeded(at=1.2)]).requests
    assert req.status == "expired" and req.error_code == "upstream_unavailable"


def test_status_climbs_and_never_falls_back() -> None:
    s = Story("r1")
    assert build_rows([s.requested()]).requests[0].status == "requested"
    assert build_rows([s.admitted(), s.requested()]).requests[0].status == "admitted"
    assert build_rows([s.dispatched(1), s.admitted(), s.requested()]).requests[0].status == "in_progress"
    assert build_rows([s.cancel(), s.dispatched(1)]).requests[0].status == "in_progress"
    for kind, status in ((RequestDenied, "denied"), (CompletionCancelled, "cancelled"),
                         (CompletionExpired, "expired"), (CompletionFailed, "failed")):
        [req] = build_rows([s.failed(at=0.05, kind=kind), s.requested(), s.admitted(), s.dispatched(1)]).requests
        assert req.status == status and req.model == "gpt-4o-mini"


def test_a_resolved_attempt_outcome_is_never_replaced() -> None:
    s = Story("r1")
    [row] = build_rows([s.attempt_failed(1, at=0.5), s.dispatched(1, at=0.2)]).attempts
    assert (row.outcome, row.ts, row.latency_ms) == ("timeout", T0 + 0.2, 300.0)
    [row] = build_rows([s.dispatched(1)]).attempts
    assert row.outcome == "dispatched" and row.latency_ms is None


def test_an_attempts_operator_detail_is_kept_on_its_row() -> None:
    s = Story("r1")
    failed = msgspec.structs.replace(s.attempt_failed(1, at=0.5), detail="openai returned HTTP 500; body: {}")
    [row] = build_rows([s.dispatched(1), failed]).attempts
    assert row.detail == "openai returned HTTP 500; body: {}" and row.error_code == "upstream_timeout"
    [row] = build_rows([s.dispatched(1), s.attempt_failed(1, at=0.5)]).attempts
    assert row.detail is None


def test_interrupted_delivery_is_its_own_row() -> None:
    s = Story("r1")
    batch = build_rows([s.abandoned(1, delivery=1), s.abandoned(1, delivery=2, at=0.6), s.dispatched(1),
                        s.succeeded(1), s.abandoned(1, delivery=1)])
    assert [(a.attempt, a.delivery, a.outcome) for a in batch.attempts] == [
        (1, 0, "success"), (1, 1, "interrupted"), (1, 2, "interrupted")]
    assert isinstance(batch.attempts[0], AttemptRow)


def test_no_prompt_or_completion_text_by_default() -> None:
    events = lifecycle(Story("r1"))
    encoded = msgspec.json.encode(build_rows(events)).decode()
    assert "SECRET" not in encoded

    with_text = build_rows(events, store_text=True)
    assert with_text.requests[0].completion_text == ANSWER
    assert PROMPT not in msgspec.json.encode(with_text).decode(), "prompt text is never stored"


def test_trace_ids_come_from_headers() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "Nats-Msg-Id": "x"}
    assert trace_id_from_headers(headers) == trace
    assert trace_id_from_headers({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}) is None
    assert trace_id_from_headers({"traceparent": "garbage"}) is None
    assert trace_id_from_headers(None) is None

    s = Story("r1")
    [req] = build_rows([s.requested(), s.succeeded()], trace_ids={"r1": trace}).requests
    assert req.trace_id == trace


def test_empty_batch() -> None:
    batch = build_rows([])
    assert batch == AuditBatch(requests=[], attempts=[], ledger=[]) and not batch
    assert job_updates([]) == []


# ---- rendering ---------------------------------------------------------------------------------

def test_render_completion_is_openai_chat_completion() -> None:
    event = Story("r1").succeeded(2, AZURE, at=1.5, cost=0.0015)
    body = render_completion(event)
    ext = body.pop("switchyard")
    # The extension object also explains routing (selected, path, degraded ...): see tests/unit/router.
    assert {k: ext[k] for k in ("request_id", "provider", "deployment", "model", "attempts", "cost_usd")} == {
        "request_id": "r1", "provider": "azure", "deployment": "azure-gpt4o-mini", "model": "gpt-4o-mini",
        "attempts": 2, "cost_usd": 0.0015}
    assert ext["degraded"] is False and ext["selected"]["deployment"] == "azure-gpt4o-mini"
    assert body == {
        "id": "chatcmpl-r1",
        "object": "chat.completion",
        "created": int(T0 + 1.5),
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                  "prompt_tokens_details": {"cached_tokens": 40},
                  "completion_tokens_details": {"reasoning_tokens": 5}},
    }


def test_render_completion_with_tool_calls() -> None:
    call = ToolCall(id="call_1", type="function", index=0,
                    function=FunctionCall(name="get_weather", arguments='{"city":"Oslo"}'))
    event = Story("r1").succeeded(message=Message(role="assistant", content=None, tool_calls=[call]),
                                  finish="tool_calls")
    [choice] = render_completion(event)["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
    msgspec.json.encode(render_completion(event))  # the job record must be encodable as is


# ---- jobs ------------------------------------------------------------------------------------

def advance(current: JobRecord | None, update: JobUpdate) -> JobRecord | None:
    """What ``shared.state.jobs.advance_job`` stores, without the KV round trip."""
    new = update(current)
    if new is None or (current is not None and not moves_forward(current, new)):
        return current
    return new


def run_jobs(batches: list[list]) -> JobRecord | None:
    record = None
    for batch in batches:
        for update in job_updates(batch):
            record = advance(record, update)
    return record


def test_job_moves_queued_in_progress_completed() -> None:
    s = Story("job1", job=True)
    queued = run_jobs([[s.requested()]])
    assert (queued.id, queued.status, queued.model, queued.tenant, queued.team) == (
        "job1", "queued", "gpt-4o-mini", "acme", "research")
    assert queued.created_at == T0 and queued.started_at is None

    running = run_jobs([[s.requested()], [s.admitted(at=0.1), s.dispatched(1, at=0.2)]])
    assert running.status == "in_progress" and running.started_at == T0 + 0.1

    done = run_jobs([[s.requested()], [s.admitted(at=0.1)], [s.succeeded(at=1.0)]])
    assert done.status == "completed" and done.completed_at == T0 + 1.0
    assert done.started_at == T0 + 0.1 and done.error is None
    assert done.result == render_completion(s.succeeded(at=1.0))


def test_job_never_regresses_and_first_terminal_wins() -> None:
    s = Story("job1", job=True)
    done = run_jobs([[s.succeeded()], [s.requested()], [s.admitted()], [s.failed(at=2.0)]])
    assert done.status == "completed" and done.model == "gpt-4o-mini"
    assert run_jobs([[s.requested(), s.dispatched(1), s.succeeded(), s.failed(at=2.0)]]).status == "completed"

    update = job_updates([s.requested()])[0]
    assert update(done) is None, "a stale event proposes nothing for a finished job"


@pytest.mark.parametrize("kind,status", [(CompletionFailed, "failed"), (RequestDenied, "failed"),
                                         (CompletionCancelled, "cancelled"), (CompletionExpired, "expired")])
def test_job_failure_statuses(kind: type[CompletionFailed], status: str) -> None:
    s = Story("job1", job=True)
    record = run_jobs([[s.requested()], [s.failed(kind=kind)]])
    assert record.status == status and record.result is None
    assert record.error.code == "upstream_unavailable"
    assert record.public()["error"]["message"] == "no provider could answer"


def test_job_updates_ignore_sync_requests_and_lone_cancels() -> None:
    assert job_updates(lifecycle(Story("sync1"))) == []
    assert job_updates([Story("job1", job=True).cancel()]) == []


def test_job_updates_are_order_insensitive() -> None:
    s = Story("job1", job=True)
    events = [s.requested(), s.admitted(), s.dispatched(1), s.succeeded()]
    expected = job_updates(events)
    assert len(expected) == 1 and expected[0].proposed.status == "completed"
    for seed in range(10):
        assert job_updates(shuffled(events + events, seed)) == expected


def test_audit_batches_stay_small_in_a_process_that_serves_requests():
    from services.audit.service import consumer_for
    from services.audit.settings import AuditSettings
    from services.targets import Shape

    def shares_process(targets: list[str]) -> bool:
        return Shape.of(targets).shares_process("audit")

    s = AuditSettings()
    assert consumer_for(s, shares_process(["audit"])).batch == s.consumer.batch == 512
    assert consumer_for(s, shares_process(["audit", "policy", "router", "worker", "gateway"])).batch \
        == s.shared_loop_batch == 128
    assert not shares_process(["audit"]) and not shares_process(["audit:1"])
    assert shares_process(["audit", "gateway"])
    assert consumer_for(s, shares_process(["audit", "worker:openai"])).batch == 128
    small = AuditSettings(consumer={"batch": 64})
    assert consumer_for(small, shares_process(["audit", "gateway"])).batch == 64  # never raised above what is configured
