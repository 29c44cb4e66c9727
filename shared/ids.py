"""Ids and names: every pattern one must match, and the checks that refuse the rest, defined once.

- ``SAFE_NAME``: tenants, teams and provider names. They end up in KV keys
  and NATS subject tokens, so one safe alphabet serves all of them.
- ``SAFE_KEY_ID``: an API key's id, the first 16 hex digits of its hash.
- ``SAFE_REQUEST_ID``: a request or job id as it comes back from a client
  (a URL path) or off the bus, before it is used as a KV key or a query.
- ``SAFE_CATALOG_ID``: model names and deployment ids in the catalog, which
  are not subject tokens and may carry provider spellings (``.``, ``:``, ``/``).

A pattern is used with ``match`` (a boolean test on a value that may be
refused quietly, e.g. a 404); a ``check_*`` function raises ``ValueError``
naming what was refused, for configuration and pydantic validators. Every
pattern ends in ``\Z``, not ``$``: ``$`` also matches before a trailing
newline, and ``"team-a\n"`` would pass, then break a KV key or a subject.
"""

from __future__ import annotations

import re

SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
SAFE_KEY_ID = re.compile(r"^[0-9a-f]{16}\Z")
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
SAFE_CATALOG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}\Z")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a safe tenant/team name, else ValueError naming ``what``."""
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise ValueError(f"{what} {value!r} must be 1-63 lowercase letters, digits, '-' or '_' "
                         f"(it becomes part of KV keys and NATS subjects)")
    return value


def check_catalog_id(value: str, what: str) -> str:
    """``value`` if it is a safe model name or deployment id, else ValueError naming ``what`` (plural)."""
    if not isinstance(value, str) or not SAFE_CATALOG_ID.match(value):
        raise ValueError(f"{what} use letters, digits and . _ : / -")
    return value
