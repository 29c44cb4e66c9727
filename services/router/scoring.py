"""Candidate scoring: hard constraints exclude with a reason, the rest get an explainable weighted score.

For every candidate deployment the router estimates

- cost: prompt tokens and the output cap (or ``default_output_tokens``) at
  the model's prices (``shared.pricing``), times ``n``;
- latency: the live estimate from observed calls, shrunk towards a prior:
  the latency observed on the model's other deployments, else the catalog's
  ``latency_prior_ms`` (``HealthView.latency_estimate``);
- quality: the model's catalog score for the task (``quality[task]``, else
  ``quality.default``, else 0.5);
- availability: ``1 - error rate`` in the breaker's window, halved while the
  breaker is half-open (probing).

Each measure becomes a component in [0, 1] among the eligible candidates
(higher is better): cost and latency on a log scale between the best and
worst candidate (prices and latencies span orders of magnitude), quality
linearly between the lowest and highest, availability as is. The score is
the weighted sum; the weights come from the preference:

    preference   cost   latency   quality   availability
    balanced     0.30   0.20      0.35      0.15
    cheap        0.60   0.10      0.15      0.15
    fast         0.10   0.60      0.15      0.15
    best         0.05   0.10      0.70      0.15

(or from the request's own ``weights``, normalised to sum to 1). Ties go to
the cheaper, then the faster, then the alphabetically first deployment, so
the order is total and deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from shared.canonical import ChatRequest
from shared.catalog import ModelSpec
from shared.events import CandidateView, Target
from shared.pricing import estimate_cost_usd
from shared.state.breakers import HALF_OPEN
from shared.state.health import HealthView


@dataclass(frozen=True)
class Weights:
    """How much each component counts."""

    cost: float
    latency: float
    quality: float
    availability: float

    def normalised(self) -> "Weights":
        total = self.cost + self.latency + self.quality + self.availability
        return Weights(*(round(v / total, 6) for v in (self.cost, self.latency, self.quality, self.availability)))

    def as_dict(self) -> dict[str, float]:
        return {"cost": self.cost, "latency": self.latency, "quality": self.quality,
                "availability": self.availability}


PREFERENCE_WEIGHTS: dict[str, Weights] = {
    "balanced": Weights(cost=0.30, latency=0.20, quality=0.35, availability=0.15),
    "cheap": Weights(cost=0.60, latency=0.10, quality=0.15, availability=0.15),
    "fast": Weights(cost=0.10, latency=0.60, quality=0.15, availability=0.15),
    "best": Weights(cost=0.05, latency=0.10, quality=0.70, availability=0.15),
}


def weights_for(preference: str, custom: dict[str, float] | None = None) -> Weights:
    """The preference's weights, or the request's own (missing components count 0)."""
    if custom:
        return Weights(**{k: custom.get(k, 0.0) for k in ("cost", "latency", "quality", "availability")}).normalised()
    return PREFERENCE_WEIGHTS[preference]


@dataclass(frozen=True)
class Need:
    """What a request needs from a candidate: the hard constraints and the inputs of the estimates."""

    prompt_tokens: int
    output_tokens: int  # for the cost estimate: the cap, else the default, per choice
    output_cap: int | None = None  # the client's own cap (it must fit the context window with the prompt)
    choices: int = 1
    capabilities: frozenset[str] = frozenset()
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    allowed_providers: frozenset[str] | None = None  # the request's own hint
    denied_providers: frozenset[str] = frozenset()
    policy_providers: frozenset[str] | None = None  # policy's constraint (data class, key, team)
    policy_models: frozenset[str] | None = None
    task: str | None = None


@dataclass
class Candidate:
    """One deployment under consideration, with its estimates, exclusion or scores."""

    target: Target
    model: ModelSpec
    est_cost_usd: float
    latency_ms: float
    latency_source: str
    quality: float
    error_rate: float
    breaker: str
    in_flight: int
    weight: float = 1.0
    excluded: str | None = None
    detail: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    sampled: dict[str, float] | None = None
    rank: int | None = None

    @property
    def eligible(self) -> bool:
        return self.excluded is None

    def exclude(self, reason: str, detail: str) -> None:
        if self.excluded is None:
            self.excluded, self.detail = reason, detail

    def view(self) -> CandidateView:
        t = self.target
        return CandidateView(
            deployment=t.deployment, provider=t.provider, model=t.model, excluded=self.excluded, detail=self.detail,
            rank=self.rank, score=self.score, scores=self.scores, est_cost_usd=round(self.est_cost_usd, 10),
            latency_ms=round(self.latency_ms, 3), latency_source=self.latency_source, quality=self.quality,
            error_rate=round(self.error_rate, 4), breaker=self.breaker, in_flight=self.in_flight,
            sampled=self.sampled)


def required_capabilities(request: ChatRequest, api: str, stream: bool) -> frozenset[str]:
    """What the request's shape needs: tools, JSON mode, images, streaming, embeddings."""
    if api == "embeddings":
        return frozenset({"embeddings"})
    caps = set()
    if request.tools:
        caps.add("tools")
    if (request.response_format or {}).get("type") in ("json_object", "json_schema"):
        caps.add("json")
    if stream:
        caps.add("streaming")
    for m in request.messages:
        if isinstance(m.content, list) and any(p.type == "image_url" or p.image_url for p in m.content):
            caps.add("vision")
            break
    return frozenset(caps)


def model_latency_prior(targets: Iterable[Target], model: ModelSpec, view: HealthView, now: float) -> float:
    """The latency a deployment of ``model`` is expected to have: what its observed siblings show, else the
    catalog's prior. (A deployment never tried is not penalised against a sibling whose speed is known.)"""
    weight = total = 0.0
    for t in targets:
        s = view.stats(t.deployment, now)
        if s.latency_ms is not None and s.samples:
            w = min(s.samples, 50)
            weight += w
            total += w * s.latency_ms
    return total / weight if weight else model.latency_prior_ms


def assess(target: Target, model: ModelSpec, need: Need, view: HealthView, now: float,
           weight: float = 1.0, api: str = "chat.completions", prior_ms: float | None = None) -> Candidate:
    """Estimate one candidate and apply every hard constraint (the first violated one is the reason)."""
    stats = view.stats(target.deployment, now)
    prior = model.latency_prior_ms if prior_ms is None else prior_ms
    latency, source = view.latency_estimate(target.deployment, prior, now, stats)
    cost = estimate_cost_usd(model, need.prompt_tokens, need.output_tokens, need.choices)
    c = Candidate(target=target, model=model, est_cost_usd=cost, latency_ms=latency, latency_source=source,
                  quality=model.quality_for(need.task), error_rate=stats.error_rate,
                  breaker=view.state(target.deployment, now), in_flight=stats.in_flight, weight=weight)
    p = target.provider
    if need.policy_providers is not None and p not in need.policy_providers:
        c.exclude("policy", f"policy does not allow provider {p} for this request (data class or key)")
    if need.policy_models is not None and model.name not in need.policy_models:
        c.exclude("policy", f"this key may not use {model.name}")
    if need.allowed_providers is not None and p not in need.allowed_providers:
        c.exclude("provider_not_allowed", f"{p} is not among the allowed providers")
    if p in need.denied_providers:
        c.exclude("provider_denied", f"{p} is denied by the request")
    missing = need.capabilities - model.capabilities
    if missing:
        c.exclude("capability", f"{model.name} lacks {', '.join(sorted(missing))}")
    elif api != "embeddings" and "embeddings" in model.capabilities and len(model.capabilities) == 1:
        c.exclude("capability", f"{model.name} only makes embeddings")
    room = min(need.output_cap, model.max_output_tokens) if need.output_cap else 1
    if need.prompt_tokens + room > model.context_window:
        c.exclude("context_window", f"the prompt (~{need.prompt_tokens} tokens) and {room} output tokens do not "
                                    f"fit {model.name}'s {model.context_window}-token context window")
    if need.max_cost_usd is not None and c.est_cost_usd > need.max_cost_usd:
        c.exclude("max_cost", f"estimated ${c.est_cost_usd:.6f} is over max_cost_usd ${need.max_cost_usd:g}")
    if need.max_latency_ms is not None and latency > need.max_latency_ms:
        c.exclude("max_latency", f"expected {latency:.0f} ms is over max_latency_ms {need.max_latency_ms:g}")
    admitted, why = view.admits(target.deployment, now)
    if not admitted:
        wait = view.open_for(target.deployment, now)
        c.exclude(why or "circuit_open", f"breaker {c.breaker}" + (f" for {wait:.1f}s more" if wait else ""))
    return c


def _log_spread(values: list[float], v: float) -> float:
    """1 for the smallest value, 0 for the largest, log-scaled in between."""
    lo, hi = min(values), max(values)
    if hi <= lo * (1 + 1e-9):
        return 1.0
    lo, hi, v = (math.log(max(x, 1e-12)) for x in (lo, hi, v))
    return (hi - v) / (hi - lo)


def _lin_spread(values: list[float], v: float) -> float:
    """1 for the largest value, 0 for the smallest."""
    lo, hi = min(values), max(values)
    return 1.0 if hi - lo < 1e-12 else (v - lo) / (hi - lo)


def availability(error_rate: float, breaker: str) -> float:
    return round((1.0 - error_rate) * (0.5 if breaker == HALF_OPEN else 1.0), 6)


def score(candidates: Iterable[Candidate], weights: Weights, *, cost_of=None, latency_of=None,
          availability_of=None) -> None:
    """Fill ``scores`` and ``score`` of the eligible candidates (measures may be replaced, as the bandit does)."""
    eligible = [c for c in candidates if c.eligible]
    if not eligible:
        return
    cost_of = cost_of or (lambda c: c.est_cost_usd)
    latency_of = latency_of or (lambda c: c.latency_ms)
    availability_of = availability_of or (lambda c: availability(c.error_rate, c.breaker))
    costs = [cost_of(c) for c in eligible]
    latencies = [latency_of(c) for c in eligible]
    qualities = [c.quality for c in eligible]
    for c in eligible:
        parts = {
            "cost": round(_log_spread(costs, cost_of(c)), 6),
            "latency": round(_log_spread(latencies, latency_of(c)), 6),
            "quality": round(_lin_spread(qualities, c.quality), 6),
            "availability": round(availability_of(c), 6),
        }
        c.scores = parts
        c.score = round(weights.cost * parts["cost"] + weights.latency * parts["latency"]
                        + weights.quality * parts["quality"] + weights.availability * parts["availability"], 6)


def order_key(c: Candidate) -> tuple:
    """Best first: higher score, then cheaper, faster, and the name as the last word."""
    return (-(c.score or 0.0), c.est_cost_usd, c.latency_ms, c.target.deployment)
