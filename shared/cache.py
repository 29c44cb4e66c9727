"""The response cache's rules, as pure functions: when a request may be cached, what its key is, how vectors compare.

Policy decides at admission (``plan``) whether the cache is in play for a
request, from the team's cache mode, the client's ``x-switchyard-cache``
header (``use`` / ``refresh`` / ``off``) and the operator's settings; the
worker serving the request (``services/workers/cache.py``) follows that plan
against the store in ``shared/state/cache.py``.

Eligibility (``ineligible``): only answers that are deterministic enough to
replay: a chat completion (not embeddings) with ``n`` at most 1 and either
``temperature`` 0 or a ``seed``. Anything else bypasses the cache (the
response says ``x-switchyard-cache: bypass``).

The key (``cache_key``) is a SHA-256 over the tenant, the team, the deployment
that serves the request (deployment id, catalog model, upstream model) and
every request field that can change the answer, after policy's redaction: the
messages, tools, response format, sampling parameters, output caps, stop
sequences, logprobs, seed, and the built-in mock's hints. Only fields that
cannot change the answer are left out (``NOT_IN_KEY``), so a field added to
the request later is part of the key until someone decides otherwise. Two
teams, let alone two tenants, never share an entry.

Semantic lookups compare embeddings of the prompt text (``prompt_text``) by
cosine similarity, among entries whose other parameters are identical
(``params_key``: the same key without the messages). Vectors are stored
quantised to signed bytes (``pack`` / ``unpack``) so an index of a few hundred
entries fits in one KV value.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any, Sequence

import msgspec
from msgspec import Struct

from shared.canonical import ChatRequest, ChatResponse
from shared.events import CachePlan, Target

KEY_VERSION = 1
MODES = ("off", "request", "exact", "semantic")  # a team's cache mode
HEADER = "x-switchyard-cache"
HEADER_VALUES = ("use", "refresh", "off")
# Request fields that cannot change the answer: delivery (stream), bookkeeping (user, metadata), the model name the
# client asked for (the served deployment is keyed instead) and Switchyard's extension (routing hints; its mock
# hints, which do change the mock's answer, are keyed on their own).
NOT_IN_KEY = frozenset({"model", "stream", "stream_options", "user", "metadata", "switchyard"})

_canonical = msgspec.json.Encoder(order="deterministic")


class CacheEntry(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One stored answer (KV ``<tenant>.<team>.e.<key>``)."""

    response: ChatResponse
    created_at: float
    expires_at: float
    source: str  # the request id that produced it upstream
    cost_usd: float = 0.0  # what producing it cost


def ineligible(request: ChatRequest, api: str) -> str:
    """Why a request's answer may not come from (or go into) the cache; empty when it may."""
    if api == "embeddings":
        return "embeddings are not cached"
    if request.n is not None and request.n > 1:
        return "n > 1 asks for several different answers"
    if request.temperature != 0 and request.seed is None:
        return "not deterministic: send temperature 0 or a seed"
    return ""


def plan(request: ChatRequest, api: str, header: str | None, *, mode: str, ttl_s: float, max_ttl_s: float,
         similarity: float, enabled: bool = True) -> CachePlan | None:
    """The cache plan for one admitted request; None when the cache is not in play at all (no header either).

    ``mode`` is the team's: ``off`` (never), ``request`` (only when the request asks with ``use`` or
    ``refresh``), ``exact`` (every eligible request unless it sends ``off``), ``semantic`` (``exact`` plus
    lookups of similar prompts).
    """
    if header is None and mode in ("off", "request"):
        return None
    if not enabled or mode == "off":
        return CachePlan(mode="bypass", reason="the response cache is off for this team")
    if header == "off":
        return CachePlan(mode="bypass", reason="the request asked for no cache")
    why = ineligible(request, api)
    if why:
        return CachePlan(mode="bypass", reason=why)
    return CachePlan(mode="refresh" if header == "refresh" else "use", ttl_s=min(ttl_s, max_ttl_s),
                     semantic=mode == "semantic", similarity=similarity)


def _material(tenant: str, team: str, target: Target, request: ChatRequest, with_messages: bool) -> dict[str, Any]:
    fields = {f: getattr(request, f) for f in request.__struct_fields__
              if f not in NOT_IN_KEY and (with_messages or f != "messages")}
    mock = (request.switchyard or {}).get("mock")
    return {"v": KEY_VERSION, "tenant": tenant, "team": team, "deployment": target.deployment,
            "model": target.model, "upstream_model": target.upstream_model, "request": fields, "mock": mock}


def cache_key(tenant: str, team: str, target: Target, request: ChatRequest) -> str:
    """The entry's key: SHA-256 (hex) over everything that can change the answer (see the module docstring)."""
    return hashlib.sha256(_canonical.encode(_material(tenant, team, target, request, True))).hexdigest()


def params_key(tenant: str, team: str, target: Target, request: ChatRequest) -> str:
    """The key without the messages: semantic lookups match only entries made with the same parameters."""
    return hashlib.sha256(_canonical.encode(_material(tenant, team, target, request, False))).hexdigest()[:32]


# ---- vectors ---------------------------------------------------------------------------------

def normalise(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(math.fsum(v * v for v in vector))
    return [v / norm for v in vector] if norm > 0 else list(vector)


def pack(vector: Sequence[float]) -> str:
    """A unit vector as signed bytes (base64): a cosine off by well under 0.01, at a byte per dimension."""
    unit = normalise(vector)
    return base64.b64encode(bytes((max(-127, min(127, round(v * 127))) & 0xFF) for v in unit)).decode()


def unpack(packed: str) -> list[float]:
    raw = base64.b64decode(packed)
    return normalise([(b - 256 if b > 127 else b) / 127 for b in raw])


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two unit vectors (0 when their dimensions differ: another embeddings model)."""
    if len(a) != len(b):
        return 0.0
    return math.fsum(x * y for x, y in zip(a, b))
