"""Default quotas (which rate-limit scopes a request must fit in) and fair admission across tenants, as pure
decisions: no NATS."""

from __future__ import annotations

import random

import pytest

from services.policy.fairness import FairShare
from services.policy.handlers import rate_scopes
from services.policy.settings import FairnessSettings, PolicySettings, QuotaSettings, TenantQuota
from shared.auth import KeyLimits, KeyRecord
from shared.errors import Defer
from shared.state.ratelimit import RateScope
from shared.state.teams import TeamSettings, TeamRecord, effective

QUOTAS = QuotaSettings(key_rpm=600, key_tpm=0, tenant_rpm=2000, tenant_tpm=500_000,
                       tenants={"big": TenantQuota(rpm=90_000)})


def key(limits: KeyLimits | None = None, operator: bool = False, tenant: str = "acme") -> KeyRecord:
    return KeyRecord(id="0123456789abcdef", hash="h", tenant=tenant, team="ml", limits=limits, operator=operator)


def team(**settings) -> TeamRecord:
    return TeamRecord(tenant="acme", name="ml", settings=TeamSettings(**settings))


def scopes(k: KeyRecord, t: TeamRecord | None = None, quotas: QuotaSettings | None = QUOTAS) -> list[RateScope]:
    return rate_scopes(k.tenant, "ml", k, effective(t, PolicySettings()), quotas)


def test_every_key_and_tenant_gets_the_defaults():
    assert scopes(key()) == [RateScope(key="key.0123456789abcdef", rpm=600),
                             RateScope(key="tenant.acme", rpm=2000, tpm=500_000)]


def test_a_keys_own_limit_replaces_the_default_of_that_dimension_only():
    assert scopes(key(KeyLimits(tpm=1000)))[0] == RateScope(key="key.0123456789abcdef", rpm=600, tpm=1000)
    assert scopes(key(KeyLimits(rpm=5, daily_usd=1.0)))[0] == RateScope(key="key.0123456789abcdef", rpm=5)


def test_a_teams_own_limits_apply_beside_the_tenants():
    assert [s.key for s in scopes(key(), team(rpm=30))] == ["key.0123456789abcdef", "team.acme.ml", "tenant.acme"]


def test_a_tenant_with_its_own_limits_and_a_default_turned_off():
    assert scopes(key(tenant="big"))[-1] == RateScope(key="tenant.big", rpm=90_000)
    off = QuotaSettings(key_rpm=0, tenant_rpm=0)
    assert scopes(key(), quotas=off) == []


def test_the_operators_key_keeps_only_its_own_limits():
    assert scopes(key(operator=True)) == []
    assert scopes(key(KeyLimits(rpm=50), operator=True)) == [RateScope(key="key.0123456789abcdef", rpm=50)]
    assert len(scopes(key(operator=True), quotas=QuotaSettings(exempt_operator=False))) == 2


def test_without_quota_settings_only_explicit_limits_apply():
    assert scopes(key(), quotas=None) == []


def test_quota_tenants_must_be_valid_names():
    with pytest.raises(ValueError, match="tenant"):
        QuotaSettings(tenants={"Not A Name": TenantQuota(rpm=1)})


# ---- fair share ---------------------------------------------------------------------------------------------

def hold(f: FairShare, tenant: str, n: int) -> list:
    """``n`` admissions of ``tenant`` in flight (the context managers are kept: dropping one ends its admission)."""
    held = [f.slot(tenant, f"req_{tenant}_{i}", 1, pending=100) for i in range(n)]
    for h in held:
        h.__enter__()
    return held


def fair(**kw) -> FairShare:
    """A fair share of 4 in a window of 16."""
    s = FairnessSettings(**{"tenant_share": 0.25, "min_in_flight": 2, "defer_s": 0.1, "max_defers": 3, **kw})
    return FairShare(s, window=16, max_deliver=10, rng=random.Random(7))


def test_a_tenant_over_its_share_is_sent_back_and_others_are_not():
    f = fair()  # share: 4 of 16
    held = hold(f, "flood", 4)
    with pytest.raises(Defer) as deferred:
        with f.slot("flood", "req_x", 1, pending=100):
            pass
    assert 0.05 <= deferred.value.delay_s <= 0.15
    with f.slot("quiet", "req_b", 1, pending=100):  # another tenant is admitted at once
        assert f.in_flight == {"flood": 4, "quiet": 1}
    held[0].__exit__(None, None, None)
    with f.slot("flood", "req_x", 2, pending=100):  # a slot came free
        pass


def test_a_request_sent_back_max_defers_times_is_admitted_regardless():
    f = fair(max_defers=2)
    held = hold(f, "flood", 4)
    for delivery in (1, 2):
        with pytest.raises(Defer):
            with f.slot("flood", "req_x", delivery, pending=100):
                pass
    assert f.deliveries("req_x", 3) == 1  # both earlier deliveries were deferrals, not failures
    with f.slot("flood", "req_x", 3, pending=100):
        assert f.in_flight["flood"] == 5
    assert f.deliveries("req_x", 4) == 4  # decided: later deliveries count in full again
    assert len(held) == 4


def test_deferring_never_uses_up_the_deliveries_that_make_poison():
    s = FairnessSettings(min_in_flight=1, tenant_share=0.01, max_defers=50)
    f = FairShare(s, window=16, max_deliver=5)
    assert f.max_defers == 3
    held = hold(f, "t", 1)
    with pytest.raises(Defer):
        with f.slot("t", "req_1", 3, pending=100):
            pass
    with f.slot("t", "req_1", 4, pending=100):  # the 4th of 5 deliveries: admitted whatever the tenant holds
        assert len(held) == 1


def test_fairness_is_off_when_a_share_would_cover_the_whole_window():
    f = FairShare(FairnessSettings(min_in_flight=16), window=8, max_deliver=10)
    assert not f.active
    assert len(hold(f, "t", 20)) == 20  # never deferred
    assert not FairShare(FairnessSettings(enabled=False), window=256, max_deliver=10).active


def test_with_nothing_waiting_behind_a_busy_tenant_is_not_held_back():
    f = fair()
    held = hold(f, "solo", 4)
    with f.slot("solo", "req_x", 1, pending=0):  # the last message in the stream: nobody to make room for
        assert f.in_flight["solo"] == 5 and len(held) == 4


def test_a_delivery_says_how_many_messages_wait_behind_it():
    from nats.aio.msg import Msg

    from shared.bus import delivery_of

    v1 = Msg(_client=None, subject="s", reply="$JS.ACK.SWITCHYARD.policy.3.1042.77.1700000000000000000.5")
    v2 = Msg(_client=None, subject="s", reply="$JS.ACK.hub.ACC.SWITCHYARD.policy.2.99.10.1700000000000000000.42.tok")
    assert delivery_of(v1).pending == 5 == v1.metadata.num_pending
    assert delivery_of(v2).pending == 42 == v2.metadata.num_pending

