"""The catalog: validation errors name the entry and line; merging; look-ups."""

from __future__ import annotations

import pytest

from shared.canonical import Usage
from shared.catalog import CatalogError, load_catalog, parse_catalog
from shared.pricing import cost_usd, estimate_max_cost_usd

GOOD = """
extends_builtin: false
providers:
  - {name: p1, type: mock}
  - {name: keyed, type: openai, api_key_env: SOME_KEY}
models:
  - name: m1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    cached_input_per_mtok: 0.5
    deployments: [{provider: p1}, {provider: keyed, upstream_model: m1-up}]
aliases:
  fast: [m1]
"""


def test_valid_document_and_lookups():
    from shared.catalog import Catalog

    cat = Catalog(parse_catalog(GOOD), env={})
    assert [t.deployment for t in cat.targets("m1")] == ["p1/m1"]  # keyed provider has no key
    cat = Catalog(parse_catalog(GOOD), env={"SOME_KEY": "x"})
    assert [(t.provider, t.upstream_model) for t in cat.targets("fast")] == [("p1", "m1"), ("keyed", "m1-up")]
    assert cat.model_for("fast").name == "m1"
    assert cat.knows("fast") and not cat.knows("nope")


def test_errors_name_entry_and_line():
    bad = GOOD.replace("input_per_mtok: 1.0", "input_per_mtok: -1").replace("{name: p1,", "{name: P 1,")
    with pytest.raises(CatalogError) as exc:
        parse_catalog(bad, "ops.yaml")
    text = str(exc.value)
    assert "ops.yaml:4: providers[0] 'P 1'.name" in text
    assert "ops.yaml:8: models[0] 'm1'.input_per_mtok" in text


def test_unknown_references_and_yaml_syntax():
    with pytest.raises(CatalogError, match="unknown provider 'ghost'"):
        parse_catalog(GOOD.replace("{provider: p1}", "{provider: ghost}"))
    with pytest.raises(CatalogError, match="alias 'fast' points at unknown model 'zzz'"):
        parse_catalog(GOOD.replace("fast: [m1]", "fast: [zzz]"))
    with pytest.raises(CatalogError, match=r"x.yaml:\d+: not valid YAML"):
        parse_catalog("providers: [\n  - {name: a", "x.yaml")
    with pytest.raises(CatalogError, match="unknown capabilities"):
        parse_catalog(GOOD.replace("cached_input_per_mtok: 0.5", "capabilities: [telepathy]"))


def test_operator_file_merges_over_builtin(tmp_path):
    p = tmp_path / "ops.yaml"
    p.write_text("models:\n  - {name: mock-1, input_per_mtok: 9, output_per_mtok: 9, deployments: [{provider: mock}]}\n"
                 "aliases:\n  cheap: [mock-1]\n")
    cat = load_catalog(p)
    assert cat.models["mock-1"].input_per_mtok == 9
    assert "gpt-4o" in cat.models  # built-in entries stay
    assert cat.targets("cheap")[0].provider == "mock"


def test_cost_is_computed_from_usage_and_prices():
    from shared.catalog import Catalog

    m = Catalog(parse_catalog(GOOD)).models["m1"]
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=200_000)
    # 800k fresh × $1 + 200k cached × $0.5 + 500k out × $2
    assert cost_usd(m, usage) == pytest.approx(0.8 + 0.1 + 1.0)
    assert estimate_max_cost_usd(m, 1000, 100) == pytest.approx((1000 * 1.0 + 100 * 2.0) / 1e6)

