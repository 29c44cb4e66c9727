"""Routing as plain functions: table-driven, no bus (admission has its own tests in tests/unit/policy/)."""

from __future__ import annotations

from services.router.handlers import RouterDeps, on_attempt_failed, route
from services.router.settings import RouterSettings
from shared.catalog import load_catalog
from shared.errors import UpstreamRejected, UpstreamUnavailable
from shared.events import (
    AttemptDispatched,
    AttemptFailed,
    CompletionExpired,
    CompletionFailed,
)
from tests.support.catalogs import SYSTEM_CATALOG
from tests.support.events import admitted, chat

CATALOG = load_catalog(SYSTEM_CATALOG)
# No same-deployment retries here: these cases are about fallback order and the final error
# (retries, backoff and budgets are covered in tests/unit/router/).
RDEPS = RouterDeps(settings=RouterSettings(max_attempts=3, max_retries_per_deployment=0), catalog=CATALOG)


def test_route_dispatches_first_candidate_with_plan():
    [d] = route(admitted(chat("resilient")), RDEPS)
    assert isinstance(d, AttemptDispatched)
    assert (d.attempt, d.target.provider, [t.provider for t in d.plan]) == (1, "mock-flaky", ["mock"])
    assert d.subject() == "sy.evt.attempt.mock-flaky"
    assert 0 < d.timeout_s <= CATALOG.providers["mock-flaky"].timeout_s
    # Same inputs, same choice.
    assert route(admitted(chat("resilient")), RDEPS)[0].target == d.target


def test_route_respects_policy_provider_constraint():
    [out] = route(admitted(chat("resilient"), allowed_providers=["nobody"]), RDEPS)
    assert isinstance(out, CompletionFailed) and out.error.code == "no_candidates" and out.error.status == 503


def failed(dispatch: AttemptDispatched, exc) -> AttemptFailed:
    return AttemptFailed(event_id="x", request_id=dispatch.request_id, ctx=dispatch.ctx, dispatch=dispatch,
                         error=exc.info())


def test_fallback_then_final_failure_names_every_attempt():
    [d1] = route(admitted(chat("resilient")), RDEPS)
    [d2] = on_attempt_failed(failed(d1, UpstreamUnavailable("boom")), RDEPS)
    assert (d2.attempt, d2.target.provider, d2.plan) == (2, "mock", [])
    assert [h.outcome for h in d2.history] == ["failed"]
    [end] = on_attempt_failed(failed(d2, UpstreamUnavailable("down too")), RDEPS)
    assert isinstance(end, CompletionFailed) and end.error.code == "all_candidates_failed"
    assert "mock-flaky" in end.error.message and "mock/mock-1" in end.error.message
    assert len(end.history) == 2


def test_bad_request_is_not_retried_elsewhere():
    [d1] = route(admitted(chat("resilient")), RDEPS)
    [end] = on_attempt_failed(failed(d1, UpstreamRejected("bad param")), RDEPS)
    assert isinstance(end, CompletionFailed) and end.error.status == 400


def test_no_time_left_expires_instead_of_dispatching():
    [d1] = route(admitted(chat("resilient")), RDEPS)
    [end] = on_attempt_failed(failed(d1, UpstreamUnavailable("x")), RDEPS, now=d1.ctx.deadline - 0.01)
    assert isinstance(end, CompletionExpired) and end.error.status == 504
