"""Load balancing across the deployments of one model.

``p2c`` (default): power of two choices. Two distinct deployments are drawn
with probability proportional to their catalog ``weight`` (draws seeded by
the request id); the second goes first only when its load ``(in_flight + 1)
× latency`` is clearly lower (by ``P2C_MARGIN``), so near-equal deployments
share the traffic by weight instead of flapping on measurement noise.
Comparing just two keeps a stale load picture (shared every
``flush_interval_s``) from sending everyone to the same "least loaded" one.

``least_in_flight``: the fewest calls in flight per unit of weight; a tie is
broken by a weighted draw.

``weighted``: a weighted draw picks the first; the rest follow by weight.

Whatever goes first, the others follow in order of load, so fallbacks within
the model also prefer the less loaded. Every draw is returned for the trace.
"""

from __future__ import annotations

from typing import Sequence

from services.router import draws
from services.router.scoring import Candidate


P2C_MARGIN = 0.1


def _weighted_index(weights: Sequence[float], u: float) -> int:
    total = sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w / total
        if u < acc:
            return i
    return len(weights) - 1


def load(c: Candidate) -> float:
    return (c.in_flight + 1) * max(c.latency_ms, 0.001)


def order(cands: list[Candidate], strategy: str, key: str, purpose: str) -> tuple[list[Candidate], dict[str, float]]:
    """Order one model's eligible deployments; returns them and the draws made (keyed for the trace)."""
    if len(cands) <= 1:
        return list(cands), {}
    pool = sorted(cands, key=lambda c: c.target.deployment)  # a fixed starting order, whatever came in
    rest_by_load = lambda chosen: sorted((c for c in pool if c is not chosen),  # noqa: E731
                                         key=lambda c: (load(c), -c.weight, c.target.deployment))
    made: dict[str, float] = {}
    if strategy == "weighted":
        u = made[f"{purpose}.weighted"] = draws.uniform(key, f"{purpose}.weighted")
        first = pool[_weighted_index([c.weight for c in pool], u)]
        rest = sorted((c for c in pool if c is not first), key=lambda c: (-c.weight, c.target.deployment))
        return [first, *rest], made
    if strategy == "least_in_flight":
        per_weight = [c.in_flight / c.weight for c in pool]
        best = min(per_weight)
        tied = [c for c, v in zip(pool, per_weight) if v == best]
        if len(tied) > 1:
            u = made[f"{purpose}.tie"] = draws.uniform(key, f"{purpose}.tie")
            first = tied[_weighted_index([c.weight for c in tied], u)]
        else:
            first = tied[0]
        rest = sorted((c for c in pool if c is not first), key=lambda c: (c.in_flight / c.weight, load(c),
                                                                           c.target.deployment))
        return [first, *rest], made
    # p2c
    u1 = made[f"{purpose}.p2c.1"] = draws.uniform(key, f"{purpose}.p2c.1")
    u2 = made[f"{purpose}.p2c.2"] = draws.uniform(key, f"{purpose}.p2c.2")
    a = pool[_weighted_index([c.weight for c in pool], u1)]
    others = [c for c in pool if c is not a]
    b = others[_weighted_index([c.weight for c in others], u2)]
    first = b if load(b) < load(a) * (1 - P2C_MARGIN) else a
    return [first, *rest_by_load(first)], made
