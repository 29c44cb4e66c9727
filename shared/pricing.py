"""Cost, computed in exactly one place from canonical usage and the price catalog."""

from __future__ import annotations

from shared.canonical import Usage
from shared.catalog import ModelSpec

PER_TOKEN = 1e-6  # catalog prices are per million tokens


def cost_usd(model: ModelSpec, usage: Usage) -> float:
    """What ``usage`` of ``model`` costs: cached prompt tokens at the cached price when the model has one."""
    cached = min(usage.cached_tokens, usage.prompt_tokens) if model.cached_input_per_mtok is not None else 0
    fresh = usage.prompt_tokens - cached
    total = (
        fresh * model.input_per_mtok
        + cached * (model.cached_input_per_mtok or 0.0)
        + usage.completion_tokens * model.output_per_mtok
    ) * PER_TOKEN
    return round(total, 10)


def estimate_max_cost_usd(model: ModelSpec, prompt_tokens: int, output_cap: int | None) -> float:
    """Upper bound of a request's cost before it runs: prompt estimate plus the whole output cap."""
    cap = min(output_cap or model.max_output_tokens, model.max_output_tokens)
    return round((prompt_tokens * model.input_per_mtok + cap * model.output_per_mtok) * PER_TOKEN, 10)
