"""Identity beyond static keys: bearer JWTs of configured OIDC issuers, checked against a local issuer.

The issuer here is a small HTTP server on 127.0.0.1 (a random port) serving two realms, each with a
discovery document and a JSON Web Key Set, with RS256 and ES256 keys it can rotate; the test mints tokens
with the private halves. The gateway is configured with both realms:

- ``main``: keys found by discovery, an unknown kid may fetch the keys again every 0.2 s (rotation);
- ``strict``: keys at a configured ``jwks_uri``, an unknown kid fetches them again at most once a minute,
  and every subject limited to 3 requests per minute (the issuer's ``limits``, applied by policy as a key's).

Accepted: valid RS256 and ES256 tokens, and a token signed with a key the issuer published after the gateway
last fetched its keys. Refused with 401: an expired token, a wrong audience, an unknown kid, ``alg: none``,
HS256 "signed" with the issuer's public key, a token of an issuer not configured, a token without the
mapped tenant claim. API keys keep working beside tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shared.natsd import NatsServer, free_port
from shared.oidc import OidcSettings, subject_id
from tests.support.system import MEMBER_KEY, make_settings, start_system
from tests.support.wait import eventually

AUDIENCE = "switchyard"
BODY = {"model": "mock-1", "messages": [{"role": "user", "content": "who am I?"}], "max_tokens": 8}


class IdentityProvider:
    """A local OIDC issuer: per realm a discovery document and a key set over HTTP, keys it can add, and tokens
    signed with them. ``hits`` counts the requests per path."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.keys: dict[str, tuple[object, str]] = {}  # kid → (private key, alg)
        self.published: dict[str, list[str]] = {"main": [], "strict": []}  # realm → kids in its key set
        self.hits: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.add("main", "rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
        self.add("main", "ec-1", ec.generate_private_key(ec.SECP256R1()), "ES256")
        self.add("strict", "strict-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")

    def issuer(self, realm: str) -> str:
        return f"{self.base}/{realm}"

    def add(self, realm: str, kid: str, key, alg: str) -> None:
        self.keys[kid] = (key, alg)
        self.published[realm].append(kid)

    def jwk(self, kid: str) -> dict:
        key, alg = self.keys[kid]
        to_jwk = RSAAlgorithm.to_jwk if alg.startswith("RS") else ECAlgorithm.to_jwk
        return {**to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": alg, "use": "sig"}

    def public_pem(self, kid: str) -> bytes:
        return self.keys[kid][0].public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)

    def claims(self, realm: str = "main", **overrides) -> dict:
        now = int(time.time())
        claims = {"iss": self.issuer(realm), "aud": AUDIENCE, "sub": f"user-{uuid.uuid4().hex[:8]}",
                  "iat": now, "nbf": now, "exp": now + 300, "tenant": "acme", "team": "research", "role": "member"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str = "rsa-1", realm: str = "main", **overrides) -> str:
        key, alg = self.keys[kid]
        return jwt.encode(self.claims(realm, **overrides), key, algorithm=alg, headers={"kid": kid})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{realm}/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/{realm}/keys", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        realm = request.match_info["realm"]
        self.hits[request.path] += 1
        return web.json_response({"issuer": self.issuer(realm), "jwks_uri": f"{self.issuer(realm)}/keys"})

    async def _jwks(self, request: web.Request) -> web.Response:
        realm = request.match_info["realm"]
        self.hits[request.path] += 1
        return web.json_response({"keys": [self.jwk(kid) for kid in self.published.get(realm, [])]})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(idp: IdentityProvider, kid: str) -> str:
    """The classic confusion attack: HMAC-"sign" a token with the issuer's public key (which anyone can fetch)."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64(json.dumps(idp.claims()).encode())
    signature = hmac.new(idp.public_pem(kid), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


@pytest.fixture(scope="module")
async def idp():
    provider = IdentityProvider()
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory, idp):
    tmp = Path(tmp_path_factory.mktemp("oidc"))
    nats = NatsServer(tmp / "nats").start()
    oidc = OidcSettings(issuers=[
        {"issuer": idp.issuer("main"), "audience": AUDIENCE, "refetch_interval_s": 0.2},
        {"issuer": idp.issuer("strict"), "audience": [AUDIENCE, "other"], "jwks_uri": f"{idp.issuer('strict')}/keys",
         "algorithms": ["RS256"], "refetch_interval_s": 60, "limits": {"rpm": 3},
         "team": {"claim": "team", "default": "general"}},
    ])
    system = await start_system(make_settings(nats, tmp / "data", oidc=oidc))
    yield system
    await system.close()
    nats.stop()


async def chat(system, token: str, body: dict = BODY) -> httpx.Response:
    return await system.http.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"})


def refused(response: httpx.Response, words: str) -> bool:
    error = response.json()["error"]
    return response.status_code == 401 and words in error["message"]


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
async def test_a_valid_token_calls_the_api_as_its_subject(gateway, idp, kid):
    sub = f"alice-{kid}"
    r = await chat(gateway, idp.token(kid, sub=sub))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    # The cost is attributed to the subject: its tenant's ledger, its team, a stable subject id as key id.
    rid = r.headers["x-request-id"]
    row = await eventually(lambda: _ledger_row(gateway, rid, idp.token(kid, sub=sub)), timeout=10)
    assert row["team"] == "research" and row["key_id"] == subject_id(idp.issuer("main"), sub)


async def _ledger_row(system, rid: str, token: str) -> dict | None:
    r = await system.http.get("/v1/ledger", params={"limit": 1000}, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return next((row for row in r.json()["data"] if row["request_id"] == rid), None)


async def test_api_keys_keep_working_beside_tokens(gateway):
    r = await gateway.http.post("/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {MEMBER_KEY}"})
    assert r.status_code == 200, r.text


async def test_an_expired_token_is_refused(gateway, idp):
    now = int(time.time())
    r = await chat(gateway, idp.token(iat=now - 900, nbf=now - 900, exp=now - 120))
    assert refused(r, "expired")
    r = await chat(gateway, idp.token(nbf=now + 600))
    assert refused(r, "not valid yet")


async def test_a_token_for_another_audience_is_refused(gateway, idp):
    assert refused(await chat(gateway, idp.token(aud="someone-else")), "not meant for this gateway")


async def test_a_token_of_an_issuer_not_configured_is_refused(gateway, idp):
    assert refused(await chat(gateway, idp.token(iss="https://evil.example.com")), "issuer")


async def test_an_unknown_kid_is_refused_and_a_flood_of_them_costs_the_issuer_one_fetch(gateway, idp):
    r = await chat(gateway, idp.token("strict-1", realm="strict"))
    assert r.status_code == 200, r.text  # the strict realm's keys are fetched now
    before = idp.hits["/strict/keys"]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(20):
        token = jwt.encode(idp.claims("strict"), stranger, algorithm="RS256", headers={"kid": f"unknown-{i}"})
        assert refused(await chat(gateway, token), "key its issuer does not publish")
    assert idp.hits["/strict/keys"] - before <= 1


async def test_a_rotated_key_is_picked_up_by_refetching_the_key_set(gateway, idp):
    assert (await chat(gateway, idp.token("rsa-1"))).status_code == 200
    idp.add("main", "rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    token = idp.token("rsa-2")

    async def accepted() -> bool:  # at most one refetch per 0.2 s: the first try may come too soon after the last
        r = await chat(gateway, token)
        assert r.status_code in (200, 401), r.text
        return r.status_code == 200

    await eventually(accepted, timeout=10, interval=0.05)
    assert idp.hits["/main/.well-known/openid-configuration"] == 1  # discovery once; keys fetched again


async def test_alg_none_and_hmac_with_the_public_key_are_refused(gateway, idp):
    unsigned = jwt.encode(idp.claims(), None, algorithm="none")
    assert refused(await chat(gateway, unsigned), "algorithm 'none' is not accepted")
    assert refused(await chat(gateway, hs256_with_public_key(idp, "rsa-1")), "algorithm 'HS256' is not accepted")
    # A token whose signature does not verify is refused too.
    header, payload, _ = idp.token("ec-1").split(".")
    forged = idp.token("ec-1", tenant="other-tenant").split(".")[1]
    assert refused(await chat(gateway, f"{header}.{forged}.{idp.token('ec-1').split('.')[2]}"), "signature")
    assert payload != forged


async def test_a_missing_mapped_claim_is_a_clear_401(gateway, idp):
    r = await chat(gateway, idp.token(tenant=None))
    assert refused(r, "no 'tenant' claim, which names the caller's tenant")
    r = await chat(gateway, idp.token(tenant="Not A Tenant"))
    assert refused(r, "not a valid tenant name")
    # The strict realm gives a default team: a token without one is admitted into it.
    r = await chat(gateway, idp.token("strict-1", realm="strict", team=None, sub="dora"))
    assert r.status_code == 200, r.text


async def test_roles_come_from_the_token_and_a_viewer_creates_nothing(gateway, idp):
    r = await chat(gateway, idp.token(role="viewer"))
    assert r.status_code == 403, r.text
    admin = idp.token(role="admin", sub="root-of-acme")
    r = await gateway.http.get("/v1/admin/keys", headers={"authorization": f"Bearer {admin}"})
    assert r.status_code == 200, r.text  # a tenant admin of acme: its own tenant's keys, never operator rights
    r = await gateway.http.get("/v1/admin/keys", params={"tenant": "default"},
                               headers={"authorization": f"Bearer {admin}"})
    assert r.status_code == 403


async def test_an_issuers_limits_apply_to_each_subject_as_a_keys_own(gateway, idp):
    statuses = [(await chat(gateway, idp.token("strict-1", realm="strict", sub="erin"))).status_code
                for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # Another subject of the same issuer has limits of its own.
    assert (await chat(gateway, idp.token("strict-1", realm="strict", sub="frank"))).status_code == 200
