"""Declarative routes from the catalog: which rule a request meets, and which arm of a split it takes.

Routes are tried in catalog order; the first whose ``match`` fits wins. Every
field given must match: ``model`` (the requested name; ``auto`` covers every
``auto:*``), ``team``, ``task`` (the hinted or inferred task), ``api``,
``metadata`` (the request's OpenAI ``metadata``) and ``headers`` (the
``x-switchyard-*`` headers the gateway forwarded).

A split picks one variant by weight with a draw seeded by the route's
``sticky`` key — the request id by default (reproducible per request), or the
request's ``user``, its team, or one of its metadata values (the same user
always lands in the same arm) — and the draw is recorded in the decision.
"""

from __future__ import annotations

from typing import Mapping

from services.router import draws
from shared.canonical import ChatRequest
from shared.catalog import Catalog, RouteSpec, RouteVariant, is_auto
from shared.events import RequestContext


def matches(route: RouteSpec, requested: str, ctx: RequestContext, task: str | None, request: ChatRequest,
            headers: Mapping[str, str]) -> bool:
    m = route.match
    names = set(m.model)
    if requested not in names and not ("auto" in names and is_auto(requested)):
        return False
    if m.team is not None and ctx.team not in m.team:
        return False
    if m.task is not None and task not in m.task:
        return False
    if m.api is not None and ctx.api not in m.api:
        return False
    meta = request.metadata or {}
    if any(meta.get(k) != v for k, v in m.metadata.items()):
        return False
    return all(headers.get(k.lower()) == v for k, v in m.headers.items())


def match_route(catalog: Catalog, requested: str, ctx: RequestContext, task: str | None, request: ChatRequest,
                headers: Mapping[str, str]) -> RouteSpec | None:
    """The first route the request meets, if any."""
    return next((r for r in catalog.routes if matches(r, requested, ctx, task, request, headers)), None)


def sticky_key(route: RouteSpec, request_id: str, ctx: RequestContext, request: ChatRequest) -> str:
    s = route.sticky
    if s == "user" and request.user:
        return f"user:{request.user}"
    if s == "team":
        return f"team:{ctx.tenant}/{ctx.team}"
    if s.startswith("metadata."):
        value = (request.metadata or {}).get(s.removeprefix("metadata."))
        if value is not None:
            return f"{s}:{value}"
    return request_id


def pick_variant(route: RouteSpec, key: str) -> tuple[RouteVariant | None, float | None]:
    """The variant of a split for this key, and the draw that chose it."""
    if not route.split:
        return None, None
    u = draws.uniform(key, f"route.{route.name}")
    total = sum(v.weight for v in route.split)
    acc = 0.0
    for v in route.split:
        acc += v.weight / total
        if u < acc:
            return v, u
    return route.split[-1], u


def variant_name(route: RouteSpec, variant: RouteVariant | None) -> str | None:
    if variant is None:
        return None
    return variant.name or f"{route.name}[{route.split.index(variant)}]"
