"""Pricing: what a call cost, what a request is expected to cost, and the savings against a baseline."""

from __future__ import annotations

import pytest

from shared.canonical import Usage
from shared.catalog import ModelSpec
from shared.events import Baseline
from shared.pricing import (
    cost_usd,
    estimate_cost_usd,
    estimate_max_cost_usd,
    output_cap,
    savings_usd,
    usage_cost_usd,
)


def model(inp: float = 2.5, out: float = 10.0, cached: float | None = 1.25, max_out: int = 100) -> ModelSpec:
    return ModelSpec(name="m", input_per_mtok=inp, output_per_mtok=out, cached_input_per_mtok=cached,
                     max_output_tokens=max_out, deployments=[{"provider": "mock"}])


def test_cached_prompt_tokens_are_billed_at_the_cached_price():
    usage = Usage(prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    # 600 fresh × $2.5 + 400 cached × $1.25 + 200 out × $10, per million
    assert cost_usd(model(), usage) == 0.004
    assert usage_cost_usd(model(), usage) == pytest.approx(0.004)


def test_without_a_cached_price_every_prompt_token_is_fresh():
    usage = Usage(prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    assert cost_usd(model(cached=None), usage) == 0.0045


def test_cached_tokens_never_count_beyond_the_prompt():
    usage = Usage(prompt_tokens=100, completion_tokens=0, cached_tokens=5000)
    assert cost_usd(model(), usage) == 0.000125  # all 100 at $1.25, none below zero fresh


def test_cost_is_rounded_to_ten_decimals_only_when_billed():
    usage = Usage(prompt_tokens=1, completion_tokens=0)
    m = model(inp=0.00001)
    assert usage_cost_usd(m, usage) == pytest.approx(1e-11)
    assert cost_usd(m, usage) == 0.0


def test_a_routing_baseline_is_priced_like_the_model_it_stands_for():
    usage = Usage(prompt_tokens=123_456, completion_tokens=7_890, cached_tokens=23_456)
    m = model(inp=3.0, out=15.0, cached=0.3)
    b = Baseline(model="m", input_per_mtok=3.0, output_per_mtok=15.0, cached_input_per_mtok=0.3)
    assert cost_usd(b, usage) == cost_usd(m, usage) == 0.4253868  # 100,000 × $3 + 23,456 × $0.3 + 7,890 × $15


def test_output_cap_is_the_clients_cap_held_to_the_models():
    m = model(max_out=100)
    assert output_cap(m, 40) == 40
    assert output_cap(m, 4000) == 100
    assert output_cap(m, None) == 100
    assert output_cap(m, 0) == 100  # no cap given


def test_estimate_prices_the_prompt_and_the_held_output_estimate_per_choice():
    m = model(inp=1.0, out=2.0, max_out=100)
    assert estimate_cost_usd(m, 1000, 50) == pytest.approx(0.0011)  # 1000 × $1 + 50 × $2
    assert estimate_cost_usd(m, 1000, 500, choices=3) == pytest.approx(0.0016)  # output held to 100, × 3
    assert estimate_cost_usd(m, 0, 0) == 0.0


def test_an_estimate_without_output_is_the_prompt_alone_exactly():
    m = model(inp=0.13, out=60.0)
    assert estimate_cost_usd(m, 12_345, output_tokens=0) == 12_345 * 0.13 * 1e-6


def test_the_upper_bound_takes_the_whole_cap_for_every_choice():
    m = model(inp=1.0, out=2.0, max_out=100)
    assert estimate_max_cost_usd(m, 1000, 40) == 0.00108  # 1000 × $1 + 40 × $2
    assert estimate_max_cost_usd(m, 1000, None) == 0.0012  # no cap: the model's 100
    assert estimate_max_cost_usd(m, 1000, 4000, choices=3) == pytest.approx(0.0016)  # + 2 × 100 × $2


def test_the_upper_bound_for_one_choice_is_rounded_like_a_bill():
    m = model(inp=0.00001, out=0.0, max_out=1)
    assert estimate_max_cost_usd(m, 1, 1) == 0.0


def test_savings_are_what_the_usage_would_have_cost_on_the_baseline_minus_the_actual_cost():
    usage = Usage(prompt_tokens=400, completion_tokens=100)
    dear = Baseline(model="dear", input_per_mtok=5.0, output_per_mtok=15.0)
    assert savings_usd(dear, usage, 0.00006) == 0.00344  # 400 × $5 + 100 × $15 = $0.0035, less $0.00006
    assert savings_usd(dear, usage, 1.0) == 0.0  # never negative
