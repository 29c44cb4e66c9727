"""Data classes: how sensitive a request is, and which providers may receive it.

Classes rise ``public`` < ``internal`` < ``confidential`` < ``restricted``.
A request's class is its team's default; the client may *raise* it (header
``x-switchyard-data-class`` once the gateway forwards it, or
``"switchyard": {"data_class": ...}`` in the body) but never lower it. Each
provider has a ceiling (``max_data_class`` in the catalog; by default
``restricted`` for self-hosted providers and the in-process mock,
``confidential`` for the rest): it receives classes up to its ceiling. Keys
and teams may narrow the providers further. The result travels to the router
as ``RequestAdmitted.allowed_providers``.
"""

from __future__ import annotations

from typing import Iterable

from shared.catalog import DATA_CLASSES, Catalog
from shared.errors import InvalidRequest

RANK = {name: i for i, name in enumerate(DATA_CLASSES)}


def effective_class(default: str, *asked: str | None) -> str:
    """The team default, raised by whatever the client asked for (never lowered)."""
    chosen = default
    for value in asked:
        if value is None or value == "":
            continue
        if not isinstance(value, str) or value not in RANK:
            raise InvalidRequest(f"unknown data class {value!r}; use one of {', '.join(DATA_CLASSES)}",
                                 param="data_class")
        if RANK[value] > RANK[chosen]:
            chosen = value
    return chosen


def allowed_providers(catalog: Catalog, data_class: str,
                      *narrowing: Iterable[str] | None) -> list[str] | None:
    """Providers that may receive ``data_class``, within every narrowing list; None when nothing is excluded."""
    rank = RANK[data_class]
    everyone = set(catalog.providers)
    allowed = {name for name, p in catalog.providers.items() if RANK[p.data_class_ceiling] >= rank}
    for names in narrowing:
        if names is not None:
            allowed &= set(names)
    return None if allowed == everyone else sorted(allowed)
