"""Budget and rate-limit scopes: a team (``team.<tenant>.<team>``), a key (``key.<key_id>``) or, for the default
rate limits only, a whole tenant (``tenant.<tenant>``).

The same scope key names a counter in ``sy_budgets`` and a GCRA state in
``sy_ratelimits``; policy writes both, the admin API reads them.
"""

from __future__ import annotations


def team_scope_key(tenant: str, team: str) -> str:
    return f"team.{tenant}.{team}"


def key_scope_key(key_id: str) -> str:
    return f"key.{key_id}"


def tenant_scope_key(tenant: str) -> str:
    return f"tenant.{tenant}"


def scope_label(key: str) -> str:
    """A scope for messages: ``team.<tenant>.<team>`` → ``team acme/ml``, ``key.<id>`` → ``key <id>``,
    ``tenant.<tenant>`` → ``tenant acme``."""
    kind, _, rest = key.partition(".")
    if kind == "team":
        return f"team {rest.replace('.', '/')}"
    return f"tenant {rest}" if kind == "tenant" else f"key {rest}"
