"""Data classes: the team default may only be raised; providers receive classes up to their ceiling."""

from __future__ import annotations

import pytest

from services.policy.sensitivity import allowed_providers, effective_class
from shared.catalog import CatalogError, ProviderSpec, load_catalog, parse_catalog
from shared.errors import InvalidRequest
from tests.support.catalogs import GOVERNANCE_CATALOG


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    path = tmp_path_factory.mktemp("cat") / "catalog.yaml"
    path.write_text(GOVERNANCE_CATALOG)
    return load_catalog(path)


@pytest.mark.parametrize("default, asked, result", [
    ("internal", [None], "internal"),
    ("internal", ["restricted"], "restricted"),
    ("confidential", ["public"], "confidential"),  # a client cannot lower its team's class
    ("public", ["internal", "confidential"], "confidential"),
    ("internal", [""], "internal"),
])
def test_effective_class_only_rises(default, asked, result):
    assert effective_class(default, *asked) == result


def test_unknown_class_is_a_client_error():
    with pytest.raises(InvalidRequest) as exc:
        effective_class("internal", "top-secret")
    assert exc.value.param == "data_class"


def test_provider_ceilings(catalog):
    # mock-cloud is cleared for internal data only; every other provider may get confidential (mock ones:
    # self-hosted, everything), so nothing is excluded below confidential except by narrowing.
    assert allowed_providers(catalog, "internal") is None
    conf = allowed_providers(catalog, "confidential")
    assert "mock-cloud" not in conf and "mock" in conf and "openai" in conf
    restricted = allowed_providers(catalog, "restricted")
    assert set(restricted) == {"mock", "mock-flaky", "mock-slow"}  # self-hosted (in-process) only
    assert allowed_providers(catalog, "public", ["mock", "openai"], None) == ["mock", "openai"]
    assert allowed_providers(catalog, "restricted", ["mock-cloud"]) == []


def test_ceiling_defaults():
    assert ProviderSpec(name="x", type="openai").data_class_ceiling == "confidential"
    assert ProviderSpec(name="x", type="openai", self_hosted=True).data_class_ceiling == "restricted"
    assert ProviderSpec(name="x", type="mock", max_data_class="public").data_class_ceiling == "public"


def test_a_bad_ceiling_is_refused_with_its_line():
    with pytest.raises(CatalogError) as exc:
        parse_catalog("providers:\n  - name: p\n    type: openai\n    max_data_class: secret\n", "ops.yaml")
    assert "ops.yaml:4" in str(exc.value) and "max_data_class" in str(exc.value)
