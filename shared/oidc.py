"""Identity from OpenID Connect providers: ``Authorization: Bearer <JWT>``, beside API keys.

Configuration (``SWITCHYARD_OIDC__ISSUERS``, a JSON list) names each trusted
issuer: its exact ``iss``, the audience its tokens must carry, where its keys
are (``jwks_uri``, or discovery at ``<issuer>/.well-known/openid-configuration``),
the signature algorithms it may use, and how claims map to a tenant, a team
and a role (a claim name and a default for each).

A token is accepted when, in this order:

1. it parses as a JWS whose ``iss`` names a configured issuer and whose
   ``alg`` is one that issuer allows (only asymmetric algorithms can be
   allowed at all: ``none`` and HMAC — e.g. HS256 "signed" with the public
   key — are refused before any key is looked at);
2. its ``kid`` names a signing key in the issuer's JWKS. The key set is
   fetched with httpx and kept for ``jwks_ttl_s``; a ``kid`` it does not hold
   fetches it again at once (the issuer rotated its keys), at most once per
   ``refetch_interval_s`` per issuer however many unknown kids arrive, with
   concurrent callers sharing one fetch; when the issuer cannot be reached
   the keys already held stay in use;
3. the signature verifies, and ``iss``, ``aud``, ``exp`` and ``nbf`` hold
   (with ``leeway_s``); ``exp`` and ``sub`` must be present;
4. every mapped claim is there (or has a configured default) and names a
   valid tenant/team and a known role.

Anything else is a 401 that says which check failed; an issuer whose keys
were never obtained is a 503 (nothing the client can fix).

The principal of a token is the *subject*: ``key_id`` is a stable id derived
from issuer and ``sub`` (``subject_id``, 16 hex digits like a key id), so
ledger rows and per-key rate limits attribute to the person, not to a token.
Policy cannot re-read a token the way it re-reads a key (the token never
travels on the bus): the gateway puts the issuer and the mapped role in the
request's context, and policy admits it while that issuer is still
configured, with the issuer's ``limits`` (or the default key quotas) as the
subject's own limits. Revocation is the token's expiry: issue short-lived
tokens. A token never grants the operator role.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Callable, Literal, Protocol

import httpx
import jwt
import msgspec
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    MissingRequiredClaimError,
    PyJWTError,
)
from pydantic import BaseModel, Field, field_validator, model_validator

from shared.auth import ROLES, KeyLimits, KeyRecord, Principal, Role
from shared.errors import ServiceUnavailable, Unauthenticated
from shared.ids import SAFE_NAME, check_name

log = logging.getLogger("switchyard.oidc")

# Only asymmetric algorithms: a symmetric one would let anyone holding the (public) key set sign tokens.
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_TOKEN_LENGTH = 16 * 1024
MAX_JWKS_BYTES = 1024 * 1024
_RANK = {"viewer": 0, "member": 1, "admin": 2}


class ClaimMapping(BaseModel):
    """Which claim holds a value, and the value when the token has no such claim (None: the claim is required).

    ``claim`` may be a dotted path into nested objects (``realm_access.roles``); a claim whose own name contains
    dots (``https://example.com/tenant``) is found by that name first.
    """

    claim: str | None = None
    default: str | None = None


class OidcIssuer(BaseModel):
    """One trusted OpenID Connect issuer and how its tokens become principals."""

    issuer: str = Field(description="the exact 'iss' of its tokens")
    audience: list[str] = Field(description="accepted 'aud' values (a token must carry one of them)")
    jwks_uri: str | None = Field(None, description="its JSON Web Key Set; unset: discovered from "
                                 "<issuer>/.well-known/openid-configuration")
    algorithms: list[str] = Field(["RS256", "ES256"], description="signature algorithms accepted (asymmetric only)")
    tenant: ClaimMapping = Field(default_factory=lambda: ClaimMapping(claim="tenant"))
    team: ClaimMapping = Field(default_factory=lambda: ClaimMapping(claim="team"))
    role: ClaimMapping = Field(default_factory=lambda: ClaimMapping(claim="role", default="member"))
    roles: dict[str, Role] = Field(default_factory=dict, description="the issuer's role values → admin/member/"
                                   "viewer (values already named so need no entry)")
    limits: dict[str, int | float] | None = Field(None, description="each subject's own limits, as a key's: "
                                            "{rpm, tpm, daily_usd, monthly_usd}")
    allowed_models: list[str] | None = None
    allowed_providers: list[str] | None = None
    leeway_s: float = Field(30.0, ge=0, le=300, description="clock skew allowed on exp/nbf")
    jwks_ttl_s: float = Field(300.0, gt=0, description="how long a fetched key set is used before it is fetched "
                              "again")
    refetch_interval_s: float = Field(10.0, ge=0, description="an unknown kid fetches the key set again at most "
                                      "this often")

    @field_validator("audience", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC]
        if bad or not value:
            raise ValueError(f"algorithms must be asymmetric signature algorithms ({', '.join(ASYMMETRIC)}); "
                             f"refused: {', '.join(bad) or 'an empty list'}")
        return value

    @field_validator("limits")
    @classmethod
    def _limits(cls, value: dict[str, int | float] | None) -> dict[str, int | float] | None:
        if value is not None:
            msgspec.convert(value, KeyLimits)  # the ranges a key's limits have (ValidationError names the field)
        return value

    @model_validator(mode="after")
    def _defaults_are_valid(self) -> "OidcIssuer":
        for what, mapping in (("tenant", self.tenant), ("team", self.team)):
            if mapping.claim is None and mapping.default is None:
                raise ValueError(f"{what}: give a claim, a default, or both")
            if mapping.default is not None:
                check_name(mapping.default, what)
        if self.role.claim is None and self.role.default is None:
            raise ValueError("role: give a claim, a default, or both")
        if self.role.default is not None and self.role.default not in ROLES:
            raise ValueError(f"role default must be one of {', '.join(ROLES)}")
        return self

    def key_limits(self) -> KeyLimits | None:
        return msgspec.convert(self.limits, KeyLimits) if self.limits is not None else None


class OidcSettings(BaseModel):
    """OpenID Connect issuers whose tokens are accepted (``SWITCHYARD_OIDC__ISSUERS``; none: API keys only)."""

    issuers: list[OidcIssuer] = Field(default_factory=list)
    http_timeout_s: float = Field(5.0, gt=0, description="fetching a discovery document or key set")

    def by_issuer(self) -> dict[str, OidcIssuer]:
        return {i.issuer: i for i in self.issuers}


def subject_id(issuer: str, subject: str) -> str:
    """A subject's stable id: 16 hex digits (the shape of a key id), the same for every token of the subject."""
    return hashlib.sha256(f"oidc\0{issuer}\0{subject}".encode()).hexdigest()[:16]


def subject_record(issuer: OidcIssuer, key_id: str, tenant: str, team: str, role: str) -> KeyRecord:
    """What policy checks a subject's request against: the attributes a key record would give, from the
    request's context (set by the gateway from the token) and the issuer's configuration."""
    return KeyRecord(id=key_id, hash="", tenant=tenant, team=team, role=role, limits=issuer.key_limits(),
                     allowed_models=issuer.allowed_models, allowed_providers=issuer.allowed_providers,
                     source="oidc")


def looks_like_jwt(token: str | None) -> bool:
    return bool(token) and token.count(".") == 2 and len(token) <= MAX_TOKEN_LENGTH


def _claim(claims: dict, path: str) -> Any:
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class IssuerKeys:
    """One issuer's signing keys: fetched, kept for a TTL, fetched again for an unknown kid (rate-limited)."""

    def __init__(self, issuer: OidcIssuer, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self.timeout_s = timeout_s
        self.clock = clock
        self.keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid → (key, the alg it declares)
        self.fetched_at: float | None = None  # when the key set now held was fetched
        self.tried_at: float | None = None  # when a fetch was last started (whatever came of it)
        self._jwks_uri = issuer.jwks_uri
        self._inflight: asyncio.Future | None = None

    async def key(self, kid: str | None) -> tuple[jwt.PyJWK, str | None]:
        """The signing key ``kid`` names, and the algorithm it is declared for (None: not declared)."""
        stale = self.fetched_at is None or self.clock() - self.fetched_at > self.issuer.jwks_ttl_s
        if stale and self._may_fetch():
            await self._refresh()
        if not self.keys:
            raise ServiceUnavailable(f"the signing keys of {self.issuer.issuer} could not be fetched; try again "
                                     f"shortly", code="identity_provider_unavailable", retry_after=5)
        found = self._find(kid)
        if found is None and self._may_fetch():
            await self._refresh()  # the issuer may have rotated its keys since the last fetch
            found = self._find(kid)
        if found is None:
            raise Unauthenticated(f"The token was signed with a key its issuer does not publish (kid "
                                  f"{str(kid)[:64]!r}).", code="invalid_token")
        return found

    def _find(self, kid: str | None) -> tuple[jwt.PyJWK, str | None] | None:
        if kid is None:  # only unambiguous when the issuer publishes a single key
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    def _may_fetch(self) -> bool:
        """A fetch at most once per ``refetch_interval_s``, so a flood of unknown kids (or an issuer that is
        down) costs the issuer one request per interval."""
        return self.tried_at is None or self.clock() - self.tried_at >= self.issuer.refetch_interval_s

    async def _refresh(self) -> None:
        """Fetch the key set, one fetch at a time (concurrent callers wait for the same one). A failure keeps
        the keys held (the caller refuses when there are none)."""
        if self._inflight is None:
            self.tried_at = self.clock()
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetched)
        await asyncio.shield(self._inflight)

    def _fetched(self, _: asyncio.Future) -> None:
        self._inflight = None

    async def _fetch(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
                if self._jwks_uri is None:
                    self._jwks_uri = await self._discover(client)
                document = await _get_json(client, self._jwks_uri)
        except Exception as exc:  # noqa: BLE001 - unreachable, an error status, not JSON: keep the keys held
            log.warning("keys of OIDC issuer %s could not be fetched: %r", self.issuer.issuer, exc)
            return
        keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for data in document.get("keys") or []:
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(data)
            except Exception as exc:  # noqa: BLE001 - a malformed key, or a type or curve unknown here: skip it
                log.info("issuer %s: skipping key %s: %s", self.issuer.issuer, data.get("kid"), exc)
                continue
            alg = data.get("alg")
            keys[str(data.get("kid", ""))] = (key, alg if isinstance(alg, str) else None)
        if not keys:
            log.warning("the key set of OIDC issuer %s has no usable signing key", self.issuer.issuer)
            return
        self.keys, self.fetched_at = keys, self.clock()

    async def _discover(self, client: httpx.AsyncClient) -> str:
        url = self.issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await _get_json(client, url)
        if document.get("issuer") != self.issuer.issuer:
            raise ValueError(f"the discovery document at {url} names another issuer ({document.get('issuer')!r})")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str):
            raise ValueError(f"the discovery document at {url} has no jwks_uri")
        return uri


async def _get_json(client: httpx.AsyncClient, url: str) -> dict:
    response = await client.get(url, headers={"accept": "application/json"})
    response.raise_for_status()
    if len(response.content) > MAX_JWKS_BYTES:
        raise ValueError(f"{url} answered more than {MAX_JWKS_BYTES} bytes")
    document = response.json()
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return document


class TokenVerifier(Protocol):
    """What turns a bearer token into a principal (``OidcVerifier``; tests may hand in another)."""

    async def verify(self, token: str) -> Principal: ...


class OidcVerifier:
    """Turns a bearer JWT from a configured issuer into a ``Principal``, or refuses it (401) saying why."""

    def __init__(self, settings: OidcSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.issuers = {i.issuer: IssuerKeys(i, settings.http_timeout_s, clock) for i in settings.issuers}

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except PyJWTError:
            raise Unauthenticated("The bearer token is neither a valid API key nor a well-formed JWT.",
                                  code="invalid_token") from None
        keys = self.issuers.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if keys is None:
            raise Unauthenticated("The token's issuer ('iss') is not one this gateway trusts.", code="invalid_token")
        issuer = keys.issuer
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise Unauthenticated(f"The token's algorithm {str(alg)[:16]!r} is not accepted from this issuer "
                                  f"(accepted: {', '.join(issuer.algorithms)}).", code="invalid_token")
        kid = header.get("kid")
        key, declared = await keys.key(kid if isinstance(kid, str) else None)
        if declared is not None and declared != alg:
            raise Unauthenticated("The token's algorithm is not the one its signing key is for.",
                                  code="invalid_token")
        try:
            claims = jwt.decode(token, key=key.key, algorithms=[alg], audience=issuer.audience,
                                issuer=issuer.issuer, leeway=issuer.leeway_s,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except ExpiredSignatureError:
            raise Unauthenticated("The token has expired.", code="invalid_token") from None
        except ImmatureSignatureError:
            raise Unauthenticated("The token is not valid yet ('nbf' or 'iat' is in the future).",
                                  code="invalid_token") from None
        except InvalidAudienceError:
            raise Unauthenticated("The token is not meant for this gateway ('aud').", code="invalid_token") from None
        except InvalidIssuerError:
            raise Unauthenticated("The token's issuer does not match.", code="invalid_token") from None
        except MissingRequiredClaimError as exc:
            raise Unauthenticated(f"The token has no '{exc.claim}' claim.", code="invalid_token") from None
        except PyJWTError:
            raise Unauthenticated("The token's signature is not valid.", code="invalid_token") from None
        return principal_from_claims(issuer, claims)


def principal_from_claims(issuer: OidcIssuer, claims: dict) -> Principal:
    """The principal a verified token's claims map to (401 naming the claim that is missing or invalid)."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthenticated("The token has no 'sub' claim.", code="invalid_token")
    tenant = _name(claims, issuer.tenant, "tenant")
    team = _name(claims, issuer.team, "team")
    role = _role(claims, issuer)
    return Principal(key_id=subject_id(issuer.issuer, sub), tenant=tenant, team=team, role=role,
                     issuer=issuer.issuer)


def _missing(what: str, mapping: ClaimMapping) -> Unauthenticated:
    return Unauthenticated(f"The token has no '{mapping.claim}' claim, which names the caller's {what} "
                           f"(see SWITCHYARD_OIDC__ISSUERS).", code="missing_claim")


def _name(claims: dict, mapping: ClaimMapping, what: str) -> str:
    value = _claim(claims, mapping.claim) if mapping.claim else None
    if value is None:
        if mapping.default is None:
            raise _missing(what, mapping)
        return mapping.default
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise Unauthenticated(f"The token's '{mapping.claim}' claim is not a valid {what} name.",
                              code="invalid_claim")
    return value


def _role(claims: dict, issuer: OidcIssuer) -> Literal["admin", "member", "viewer"]:
    mapping = issuer.role
    value = _claim(claims, mapping.claim) if mapping.claim else None
    if value is None:
        if mapping.default is None:
            raise _missing("role", mapping)
        return mapping.default  # type: ignore[return-value] - validated against ROLES
    values = value if isinstance(value, list) else [value]
    known = [r for r in (issuer.roles.get(v, v) if isinstance(v, str) else None for v in values) if r in ROLES]
    if not known:
        if mapping.default is None:
            raise Unauthenticated(f"The token's '{mapping.claim}' claim names no role this gateway knows.",
                                  code="invalid_claim")
        return mapping.default  # type: ignore[return-value]
    return max(known, key=_RANK.__getitem__)  # several roles: the broadest one the issuer vouches for
