"""The bus permission table (shared/bus/permissions.py) against what the services really do, and its rendering.

What the server enforces is tested against a running stack in tests/security/test_bus_auth.py; here: every
target has a role and every role a target, the durable consumers the table names are the services' own, every
bucket has an owner, a combined role is the union of its targets, and the rendered block says what it should.
"""

from __future__ import annotations

import pytest

from services.audit.service import DURABLE as AUDIT_DURABLE
from services.policy.service import DURABLE as POLICY_DURABLE
from services.policy.service import SETTLE_DURABLE, SETTLE_SUBJECTS
from services.policy.service import BATCH_DURABLE as POLICY_BATCH_DURABLE
from services.router.service import BATCH_DURABLE as ROUTER_BATCH_DURABLE
from services.router.service import BATCH_SUBJECTS as ROUTER_BATCH_SUBJECTS
from services.router.service import DURABLE as ROUTER_DURABLE
from services.router.service import SUBJECTS as ROUTER_SUBJECTS
from services.targets import ALL as TARGETS
from services.targets import Shape
from services.workers.service import durable as worker_durable
from shared.bus import Bucket
from shared.bus.permissions import ALL, ANY_DURABLE, OPERATOR, ROLES, Access, permissions, render_authorization, \
    role_name, roles_of, users
from shared.events import LANES, REQUESTED
from shared.state import buckets


def test_every_target_has_a_role_and_every_role_a_target():
    assert set(ROLES) == set(TARGETS)
    assert Shape.of(list(TARGETS)).role == ALL
    assert Shape.of(["worker:openai"]).role == "worker"
    assert Shape.of(["router", "policy"]).role == Shape.of(["policy", "router"]).role == "policy+router"


def test_the_durables_in_the_table_are_the_services_own():
    assert ROLES["audit"].durables == {AUDIT_DURABLE: ("sy.evt.>",), "audit-export": ("sy.evt.>",)}
    assert ROLES["audit"].optional == ("audit-export",)  # the audit export's, when configured
    assert ROLES["policy"].durables == {POLICY_DURABLE: (REQUESTED,), POLICY_BATCH_DURABLE: (f"{REQUESTED}.batch",),
                                        SETTLE_DURABLE: SETTLE_SUBJECTS}
    assert ROLES["router"].durables == {ROUTER_DURABLE: ROUTER_SUBJECTS, ROUTER_BATCH_DURABLE: ROUTER_BATCH_SUBJECTS}
    assert list(ROLES["worker"].durables) == [ANY_DURABLE]
    for lane in LANES:  # reached by "*"
        assert worker_durable("openai", lane) not in {d for r in ROLES.values() for d in r.durables}


def test_every_bucket_has_an_owner():
    declared = [v for v in vars(buckets).values() if isinstance(v, Bucket)]
    owners = {b: [r.name for r in ROLES.values() if b in r.writes] for b in (x.name for x in declared)}
    assert all(owners.values()), f"buckets no role writes (add them to shared/bus/permissions.py): " \
                                 f"{[b for b, o in owners.items() if not o]}"
    assert owners["sy_keys"] == ["gateway"]
    assert owners["sy_jobs"] == ["audit", "gateway"]


def test_users_are_every_combination_and_the_operator():
    every = users()
    assert len(every) == 2 ** len(ROLES) - 1 + 1
    assert every[:5] == list(ROLES) and every[-2:] == [ALL, OPERATOR]
    assert all(roles_of(u) for u in every)
    with pytest.raises(ValueError):
        roles_of("policy+nobody")


def test_a_combined_role_is_the_union_of_its_targets():
    both = permissions("policy+router")
    for single in ("policy", "router"):
        assert set(permissions(single).publish) <= set(both.publish)
        assert set(permissions(single).subscribe) - {f"_INBOX.{single}.>"} <= set(both.subscribe)
    assert Access("policy+router").writes("sy_health") and not Access("policy").writes("sy_health")
    assert Access("audit").keeps_stream and not Access("gateway").keeps_stream
    assert Access(OPERATOR).writes("anything") and permissions(OPERATOR) is None


def test_only_the_owners_publish_what_they_own():
    def publishes(user: str, subject: str) -> bool:
        return subject in permissions(user).publish

    assert [u for u in ROLES if publishes(u, "sy.evt.requested")] == ["gateway"]
    assert [u for u in ROLES if publishes(u, "sy.evt.admitted")] == ["policy"]
    assert [u for u in ROLES if publishes(u, "sy.evt.attempt_failed")] == ["worker"]
    assert [u for u in ROLES if publishes(u, "sy.chunk.*.*")] == ["worker"]
    assert [u for u in ROLES if publishes(u, "$KV.sy_keys.>")] == ["gateway"]
    assert [u for u in ROLES if publishes(u, "$JS.API.STREAM.PURGE.SWITCHYARD")] == ["audit"]
    # The gateway ends only what a client may end itself: a job's cancellation.
    assert publishes("gateway", "sy.evt.done.jobs") and not publishes("gateway", "sy.evt.done.*")


def test_a_role_with_unnamed_consumers_is_kept_from_the_named_ones_unless_it_owns_them():
    worker = permissions("worker")
    assert "$JS.API.CONSUMER.MSG.NEXT.SWITCHYARD.*" in worker.publish
    assert "$JS.API.CONSUMER.MSG.NEXT.SWITCHYARD.policy" in worker.deny_publish
    assert "$JS.API.CONSUMER.CREATE.SWITCHYARD.policy.>" in worker.deny_publish
    both = permissions("policy+worker")
    assert not any(".policy" in d for d in both.deny_publish)
    assert any(".router" in d for d in both.deny_publish)


def test_the_rendered_block_names_each_user_once_with_variables_left_to_the_server():
    text = render_authorization({"gateway": "$SY_GATEWAY_PASSWORD", "audit": "pw", OPERATOR: "op"})
    assert text.startswith("authorization {") and text.count("{user:") == 3
    assert 'password: $SY_GATEWAY_PASSWORD,' in text and 'password: "pw"' in text
    assert text.count("allow_responses: true") == 1  # audit answers the gateway's trace and ledger queries
    assert '{user: "operator", password: "op"}' in text
