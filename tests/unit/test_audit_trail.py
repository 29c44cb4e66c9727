"""The audit trail's records (metadata only), admin actions kept out of the request rows, the export's consumer in
the retention plan, and the export's webhook body formats."""

from __future__ import annotations

import json

import msgspec

from services.audit.export import WebhookSink
from services.audit.handlers import build_rows
from services.audit.settings import ExportSettings
from services.audit.trail import public, trail_rows
from shared.bus.retention import Reader, plan, waiting_for_reader
from shared.events import admin_action
from tests.unit.test_audit_handlers import AZURE, T0, Story, lifecycle

AUDIT = Reader("audit", ("sy.evt.>",), 100)
POLICY = Reader("policy", ("sy.evt.requested",), 100)
SETTLE = Reader("policy-settle", ("sy.evt.done.>", "sy.evt.attempt_failed"), 100)
ROUTER = Reader("router", ("sy.evt.admitted", "sy.evt.attempt_failed"), 100)
WORKER = Reader("worker-mock", ("sy.evt.attempt.mock",), 100)


def test_a_request_leaves_its_admission_and_its_end_in_the_trail_and_no_text() -> None:
    story = Story("r1")
    events = [*lifecycle(story), story.failed(at=2.0)]  # a second terminal: the first one recorded stands
    rows = trail_rows(events)
    assert [r.type for r in rows] == ["admitted", "completed"]  # terminals share one id: one record
    done = public(rows[1])
    assert done["request_id"] == "r1" and done["tenant"] == "acme" and done["team"] == "research"
    assert done["detail"] | {"latency_ms": 0} == {
        "outcome": "succeeded", "api": "chat.completions", "job": False, "latency_ms": 0, "model": AZURE.model,
        "provider": "azure", "attempts": 2, "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.0015,
        "degraded": False}
    assert "SECRET" not in json.dumps([public(r) for r in rows])


def test_an_admin_action_is_a_trail_record_and_never_a_request_row() -> None:
    action = admin_action("key_revoked", tenant="acme", team="research", actor="key_admin", subject_id="key_9",
                          now=T0)
    batch = build_rows([action, *lifecycle(Story("r1"))])
    assert [r.request_id for r in batch.requests] == ["r1"]
    [record] = [public(r) for r in batch.trail if r.type == "key_revoked"]
    assert record["key_id"] == "key_9" and record["actor"] == "key_admin" and record["request_id"] is None
    assert record["detail"] == {"subject": "key_9"}


def test_the_export_consumer_holds_the_stream_while_it_exists_and_nothing_waits_for_it_otherwise() -> None:
    running = [AUDIT, POLICY, SETTLE, ROUTER, WORKER]
    assert not waiting_for_reader("sy.evt.admin.key_created", running)  # export off: no consumer, no hold
    assert plan(["sy.evt.requested"], running, last_seq=120, subject_lag=1000) == ({}, 101)
    behind = Reader("audit-export", ("sy.evt.>",), 10)  # export on, its receiver down since event 10
    _, overall = plan(["sy.evt.requested"], [*running, behind], last_seq=120, subject_lag=1000)
    assert overall == 11  # nothing it has not delivered is purged


def test_webhook_bodies_are_splunk_hec_events_or_a_json_array() -> None:
    records = [public(r) for r in trail_rows(lifecycle(Story("r1")))]
    hec = WebhookSink(ExportSettings(webhook_url="https://hec.example:8088/services/collector",
                                     webhook_format="splunk", webhook_token="t", splunk_host="h", splunk_index="idx"))
    lines = [json.loads(x) for x in hec.body(records).splitlines()]
    assert [x["event"] for x in lines] == records
    assert {k: lines[0][k] for k in ("host", "source", "sourcetype", "index")} == {
        "host": "h", "source": "switchyard", "sourcetype": "switchyard:audit", "index": "idx"}
    assert lines[0]["time"] == records[0]["ts"]
    assert hec.client.headers["authorization"] == "Splunk t" and hec.where == "https://hec.example:8088"
    plain = WebhookSink(ExportSettings(webhook_url="http://x/hook", webhook_token="t"))
    assert msgspec.json.decode(plain.body(records)) == records
    assert plain.client.headers["authorization"] == "Bearer t"
