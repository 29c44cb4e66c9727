"""The adaptive strategy (opt-in): Thompson sampling over what each deployment achieved for this task.

For each eligible candidate the bandit draws, from a generator seeded by the
request id (so the choice is reproducible and recorded):

- a success probability ``p ~ Beta(1 + ok, 1 + failed)`` from the calls made
  for this task (``TaskStats`` shared through KV by the workers);
- a latency: the observed mean for the task (else the candidate's estimate)
  times ``exp(N(0, 1/sqrt(ok + 1)))``, wide while little is known;
- a cost: the observed mean cost per call for the task (actual tokens, not
  the estimate) times ``exp(N(0, 0.5/sqrt(n + 1)))``.

The sampled latency and cost replace the estimates in the usual weighted
score without its availability part (quality stays the catalog's), and that
score is multiplied by the sampled ``p``: the expected value of a call that
only pays off when it succeeds. Candidates are ranked by the product. Open
breakers are excluded before sampling, so the bandit never picks a deployment
that would refuse the call.
"""

from __future__ import annotations

import math

from services.router import draws
from services.router.scoring import Candidate, Weights, score
from shared.state.health import HealthView


def sample(cands: list[Candidate], weights: Weights, view: HealthView, task: str, key: str) -> dict[str, float]:
    """Score the eligible candidates on sampled measures; returns the seed-derived draws (for the trace)."""
    eligible = sorted((c for c in cands if c.eligible), key=lambda c: c.target.deployment)
    made: dict[str, float] = {}
    sampled: dict[str, tuple[float, float, float]] = {}
    for c in eligible:
        dep = c.target.deployment
        gen = draws.rng(key, f"bandit.{dep}")
        stats = view.task_stats(task, dep)
        n = stats.n if stats else 0.0
        ok = stats.ok if stats else 0.0
        p = gen.betavariate(1.0 + ok, 1.0 + max(0.0, n - ok))
        mean_latency = stats.latency_ms / ok if stats and ok else c.latency_ms
        latency = mean_latency * math.exp(gen.gauss(0.0, 1.0 / math.sqrt(ok + 1.0)))
        mean_cost = stats.cost_usd / n if stats and n and stats.cost_usd > 0 else c.est_cost_usd
        cost = mean_cost * math.exp(gen.gauss(0.0, 0.5 / math.sqrt(n + 1.0)))
        sampled[dep] = (p, latency, cost)
        c.sampled = {"p_success": round(p, 6), "latency_ms": round(latency, 3), "cost_usd": round(cost, 10),
                     "n": round(n, 3), "ok": round(ok, 3)}
        made[f"bandit.{dep}.p"] = round(p, 6)
    value = Weights(cost=weights.cost, latency=weights.latency, quality=weights.quality, availability=0.0)
    if value.cost + value.latency + value.quality <= 0:
        value = Weights(cost=0.0, latency=0.0, quality=1.0, availability=0.0)
    score(eligible, value.normalised(), cost_of=lambda c: sampled[c.target.deployment][2],
          latency_of=lambda c: sampled[c.target.deployment][1])
    for c in eligible:
        p = sampled[c.target.deployment][0]
        c.scores = {**c.scores, "availability": round(p, 6)}
        c.score = round((c.score or 0.0) * p, 6)
    return made
