"""Bootstrap: keys from configuration become key-store entries with every attribute an admin-made key has."""

from __future__ import annotations

import msgspec
import pytest


def test_configured_keys_carry_their_attributes():
    """A key from SWITCHYARD_API_KEYS gets the same attributes as one made through the admin API."""
    from services.bootstrap import build_keyring
    from services.settings import ApiKeyConfig, Settings

    settings = Settings(admin_key="sk-admin", api_keys={"sk-limited": ApiKeyConfig(
        tenant="acme", team="ml", role="viewer", expires_at=2e9, allowed_models=["mock-1"],
        limits={"rpm": 10, "daily_usd": 1.5})})
    store, generated = build_keyring(settings)
    assert generated is None
    [entry] = [e for e in store._seed if e.key == "sk-limited"]
    assert (entry.tenant, entry.team, entry.role, entry.expires_at) == ("acme", "ml", "viewer", 2e9)
    assert entry.allowed_models == ["mock-1"] and entry.limits.rpm == 10 and entry.limits.daily_usd == 1.5
    bad = Settings(admin_key="sk-admin", api_keys={"sk-x": ApiKeyConfig(limits={"rpm": 0})})
    with pytest.raises(msgspec.ValidationError):
        build_keyring(bad)
