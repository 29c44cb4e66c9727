"""Who may do what on the bus: one NATS user per service role, each allowed only the subjects it owns.

The bus is the trust boundary (docs/security.md): a process proves which role
it plays with that role's credentials, and the server lets it publish only what
its role produces, consume only through its own durable consumers, and write
only the KV buckets it owns. A KV write is a publish to ``$KV.<bucket>.<key>``,
so "owns a bucket" is a publish permission like any other.

``ROLES`` is the table, one row per target of ``services/targets.py`` (a test
keeps the two in step). A process running several targets connects as the
*combined* role of its shape, named by joining the targets' names with ``+``
in table order (``policy+router``), or ``all`` for every target; its
permissions are the union of its targets'. ``OPERATOR`` is the operator's own
user (the ``nats`` CLI, the test fixtures' direct bus access): no restriction.

Every role may read the event stream's state and messages (the periodic
collectors do; and every role handles prompts anyway): the separation is about
what a role can *change* — publish, acknowledge, write, reconfigure.

``render_authorization(passwords)`` renders the nats-server ``authorization``
block for any set of these users; the embedded server (``shared.natsd``) and
the deployment's NATS configuration are both made with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from shared.bus.credentials import inbox_prefix
from shared.events import (
    ADMITTED,
    ADMITTED_ROUTED,
    ALL_EVENTS,
    ATTEMPT_ABANDONED,
    ATTEMPT_FAILED,
    BUDGET_ALERT,
    BUDGET_RELEASED,
    BUDGET_RESERVED,
    BUDGET_SETTLED,
    CANCEL_REQUESTED,
    DONE_ALL,
    JOB_ORIGIN,
    REQUESTED,
    ADMIN_ACTIONS,
    RPC_AUDIT_EVENTS,
    RPC_AUDIT_LEDGER,
    RPC_AUDIT_REQUESTS,
    RPC_AUDIT_STATS,
    RPC_AUDIT_TRACE,
    BATCH,
    LANES,
    attempt_subject,
    cancel_subject,
    chunk_subject,
    done_subject,
    in_every_lane,
    lane_subject,
)
from shared.state import buckets as b

OPERATOR = "operator"  # full access: the operator's tools, never a service
ALL = "all"  # the user of a process that runs every target
ANY_DURABLE = "*"  # a role whose durable names are not known in advance (``worker-<provider>``)
_ANY_DONE = done_subject("*")
_ANY_ATTEMPT = tuple(attempt_subject("*", lane) for lane in LANES)  # every provider's attempts, in each lane
_BUDGET_EVENTS = (BUDGET_RESERVED, BUDGET_SETTLED, BUDGET_RELEASED, BUDGET_ALERT)
# What the gateway alone keeps for the Responses and Batch APIs: stored responses, files, batches.
_API_STATE = (b.CONVERSATIONS.name, b.FILES.name, b.BATCHES.name, b.IDEMPOTENCY.name)
_AUDIT_RPCS = (RPC_AUDIT_TRACE, RPC_AUDIT_LEDGER, RPC_AUDIT_REQUESTS, RPC_AUDIT_STATS, RPC_AUDIT_EVENTS)
AUDIT_EXPORT_DURABLE = "audit-export"  # the audit export's own consumer (services/audit/export.py), when configured


@dataclass(frozen=True)
class Role:
    """What one service role does on the bus."""

    name: str
    publishes: tuple[str, ...] = ()  # event and core subjects it produces
    subscribes: tuple[str, ...] = ()  # core subjects it listens on
    serves: tuple[str, ...] = ()  # request/reply subjects it answers (it may reply to the asker's inbox)
    # Its durable consumers on the event stream and the subjects each filters on.
    durables: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    replays: bool = False  # may delete its consumer to recreate it (an idempotent reader)
    reads: tuple[str, ...] = ()  # KV buckets it reads and watches
    writes: tuple[str, ...] = ()  # KV buckets it writes (and may reconfigure)
    purges: tuple[str, ...] = ()  # KV buckets it may purge by subject
    keeps_stream: bool = False  # reconfigures the event stream and removes what every reader acknowledged
    # Durables that exist only when configured (the audit export): the stream sweep waits for one while it exists,
    # and does not hold events back for it while it does not.
    optional: tuple[str, ...] = ()


ROLES: dict[str, Role] = {r.name: r for r in (
    Role("audit", durables={"audit": (ALL_EVENTS,), AUDIT_EXPORT_DURABLE: (ALL_EVENTS,)}, replays=True,
         serves=_AUDIT_RPCS, optional=(AUDIT_EXPORT_DURABLE,),
         reads=(b.JOBS.name, b.QUEUES.name), writes=(b.JOBS.name, b.QUEUES.name), keeps_stream=True),
    Role("policy", publishes=(*in_every_lane(ADMITTED), ADMITTED_ROUTED, _ANY_DONE, *_BUDGET_EVENTS),
         durables={"policy": (REQUESTED,), "policy-batch": (lane_subject(REQUESTED, BATCH),),
                   "policy-settle": (DONE_ALL, *in_every_lane(ATTEMPT_FAILED))},
         reads=(b.KEYS.name, b.TEAMS.name, b.BUDGETS.name, b.RATES.name, b.ADMISSIONS.name, b.PROMPTS.name),
         writes=(b.BUDGETS.name, b.RATES.name, b.ADMISSIONS.name)),
    # The router reads breakers (workers move them, operators force them) and writes its retry budgets.
    Role("router", publishes=(*_ANY_ATTEMPT, _ANY_DONE),
         durables={"router": (ADMITTED, ATTEMPT_FAILED),
                   "router-batch": (lane_subject(ADMITTED, BATCH), lane_subject(ATTEMPT_FAILED, BATCH))},
         reads=(b.HEALTH.name, b.BREAKERS.name, b.ATTEMPTS.name), writes=(b.HEALTH.name, b.ATTEMPTS.name)),
    Role("worker", publishes=(*in_every_lane(ATTEMPT_FAILED), ATTEMPT_ABANDONED, _ANY_DONE,
                              chunk_subject("*", "*")),
         # worker-<provider> reads one provider's interactive lane, worker-<provider>-batch its batch lane.
         subscribes=(cancel_subject("*"),), durables={ANY_DURABLE: _ANY_ATTEMPT},
         reads=(b.JOBS.name, b.HEALTH.name, b.BREAKERS.name, b.CACHE.name, b.ATTEMPTS.name),
         writes=(b.HEALTH.name, b.BREAKERS.name, b.CACHE.name, b.ATTEMPTS.name)),
    # The gateway publishes requests, and the one terminal a client may cause itself (a job's cancellation).
    Role("gateway", publishes=(*in_every_lane(REQUESTED), CANCEL_REQUESTED, done_subject(JOB_ORIGIN), cancel_subject("*"),
                               ADMIN_ACTIONS, *_AUDIT_RPCS),
         subscribes=(_ANY_DONE, chunk_subject("*", "*")),
         reads=(b.KEYS.name, b.TEAMS.name, b.BUDGETS.name, b.RATES.name, b.JOBS.name, b.HEALTH.name,
                b.BREAKERS.name, b.QUEUES.name, b.PROMPTS.name, b.CACHE.name, *_API_STATE),
         writes=(b.KEYS.name, b.TEAMS.name, b.JOBS.name, b.BREAKERS.name, b.QUEUES.name, b.PROMPTS.name,
                 *_API_STATE),
         purges=(b.CACHE.name,)),
)}
ORDER: tuple[str, ...] = tuple(ROLES)


def role_name(targets: Iterable[str]) -> str:
    """The user of a process running ``targets`` (target names, ``worker:<provider>`` allowed)."""
    names = {t.partition(":")[0] for t in targets}
    unknown = names - set(ROLES)
    if unknown:
        raise ValueError(f"no bus role for {', '.join(sorted(unknown))}")
    if names == set(ROLES):
        return ALL
    return "+".join(n for n in ORDER if n in names)


def users() -> list[str]:
    """Every user a server should know: each combination of roles (single roles first), then the operator."""
    out = []
    for mask in sorted(range(1, 2 ** len(ORDER)), key=lambda m: (bin(m).count("1"), m)):
        out.append(role_name(n for i, n in enumerate(ORDER) if mask >> i & 1))
    return out + [OPERATOR]


def roles_of(user: str) -> tuple[Role, ...]:
    """The roles a user plays (every role for ``all`` and the operator)."""
    if user in (ALL, OPERATOR):
        return tuple(ROLES.values())
    try:
        return tuple(ROLES[n] for n in user.split("+"))
    except KeyError:
        raise ValueError(f"unknown bus user {user!r}: one of {', '.join(ORDER)}, a '+' combination of them, "
                         f"{ALL!r} or {OPERATOR!r}") from None


@dataclass(frozen=True)
class Access:
    """What a connected process may do, for the decisions it makes before trying (the server enforces it)."""

    user: str

    @property
    def roles(self) -> tuple[Role, ...]:
        return roles_of(self.user)

    @property
    def keeps_stream(self) -> bool:
        return self.user == OPERATOR or any(r.keeps_stream for r in self.roles)

    def writes(self, bucket: str) -> bool:
        return self.user == OPERATOR or any(bucket in r.writes for r in self.roles)


@dataclass(frozen=True)
class Permissions:
    """A user's subject permissions as nats-server takes them."""

    publish: tuple[str, ...]
    deny_publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responds: bool


def permissions(user: str, stream: str = "SWITCHYARD") -> Permissions | None:
    """The user's permissions on ``stream`` and the buckets (None: unrestricted, the operator)."""
    if user == OPERATOR:
        return None
    roles = roles_of(user)
    api = "$JS.API"
    pub: list[str] = [
        # The event stream as configured (creating it is harmless: an existing stream with another
        # configuration is refused), its state and its messages (the collectors read them).
        f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.CREATE.{stream}", f"{api}.CONSUMER.LIST.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
    ]
    sub: list[str] = [inbox_prefix(user) + ".>"]
    owned = {d for r in roles for d in r.durables}
    for r in roles:
        pub += r.publishes
        sub += r.subscribes + r.serves
        for durable, filters in r.durables.items():
            pub += _consumer_api(stream, durable, filters, r.replays)
        if r.keeps_stream:
            pub += [f"{api}.STREAM.UPDATE.{stream}", f"{api}.STREAM.PURGE.{stream}"]
        for bucket in (*r.reads, *r.writes, *r.purges):
            pub += _kv_read(bucket)
        for bucket in r.writes:
            pub += [f"$KV.{bucket}.>", f"{api}.STREAM.UPDATE.KV_{bucket}"]
        for bucket in r.purges:
            pub.append(f"{api}.STREAM.PURGE.KV_{bucket}")
    deny: list[str] = []
    if ANY_DURABLE in owned:
        # A role whose consumers' names are not known beforehand reaches any consumer but the other roles'.
        for other in ROLES.values():
            for durable in other.durables:
                if durable != ANY_DURABLE and durable not in owned:
                    deny += _consumer_denials(stream, durable)
    return Permissions(publish=_unique(pub), deny_publish=_unique(deny), subscribe=_unique(sub),
                       responds=any(r.serves for r in roles))


def _consumer_api(stream: str, durable: str, filters: Sequence[str], replays: bool) -> list[str]:
    c = "$JS.API.CONSUMER"
    # The filter is part of the create subject when there is one: the role cannot point its consumer elsewhere.
    create = [f"{c}.CREATE.{stream}.{durable}.{filters[0]}"] if len(filters) == 1 else \
        [f"{c}.CREATE.{stream}.{durable}"]
    if durable == ANY_DURABLE:  # consumers named at run time, each filtering on one of these subjects
        create = [f"{c}.CREATE.{stream}.{durable}.{f}" for f in filters]
    out = create + [f"{c}.INFO.{stream}.{durable}", f"{c}.MSG.NEXT.{stream}.{durable}",
                    f"$JS.ACK.{stream}.{durable}.>"]
    if replays:
        out.append(f"{c}.DELETE.{stream}.{durable}")
    return out


def _consumer_denials(stream: str, durable: str) -> list[str]:
    c = "$JS.API.CONSUMER"
    return [f"{c}.CREATE.{stream}.{durable}", f"{c}.CREATE.{stream}.{durable}.>",
            f"{c}.DURABLE.CREATE.{stream}.{durable}", f"{c}.INFO.{stream}.{durable}",
            f"{c}.MSG.NEXT.{stream}.{durable}", f"{c}.DELETE.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>"]


def _kv_read(bucket: str) -> list[str]:
    s, api = f"KV_{bucket}", "$JS.API"
    return [f"{api}.STREAM.INFO.{s}", f"{api}.STREAM.CREATE.{s}", f"{api}.DIRECT.GET.{s}", f"{api}.DIRECT.GET.{s}.>",
            f"{api}.STREAM.MSG.GET.{s}",
            # watches: ordered consumers of its own, with their flow control
            f"{api}.CONSUMER.CREATE.{s}", f"{api}.CONSUMER.CREATE.{s}.>", f"{api}.CONSUMER.INFO.{s}.*",
            f"{api}.CONSUMER.DELETE.{s}.*", f"$JS.FC.{s}.>"]


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def render_authorization(passwords: Mapping[str, str], stream: str = "SWITCHYARD") -> str:
    """The nats-server ``authorization`` block for these users (``{user: password}``).

    Users are role names (``gateway``, ``policy+router``, ``all``, ``operator``: see ``users()``). A password
    that starts with ``$`` is written as a variable reference (``$GATEWAY_PASSWORD``), which nats-server
    resolves from its environment, so a deployment's configuration file need not hold the secrets.
    """
    lines = ["authorization {", "  users = ["]
    for user, password in passwords.items():
        secret = password if password.startswith("$") else json.dumps(password)
        perms = permissions(user, stream)
        if perms is None:
            lines.append(f"    {{user: {json.dumps(user)}, password: {secret}}}")
            continue
        publish = f"allow: {json.dumps(list(perms.publish))}"
        if perms.deny_publish:
            publish += f", deny: {json.dumps(list(perms.deny_publish))}"
        lines.append(f"    {{user: {json.dumps(user)}, password: {secret}, permissions: {{")
        lines.append(f"      publish: {{{publish}}}")
        lines.append(f"      subscribe: {{allow: {json.dumps(list(perms.subscribe))}}}")
        if perms.responds:
            lines.append("      allow_responses: true")
        lines.append("    }}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
