"""OIDC configuration and claim mapping as pure functions (the token checks against a JWKS server are in
tests/security/test_oidc.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.errors import Unauthenticated
from shared.oidc import OidcIssuer, OidcSettings, looks_like_jwt, principal_from_claims, subject_id, subject_record

ISS = "https://login.example.com/realms/acme"


def issuer(**kw) -> OidcIssuer:
    return OidcIssuer(**{"issuer": ISS, "audience": "switchyard", **kw})


def test_claims_map_to_a_principal_whose_id_is_the_subjects():
    p = principal_from_claims(issuer(), {"sub": "u-1", "tenant": "acme", "team": "ml", "role": "admin"})
    assert (p.tenant, p.team, p.role, p.issuer, p.operator) == ("acme", "ml", "admin", ISS, False)
    assert p.key_id == subject_id(ISS, "u-1") and len(p.key_id) == 16
    assert subject_id(ISS, "u-1") != subject_id(ISS, "u-2") != subject_id("https://other", "u-1")


def test_nested_and_namespaced_claims_role_lists_and_mapped_role_names():
    cfg = issuer(tenant={"claim": "https://example.com/tenant"}, team={"claim": "org.team"},
                 role={"claim": "realm_access.roles"}, roles={"llm-admins": "admin"})
    claims = {"sub": "u", "https://example.com/tenant": "acme", "org": {"team": "ml"},
              "realm_access": {"roles": ["offline_access", "viewer", "llm-admins"]}}
    p = principal_from_claims(cfg, claims)
    assert (p.tenant, p.team, p.role) == ("acme", "ml", "admin")  # the broadest role the issuer vouches for


def test_defaults_fill_in_a_missing_claim_and_a_required_one_is_a_clear_401():
    cfg = issuer(tenant={"claim": None, "default": "acme"}, team={"claim": "team", "default": "general"})
    p = principal_from_claims(cfg, {"sub": "u"})
    assert (p.tenant, p.team, p.role) == ("acme", "general", "member")
    with pytest.raises(Unauthenticated, match="no 'tenant' claim, which names the caller's tenant") as err:
        principal_from_claims(issuer(), {"sub": "u", "team": "ml"})
    assert err.value.status == 401 and err.value.code == "missing_claim"


@pytest.mark.parametrize("claims, message", [
    ({"sub": "u", "tenant": "Acme Corp", "team": "ml"}, "'tenant' claim is not a valid tenant name"),
    ({"sub": "u", "tenant": "acme", "team": ["ml"]}, "'team' claim is not a valid team name"),
    ({"sub": "u", "tenant": "acme", "team": "ml", "role": "superuser"}, "names no role"),
    ({"tenant": "acme", "team": "ml"}, "no 'sub' claim"),
])
def test_claims_that_cannot_name_a_principal_are_refused(claims, message):
    cfg = issuer(role={"claim": "role"})  # no default role: an unknown one is refused
    with pytest.raises(Unauthenticated, match=message):
        principal_from_claims(cfg, claims)


def test_only_asymmetric_algorithms_can_be_configured():
    for bad in (["HS256"], ["none"], ["RS256", "HS512"], []):
        with pytest.raises(ValidationError, match="asymmetric"):
            issuer(algorithms=bad)
    assert issuer(algorithms=["ES384", "PS256", "EdDSA"]).algorithms == ["ES384", "PS256", "EdDSA"]


def test_configuration_errors_are_refused_at_start():
    with pytest.raises(ValidationError, match="tenant"):
        issuer(tenant={"claim": None})  # neither a claim nor a default
    with pytest.raises(ValidationError, match="team"):
        issuer(team={"claim": "team", "default": "Not A Team"})
    with pytest.raises(ValidationError, match="rpm"):
        issuer(limits={"rpm": 0})
    settings = OidcSettings.model_validate_json(
        f'{{"issuers": [{{"issuer": "{ISS}", "audience": ["a", "b"], "limits": {{"rpm": 10}}}}]}}')
    assert settings.by_issuer()[ISS].audience == ["a", "b"]


def test_a_subject_record_carries_the_issuers_grants():
    cfg = issuer(limits={"rpm": 10, "daily_usd": 2.5}, allowed_models=["mock-1"])
    record = subject_record(cfg, "0123456789abcdef", "acme", "ml", "member")
    assert record.limits.rpm == 10 and record.limits.daily_usd == 2.5 and record.allowed_models == ["mock-1"]
    assert record.active() and not record.operator and record.source == "oidc"


def test_what_looks_like_a_jwt():
    assert looks_like_jwt("a.b.c") and not looks_like_jwt("sk-sy-abc") and not looks_like_jwt(None)
    assert not looks_like_jwt("a.b.c" + "x" * 20_000)
