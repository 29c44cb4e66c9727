"""Routing hints: what a request asks of the router, from its ``switchyard`` object or ``x-switchyard-*`` headers.

Body (the OpenAI SDK's ``extra_body``)::

    "switchyard": {"task": "summarize", "preference": "cheap", "max_cost_usd": 0.01, "max_latency_ms": 2000,
                   "capabilities": ["json"], "allowed_providers": ["openai"], "denied_providers": ["mistral"],
                   "weights": {"cost": 0.5, "quality": 0.5}, "strategy": "bandit"}

Headers (the gateway copies every ``x-switchyard-*`` request header into
``switchyard.headers``; routes may match on them too)::

    x-switchyard-task, x-switchyard-preference, x-switchyard-max-cost-usd, x-switchyard-max-latency-ms,
    x-switchyard-capabilities (comma list), x-switchyard-allowed-providers, x-switchyard-denied-providers,
    x-switchyard-strategy

A value in the body wins over the same hint in a header. A malformed hint is
the client's error (400 naming it), never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from shared.catalog import CAPABILITIES, PREFERENCES
from shared.errors import InvalidRequest

WEIGHT_KEYS = ("cost", "latency", "quality", "availability")
STRATEGIES = ("score", "bandit")
_HEADER_OF = {
    "task": "x-switchyard-task",
    "preference": "x-switchyard-preference",
    "max_cost_usd": "x-switchyard-max-cost-usd",
    "max_latency_ms": "x-switchyard-max-latency-ms",
    "capabilities": "x-switchyard-capabilities",
    "allowed_providers": "x-switchyard-allowed-providers",
    "denied_providers": "x-switchyard-denied-providers",
    "strategy": "x-switchyard-strategy",
}


@dataclass(frozen=True)
class Hints:
    """A request's routing hints, validated."""

    task: str | None = None
    preference: str | None = None
    weights: dict[str, float] | None = None
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    capabilities: frozenset[str] = frozenset()
    allowed_providers: frozenset[str] | None = None
    denied_providers: frozenset[str] = frozenset()
    strategy: str | None = None
    headers: Mapping[str, str] | None = None

    def constraints(self) -> dict[str, Any]:
        """The hard constraints, as the decision records them."""
        out: dict[str, Any] = {}
        if self.max_cost_usd is not None:
            out["max_cost_usd"] = self.max_cost_usd
        if self.max_latency_ms is not None:
            out["max_latency_ms"] = self.max_latency_ms
        if self.capabilities:
            out["capabilities"] = sorted(self.capabilities)
        if self.allowed_providers is not None:
            out["allowed_providers"] = sorted(self.allowed_providers)
        if self.denied_providers:
            out["denied_providers"] = sorted(self.denied_providers)
        return out


def _list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest(f"routing hint {name} must be a list of names", param=f"switchyard.{name}")


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"routing hint {name} must be a number", param=f"switchyard.{name}") from None
    if not number > 0:
        raise InvalidRequest(f"routing hint {name} must be positive", param=f"switchyard.{name}")
    return number


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise InvalidRequest(f"routing hint {name} must be one of {', '.join(allowed)}", param=f"switchyard.{name}")
    return value.strip().lower()


NO_HINTS = Hints(headers={})


def parse_hints(extension: Mapping[str, Any] | None) -> Hints:
    """The hints of one request's ``switchyard`` object (with its copied headers)."""
    if not extension:
        return NO_HINTS
    ext = dict(extension)
    headers = {str(k).lower(): str(v) for k, v in (ext.get("headers") or {}).items()}

    def get(name: str) -> Any:
        if ext.get(name) is not None:
            return ext[name]
        return headers.get(_HEADER_OF[name])

    task = get("task")
    if task is not None and (not isinstance(task, str) or not task.strip() or len(task) > 64):
        raise InvalidRequest("routing hint task must be a short name", param="switchyard.task")
    preference = get("preference")
    weights = ext.get("weights")
    if weights is not None:
        if not isinstance(weights, dict) or set(weights) - set(WEIGHT_KEYS) or not weights:
            raise InvalidRequest(f"routing hint weights takes {', '.join(WEIGHT_KEYS)}", param="switchyard.weights")
        try:
            weights = {k: float(v) for k, v in weights.items()}
        except (TypeError, ValueError):
            raise InvalidRequest("routing hint weights must be numbers", param="switchyard.weights") from None
        if any(v < 0 for v in weights.values()) or not sum(weights.values()) > 0:
            raise InvalidRequest("routing hint weights must be non-negative with a positive sum",
                                 param="switchyard.weights")
    caps = set(_list(get("capabilities"), "capabilities")) if get("capabilities") is not None else set()
    unknown = caps - CAPABILITIES
    if unknown:
        raise InvalidRequest(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}",
                             param="switchyard.capabilities")
    allowed = get("allowed_providers")
    denied = get("denied_providers")
    cost, latency, strategy = get("max_cost_usd"), get("max_latency_ms"), get("strategy")
    return Hints(
        task=task.strip().lower() if isinstance(task, str) else None,
        preference=_choice(preference, "preference", PREFERENCES) if preference is not None else None,
        weights=weights,
        max_cost_usd=_number(cost, "max_cost_usd") if cost is not None else None,
        max_latency_ms=_number(latency, "max_latency_ms") if latency is not None else None,
        capabilities=frozenset(caps),
        allowed_providers=frozenset(_list(allowed, "allowed_providers")) if allowed is not None else None,
        denied_providers=frozenset(_list(denied, "denied_providers")) if denied is not None else frozenset(),
        strategy=_choice(strategy, "strategy", STRATEGIES) if strategy is not None else None,
        headers=headers,
    )
