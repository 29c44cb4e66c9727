"""Cost, computed in exactly one place from canonical usage and the price catalog.

What a call cost (``cost_usd``, ``usage_cost_usd``) and what a request is
expected to cost before it runs: the router's estimate for ranking candidates
(``estimate_cost_usd``) and admission's upper bound for the budget reservation
(``estimate_max_cost_usd``). Catalog prices are USD per million tokens; every
function takes anything carrying them (a ``ModelSpec``, or the ``Baseline`` a
routing decision remembers).
"""

from __future__ import annotations

from typing import Protocol

from shared.canonical import Usage

PER_TOKEN = 1e-6  # catalog prices are per million tokens
DIGITS = 10  # a cost is rounded to this many decimals once, where it is reported or reserved


class Prices(Protocol):
    """A model's prices (USD per million tokens), as the catalog and the routing baseline carry them."""

    @property
    def input_per_mtok(self) -> float: ...

    @property
    def output_per_mtok(self) -> float: ...

    @property
    def cached_input_per_mtok(self) -> float | None: ...


class OutputLimited(Prices, Protocol):
    """Prices plus the most output tokens the model produces in one choice."""

    @property
    def max_output_tokens(self) -> int: ...


def usage_cost_usd(prices: Prices, usage: Usage) -> float:
    """What ``usage`` costs at ``prices``, unrounded: cached prompt tokens at the cached price when there is one."""
    cached = min(usage.cached_tokens, usage.prompt_tokens) if prices.cached_input_per_mtok is not None else 0
    fresh = usage.prompt_tokens - cached
    return (
        fresh * prices.input_per_mtok
        + cached * (prices.cached_input_per_mtok or 0.0)
        + usage.completion_tokens * prices.output_per_mtok
    ) * PER_TOKEN


def cost_usd(prices: Prices, usage: Usage) -> float:
    """What ``usage`` of a model costs, as billed: ``usage_cost_usd`` rounded to ``DIGITS`` decimals."""
    return round(usage_cost_usd(prices, usage), DIGITS)


def output_cap(model: OutputLimited, requested: int | None) -> int:
    """The most output tokens one choice can produce on ``model``: the client's cap, held to the model's."""
    return min(requested or model.max_output_tokens, model.max_output_tokens)


def estimate_cost_usd(model: OutputLimited, prompt_tokens: int, output_tokens: int, choices: int = 1) -> float:
    """A request's expected cost on ``model``, unrounded: the prompt plus ``output_tokens`` (held to the model's
    limit) for each of ``choices``. ``output_tokens=0`` prices the prompt alone (an embeddings request)."""
    out = min(output_tokens, model.max_output_tokens) * choices
    return (prompt_tokens * model.input_per_mtok + out * model.output_per_mtok) * PER_TOKEN


def estimate_max_cost_usd(model: OutputLimited, prompt_tokens: int, requested_cap: int | None,
                          choices: int = 1) -> float:
    """Upper bound of a request's cost before it runs: the prompt estimate plus the whole output cap, rounded,
    then the cap again for every further choice."""
    cap = output_cap(model, requested_cap)
    first = round((prompt_tokens * model.input_per_mtok + cap * model.output_per_mtok) * PER_TOKEN, DIGITS)
    return first + (cap * choices - cap) * model.output_per_mtok * PER_TOKEN


def savings_usd(baseline: Prices, usage: Usage, cost: float) -> float:
    """What ``usage`` would have cost at the ``baseline`` prices beyond the ``cost`` it did have (never below 0)."""
    return round(max(0.0, usage_cost_usd(baseline, usage) - cost), DIGITS)
