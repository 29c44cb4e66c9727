"""The target table: every piece a process can run, what it needs and what it fuses with (loki's module manager).

A process is started with ``--target``: ``all``, one target, ``worker:<provider>``
or a comma list. What a process does beyond running its targets follows from
this table and nothing else:

- the API-key index is seeded from configuration and watched when a target
  ``needs`` ``keys``;
- a process whose targets do not serve the ops endpoints themselves gets a
  separate ``/healthz``, ``/readyz`` and ``/metrics`` server (``SWITCHYARD_METRICS_PORT``);
- a process that runs every target of the request path busy-polls the bus
  (``shared.bus`` explains the trade);
- a target that ``fuses`` another calls that target's stage in-process when both
  run in the same process (policy routes an admitted request itself; the router's
  ``fuse_with_policy`` setting turns it off);
- a target that must know whether it shares its event loop asks ``Shape``;
- the process connects to the bus as the role of its targets (``Shape.role``: one
  target's name, their ``+`` combination, or ``all``), whose permissions are the
  union of its targets' rows in ``shared.bus.permissions.ROLES``.

``python -m services --list-targets`` prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.bus.permissions import role_name

# What the bootstrap or a target builds for a target that names it in ``needs``.
RESOURCES: dict[str, str] = {
    "bus": "NATS connection, the event stream and its durable consumers",
    "catalog": "providers, models, prices and routes (validated YAML)",
    "keys": "API-key index seeded from configuration and watched in KV (sy_keys)",
    "teams": "team settings in KV (sy_teams)",
    "budgets": "budget counters and reservations in KV (sy_budgets)",
    "rates": "rate-limit windows in KV (sy_ratelimits)",
    "admissions": "what admission took per request, in KV (sy_admissions)",
    "health": "breakers and observed provider health in KV, watched",
    "jobs": "async job records in KV (sy_jobs)",
    "cache": "the response cache in KV (sy_cache): answers, coalescing locks, semantic index",
    "prompts": "prompt templates in KV (sy_prompts)",
    "audit-store": "traces and the cost ledger in SQL (SQLite or PostgreSQL)",
    "providers": "one pooled HTTP client and adapter per provider",
}


@dataclass(frozen=True)
class Target:
    """One row of the table."""

    name: str
    module: str  # exposes ``async def run(deps, arg)``
    summary: str
    needs: tuple[str, ...]
    request_path: bool = False  # handles every request on its way to an answer
    fuses: tuple[str, ...] = ()  # targets whose stage it calls in-process when they share the process
    serves_ops: bool = False  # answers /healthz, /readyz and /metrics itself
    arg: str | None = None  # what ``name:<arg>`` selects


# In start order: ``all`` starts them in this order and stops them in reverse.
TARGETS: tuple[Target, ...] = (
    Target("audit", "services.audit.service", "every event into traces, the cost ledger, job records and the audit "
           "trail; the audit export when configured",
           needs=("bus", "catalog", "audit-store", "jobs")),
    Target("policy", "services.policy.service", "admission (keys, budgets, rate limits, PII, risk) and settlement",
           needs=("bus", "catalog", "keys", "teams", "budgets", "rates", "admissions"), request_path=True,
           fuses=("router",)),
    Target("router", "services.router.service", "candidate scoring, breakers, retries and fallback",
           needs=("bus", "catalog", "health"), request_path=True),
    Target("worker", "services.workers.service", "provider calls, one consumer per provider",
           needs=("bus", "catalog", "health", "jobs", "providers", "cache"), request_path=True, arg="provider"),
    Target("gateway", "services.gateway.app", "the HTTP API: completions, streaming, jobs, reads, admin",
           needs=("bus", "catalog", "keys", "jobs", "health", "teams", "budgets", "rates", "cache", "prompts"),
           request_path=True, serves_ops=True),
)
BY_NAME: dict[str, Target] = {t.name: t for t in TARGETS}
ALL: tuple[str, ...] = tuple(t.name for t in TARGETS)
REQUEST_PATH: tuple[str, ...] = tuple(t.name for t in TARGETS if t.request_path)


def parse_targets(spec: str) -> list[str]:
    """``all`` / ``gateway,router`` / ``worker:openai`` → validated list of targets."""
    out: list[str] = []
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        if raw == "all":
            out.extend(ALL)
            continue
        name, sep, arg = raw.partition(":")
        target = BY_NAME.get(name)
        if target is None:
            raise SystemExit(f"unknown target {raw!r}; known: all, {', '.join(ALL)} (worker:<provider>)")
        if sep and (target.arg is None or not arg):
            raise SystemExit(f"target {name!r} takes no argument" if target.arg is None
                             else f"target {raw!r}: name a {target.arg} after the colon")
        out.append(raw)
    if not out:
        raise SystemExit("no target given")
    return list(dict.fromkeys(out))


def name_of(target: str) -> str:
    """``worker:openai`` → ``worker``."""
    return target.partition(":")[0]


@dataclass(frozen=True)
class Shape:
    """The targets one process runs, and what follows from them by the table."""

    targets: tuple[str, ...]

    @classmethod
    def of(cls, targets: list[str] | tuple[str, ...]) -> "Shape":
        return cls(tuple(targets))

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name_of(t) for t in self.targets)

    def runs(self, name: str) -> bool:
        return name in self.names

    def needs(self, resource: str) -> bool:
        """Whether any target of this process needs ``resource``."""
        return any(resource in BY_NAME[n].needs for n in self.names)

    @property
    def role(self) -> str:
        """The bus user of this process: the union of its targets' permissions (shared.bus.permissions)."""
        return role_name(self.names)

    @property
    def busy_polls(self) -> bool:
        """The whole request path in one process: its answers come back within the poll window."""
        return self.names.issuperset(REQUEST_PATH)

    @property
    def serves_ops(self) -> bool:
        return any(BY_NAME[n].serves_ops for n in self.names)

    def fused(self, name: str) -> bool:
        """Whether another target of this process calls ``name``'s stage in-process."""
        return self.runs(name) and any(name in BY_NAME[n].fuses for n in self.names if n != name)

    def shares_process(self, name: str) -> bool:
        """Whether ``name`` shares this process (one event loop, one GIL) with any other target."""
        return any(n != name for n in self.names)


def describe() -> str:
    """The table as text (``--list-targets``)."""
    rows = [("target", "needs", "fuses", "request path", "serves ops", "what it does")]
    for t in TARGETS:
        rows.append((t.name + (f"[:{t.arg}]" if t.arg else ""), ",".join(t.needs), ",".join(t.fuses) or "-",
                     "yes" if t.request_path else "no", "yes" if t.serves_ops else "no", t.summary))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    lines.append("")
    lines.append(f"all = {','.join(ALL)} (started in this order); a process running "
                 f"{','.join(REQUEST_PATH)} busy-polls the bus")
    lines.append("")
    lines.append("resources:")
    lines.extend(f"  {name:<12} {text}" for name, text in RESOURCES.items())
    return "\n".join(lines)
