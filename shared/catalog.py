"""The routing catalog: providers, models (with prices), deployments, aliases and routes.

One YAML document, validated with pydantic. A bad document is refused with
messages that name the offending entry and its line; the built-in catalog
(``shared/catalog.yaml``) is the base an operator's file overrides or extends
by name.

Besides concrete models and aliases, a request may name ``auto`` (or
``auto:fast`` / ``auto:cheap`` / ``auto:best`` / ``auto:balanced``): the
router then scores every chat model. A route's ``match.model`` may also name
a virtual model that only routes resolve. For admission such names stand for
the whole set of models they may reach (``targets``), and ``model_for``
gives a conservative stand-in (largest context and output, highest prices).
"""

from __future__ import annotations

import os
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from shared.errors import NotFound
from shared.events import Target
from shared.ids import SAFE_NAME, check_catalog_id

CAPABILITIES = frozenset({"tools", "json", "vision", "streaming", "embeddings"})
# Sensitivity classes, least to most sensitive; a provider receives a class up to its ceiling.
DATA_CLASSES = ("public", "internal", "confidential", "restricted")
DataClass = Literal["public", "internal", "confidential", "restricted"]
AUTO = "auto"
PREFERENCES = ("balanced", "cheap", "fast", "best")
Preference = Literal["balanced", "cheap", "fast", "best"]
AUTO_NAMES = (AUTO, *(f"{AUTO}:{p}" for p in PREFERENCES))


def is_auto(name: str) -> bool:
    """``auto`` and ``auto:<preference>``."""
    return name in AUTO_NAMES


def auto_preference(name: str) -> str | None:
    """The preference an ``auto:<preference>`` name carries (None for plain ``auto`` or any other name)."""
    return name.split(":", 1)[1] if is_auto(name) and ":" in name else None


class CatalogError(ValueError):
    """The catalog document is invalid; ``problems`` lists every problem with its line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid catalog:\n  " + "\n  ".join(problems))
        self.problems = problems


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerSpec(_Spec):
    """Circuit-breaker settings for one provider's deployments; unset fields keep the router's defaults."""

    enabled: bool | None = None
    failure_rate_threshold: float | None = Field(None, gt=0, le=1)
    minimum_calls: int | None = Field(None, ge=1)
    window_size: int | None = Field(None, ge=1)
    window_age_s: float | None = Field(None, gt=0)
    open_wait_s: float | None = Field(None, gt=0)
    half_open_probes: int | None = Field(None, ge=1)
    half_open_timeout_s: float | None = Field(None, gt=0)
    auth_open_wait_s: float | None = Field(None, gt=0)
    count_rate_limited: bool | None = None

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ProviderSpec(_Spec):
    """A provider endpoint and how to authenticate against it."""

    name: str
    type: str = Field(description="adapter: mock, openai, ...")
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    api_key: SecretStr | None = Field(None, description="inline key (prefer api_key_env)")
    timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    max_in_flight: int = Field(256, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    self_hosted: bool = Field(False, description="runs on infrastructure the operator controls")
    max_data_class: DataClass | None = Field(
        None, description="the most sensitive data class this provider may receive (default: restricted when "
                          "self-hosted, confidential otherwise)")
    breaker: BreakerSpec | None = Field(None, description="circuit-breaker overrides for this provider")
    fault_injection: bool = Field(
        False, description="honour a request's ``switchyard.mock`` faults (latency, status, cut streams) on this "
                           "provider (a mock); off, such a request is refused (400): a fault a client injects "
                           "feeds the breaker every tenant shares")

    @property
    def data_class_ceiling(self) -> str:
        """The most sensitive class this provider may receive; the in-process mock counts as self-hosted."""
        if self.max_data_class is not None:
            return self.max_data_class
        return "restricted" if self.self_hosted or self.type == "mock" else "confidential"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not SAFE_NAME.match(v):
            raise ValueError("must be lowercase letters, digits, '-' or '_' (it becomes a NATS subject token)")
        return v

    def credential(self, env: Mapping[str, str] | None = None) -> str | None:
        """The provider's API key, resolved in one place."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return (os.environ if env is None else env).get(self.api_key_env) or None
        return None

    def configured(self, env: Mapping[str, str] | None = None) -> bool:
        """A provider that needs a key is usable only when the key is present."""
        return self.api_key_env is None and self.api_key is None or self.credential(env) is not None


class DeploymentSpec(_Spec):
    """One place a model is served."""

    provider: str
    id: str | None = None
    upstream_model: str | None = Field(None, description="the provider's name for the model (defaults to the model name)")
    weight: float = Field(1.0, gt=0)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str | None) -> str | None:
        return v if v is None else check_catalog_id(v, "deployment ids")


class ModelSpec(_Spec):
    """A model clients can ask for, its prices (USD per million tokens) and where it runs."""

    name: str
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0)
    context_window: int = Field(128_000, ge=1)
    max_output_tokens: int = Field(4096, ge=1)
    capabilities: frozenset[str] = frozenset({"streaming"})
    quality: dict[str, float] = Field(default_factory=dict)
    latency_prior_ms: float = Field(1000.0, gt=0)
    deployments: list[DeploymentSpec] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _safe_model(cls, v: str) -> str:
        return check_catalog_id(v, "model names")

    @field_validator("capabilities")
    @classmethod
    def _known_caps(cls, v: frozenset[str]) -> frozenset[str]:
        unknown = set(v) - CAPABILITIES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        return v

    @field_validator("quality")
    @classmethod
    def _quality_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: q for k, q in v.items() if not 0 <= q <= 1}
        if bad:
            raise ValueError(f"quality scores are between 0 and 1 (got {bad})")
        return v

    def quality_for(self, task: str | None) -> float:
        """The model's quality score for ``task``: its own, else its ``default``, else 0.5."""
        if task is not None and task in self.quality:
            return self.quality[task]
        return self.quality.get("default", 0.5)


class RouteMatch(_Spec):
    """Which requests a route applies to; every given field must match (lists: any of)."""

    model: list[str] = Field(default_factory=lambda: [AUTO], description="requested names (auto covers auto:*)")
    team: list[str] | None = None
    task: list[str] | None = None
    api: list[str] | None = None
    metadata: dict[str, str] = Field(default_factory=dict, description="request metadata key: value")
    headers: dict[str, str] = Field(default_factory=dict, description="x-switchyard-* request headers")


class RouteVariant(_Spec):
    """One arm of a weighted split (A/B test, canary)."""

    name: str | None = None
    weight: float = Field(gt=0)
    models: list[str] = Field(default_factory=list, description="fallback chain; empty: score every candidate")
    preference: Preference | None = None


class RouteSpec(_Spec):
    """A declarative routing rule: which requests, where they go, in which order, and how traffic splits."""

    name: str
    match: RouteMatch = Field(default_factory=RouteMatch)
    models: list[str] = Field(default_factory=list, description="fallback chain; empty: score every candidate")
    split: list[RouteVariant] = Field(default_factory=list)
    preference: Preference | None = None
    strategy: Literal["score", "bandit"] | None = None
    fallback: list[str] = Field(default_factory=list, description="tried after the chain, in order")
    last_resort: str | None = Field(None, description="model tried when everything else failed (degraded)")
    sticky: str = Field("request", description="what seeds the split: request, user, team or metadata.<key>")

    @field_validator("sticky")
    @classmethod
    def _sticky(cls, v: str) -> str:
        if v not in ("request", "user", "team") and not v.startswith("metadata."):
            raise ValueError("sticky is request, user, team or metadata.<key>")
        return v

    def model_names(self) -> list[str]:
        """Every model this route may send a request to."""
        names = [*self.models, *(m for v in self.split for m in v.models), *self.fallback]
        if self.last_resort:
            names.append(self.last_resort)
        return list(dict.fromkeys(names))


class CatalogDoc(_Spec):
    """The whole catalog document."""

    version: int = 1
    extends_builtin: bool = Field(True, description="merge over the built-in catalog by name")
    providers: list[ProviderSpec] = Field(default_factory=list)
    models: list[ModelSpec] = Field(default_factory=list)
    aliases: dict[str, list[str]] = Field(default_factory=dict)
    routes: list[RouteSpec] = Field(default_factory=list, description="declarative routing rules, first match wins")
    last_resort: str | None = Field(None, description="model tried when every candidate failed (degraded answer)")

    @model_validator(mode="after")
    def _references(self) -> "CatalogDoc":
        if self.extends_builtin:
            return self  # references are checked once merged over the built-in catalog
        providers = {p.name for p in self.providers}
        models = {m.name for m in self.models}
        problems = []
        for m in self.models:
            for d in m.deployments:
                if d.provider not in providers:
                    problems.append(f"model {m.name!r} has a deployment on unknown provider {d.provider!r}")
        for alias, targets in self.aliases.items():
            if alias in models:
                problems.append(f"alias {alias!r} shadows a model of the same name")
            if is_auto(alias):
                problems.append(f"alias {alias!r} is reserved for automatic routing")
            for t in targets:
                if t not in models:
                    problems.append(f"alias {alias!r} points at unknown model {t!r}")
        if self.last_resort is not None and self.last_resort not in models:
            problems.append(f"last_resort points at unknown model {self.last_resort!r}")
        seen: set[str] = set()
        for r in self.routes:
            if r.name in seen:
                problems.append(f"route {r.name!r} is declared twice")
            seen.add(r.name)
            for t in r.model_names():
                if t not in models:
                    problems.append(f"route {r.name!r} points at unknown model {t!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Catalog:
    """A validated catalog with the look-ups services need."""

    def __init__(self, doc: CatalogDoc, env: Mapping[str, str] | None = None) -> None:
        self.doc = doc
        self._env = env
        self.providers = {p.name: p for p in doc.providers}
        self.models = {m.name: m for m in doc.models}
        self.aliases = dict(doc.aliases)
        self.routes = list(doc.routes)
        self._stand_ins: dict[tuple[str, ...], ModelSpec | None] = {}
        self.last_resort = doc.last_resort
        # Names only routes resolve (a route's match.model that is not a model, an alias or auto).
        self.virtual = {n: [r for r in doc.routes if n in r.match.model]
                        for r in doc.routes for n in r.match.model
                        if n not in self.models and n not in self.aliases and not is_auto(n)}

    @cached_property
    def _targets(self) -> dict[str, list[Target]]:
        out: dict[str, list[Target]] = {}
        for m in self.doc.models:
            out[m.name] = [
                Target(
                    deployment=d.id or f"{d.provider}/{d.upstream_model or m.name}",
                    provider=d.provider,
                    model=m.name,
                    upstream_model=d.upstream_model or m.name,
                )
                for d in m.deployments
                if self.providers[d.provider].configured(self._env)
            ]
        return out

    def knows(self, name: str) -> bool:
        return name in self.models or name in self.aliases or is_auto(name) or name in self.virtual

    def names_for(self, name: str) -> list[str]:
        """The models a requested name may reach, in declared order (``auto``: every model)."""
        if is_auto(name):
            return list(self.models)
        if name in self.virtual:
            routes = self.virtual[name]
            if any(not (r.models or any(v.models for v in r.split)) for r in routes):
                return list(self.models)  # a scoring route may pick any model
            return list(dict.fromkeys(m for r in routes for m in r.model_names()))
        return self.aliases.get(name, [name])

    def targets(self, name: str) -> list[Target]:
        """Ordered candidate deployments for a model or alias (only those whose provider is configured)."""
        return [t for n in self.names_for(name) for t in self._targets.get(n, [])]

    def deployments_of(self, model: str) -> list[Target]:
        """The usable deployments of one model, in declared order."""
        return list(self._targets.get(model, []))

    @cached_property
    def _deployment_specs(self) -> dict[str, DeploymentSpec]:
        return {d.id or f"{d.provider}/{d.upstream_model or m.name}": d for m in self.doc.models for d in m.deployments}

    def deployment_spec(self, target: Target) -> DeploymentSpec | None:
        """The catalog entry behind a target (for its weight)."""
        return self._deployment_specs.get(target.deployment)

    def available_models(self) -> list[str]:
        """Models and aliases that have at least one usable deployment (and ``auto`` when any model does)."""
        names = [m for m, ts in self._targets.items() if ts]
        names += [a for a in self.aliases if self.targets(a)]
        if names:
            names += list(AUTO_NAMES)
        names += [v for v in self.virtual if self.targets(v)]
        return names

    def check_servable(self, name: str) -> ModelSpec:
        """The model behind ``name``; the 404 (``model_not_found``) when no configured deployment can serve it."""
        model = self.model_for(name)
        if model is None or not self.targets(name):
            raise NotFound(f"The model '{name}' does not exist or is not available on this gateway.",
                           param="model", code="model_not_found")
        return model

    def model_for(self, name: str) -> ModelSpec | None:
        """The model a name means (an alias means its first model; ``auto`` and virtual names a stand-in)."""
        if name in self.models:
            return self.models[name]
        first = self.aliases.get(name)
        if first:
            return self.models[first[0]]
        if is_auto(name) or name in self.virtual:
            names = tuple(dict.fromkeys(t.model for t in self.targets(name)))
            if names not in self._stand_ins:
                self._stand_ins[names] = self._stand_in(names)
            return self._stand_ins[names]
        return None

    def _stand_in(self, names: tuple[str, ...]) -> ModelSpec | None:
        """A conservative model for admission checks of a name that may reach several models."""
        models = [self.models[n] for n in names]
        if not models:
            return None
        return ModelSpec(
            name=AUTO,
            input_per_mtok=max(m.input_per_mtok for m in models),
            output_per_mtok=max(m.output_per_mtok for m in models),
            context_window=max(m.context_window for m in models),
            max_output_tokens=max(m.max_output_tokens for m in models),
            capabilities=frozenset().union(*(m.capabilities for m in models)),
            deployments=[models[0].deployments[0]],
        )


# ---- loading --------------------------------------------------------------------------------

def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """Walk a composed YAML node along a pydantic error location to find its line (1-based)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def _entry_name(data: Any, loc: tuple) -> str:
    """Name the offending entry (``models[3] 'gpt-4o'``) rather than only its index."""
    out, cur = [], data
    for part in loc:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(part, int) and isinstance(cur, dict) and "name" in cur:
            out.append(f"[{part}] {cur['name']!r}")
        else:
            out.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(out).lstrip(".") or "document"


def parse_catalog(text: str, source: str = "<catalog>") -> CatalogDoc:
    """Parse and validate one catalog document; raise CatalogError naming every problem and its line."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise CatalogError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise CatalogError([f"{source}:1: the catalog must be a mapping with providers, models and aliases"])
    try:
        return CatalogDoc.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_of(node, loc)
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}:{line or '?'}: {_entry_name(data, loc)}: {msg}")
        raise CatalogError(problems) from None


def builtin_text() -> str:
    return resources.files("shared").joinpath("catalog.yaml").read_text()


def merge(base: CatalogDoc, over: CatalogDoc) -> CatalogDoc:
    """Operator entries replace built-in ones of the same name; new ones are added."""
    providers = {p.name: p for p in base.providers} | {p.name: p for p in over.providers}
    models = {m.name: m for m in base.models} | {m.name: m for m in over.models}
    aliases = base.aliases | over.aliases
    routes = {r.name: r for r in base.routes} | {r.name: r for r in over.routes}
    last_resort = over.last_resort if over.last_resort is not None else base.last_resort
    try:
        return CatalogDoc(providers=list(providers.values()), models=list(models.values()), aliases=aliases,
                          routes=list(routes.values()), last_resort=last_resort,
                          version=over.version, extends_builtin=False)
    except ValidationError as exc:
        raise CatalogError([e["msg"].removeprefix("Value error, ") for e in exc.errors()]) from None


def load_catalog(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Catalog:
    """The built-in catalog, merged with the operator's document at ``path`` when given."""
    doc = parse_catalog(builtin_text(), "built-in catalog.yaml")
    if path:
        p = Path(path)
        own = parse_catalog(p.read_text(), str(p))
        doc = merge(doc, own) if own.extends_builtin else own
    return Catalog(doc, env)
