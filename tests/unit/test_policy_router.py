"""Admission and routing as plain functions: table-driven, no bus."""

from __future__ import annotations

import time

import pytest

from services.policy.handlers import PolicyDeps, admit
from services.policy.settings import PolicySettings
from services.router.handlers import RouterDeps, on_attempt_failed, route
from services.router.settings import RouterSettings
from shared.auth import KeyEntry, KeyRing
from shared.catalog import load_catalog
from shared.canonical import ChatRequest, Message
from shared.errors import UpstreamRejected, UpstreamUnavailable
from shared.events import (
    AttemptDispatched,
    AttemptFailed,
    CompletionExpired,
    CompletionFailed,
    RequestAdmitted,
    RequestDenied,
)
from tests.unit.helpers import admitted, chat, requested

CATALOG = load_catalog("tests/data/catalog.yaml")
RING = KeyRing(b"s", [KeyEntry(key="sk-1")])
KEY_ID = RING.authenticate("sk-1").key_id
PDEPS = PolicyDeps(settings=PolicySettings(max_messages=3, max_n=2), catalog=CATALOG, keyring=RING)
RDEPS = RouterDeps(settings=RouterSettings(max_attempts=3), catalog=CATALOG)


@pytest.mark.parametrize("request_, status, code", [
    (chat("no-such"), 404, "model_not_found"),
    (ChatRequest(model="mock-1", messages=[Message(role="user", content="x")] * 4), 422, "unprocessable_entity"),
    (chat(n=3), 422, "unprocessable_entity"),
    (chat(text="word " * 200_000), 400, "context_length_exceeded"),
    (ChatRequest(model="mock-1", messages=[Message(role="tool", content="r")]), 400, "invalid_request"),
])
def test_policy_denies_with_reason(request_, status, code):
    [out] = admit(requested(request_, key_id=KEY_ID), PDEPS)
    assert isinstance(out, RequestDenied)
    assert (out.error.status, out.error.code) == (status, code)
    assert out.event_id == "req_1.done"  # shares the terminal id: one terminal per request


def test_policy_denies_unknown_key_and_admits_known():
    [out] = admit(requested(key_id="not-a-key"), PDEPS)
    assert isinstance(out, RequestDenied) and out.error.status == 401
    [ok] = admit(requested(key_id=KEY_ID), PDEPS)
    assert isinstance(ok, RequestAdmitted) and ok.event_id == "req_1.admitted"


def test_policy_clamps_output_cap_to_the_model():
    [ok] = admit(requested(chat(max_tokens=10**6), key_id=KEY_ID), PDEPS)
    assert ok.request.max_tokens == CATALOG.models["mock-1"].max_output_tokens


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
