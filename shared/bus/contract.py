"""What services see of the bus: the buckets and consumers they declare, what a handler is told about its
message, the stream's acknowledgement, and the redelivery backoff.

Nothing here depends on how the bus talks to NATS; ``shared.bus.core`` does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import msgspec
from nats.aio.msg import Msg

from shared.events import AnyEvent, Event
from shared.settings import ConsumerSettings

Handler = Callable[[AnyEvent, "Delivery"], Awaitable[Sequence[Event]]]
BatchHandler = Callable[[list[tuple[AnyEvent, "Delivery"]]], Awaitable[Sequence[Event]]]
PoisonHandler = Callable[[AnyEvent, BaseException], Sequence[Event]]

# JetStream's error code for "no message for this subject": reading a KV key that does not exist raises a
# ``NotFoundError`` with it (a missing bucket raises something else), which is how callers tell the two apart.
NO_MESSAGE = 10037


@dataclass(frozen=True)
class Bucket:
    """A JetStream KV bucket a service needs."""

    name: str
    history: int = 1
    ttl_s: float | None = None
    description: str = ""
    ttl_setting: str | None = None  # the ``NatsSettings`` field that overrides ``ttl_s`` (an operator's choice)


@dataclass(frozen=True)
class Subscription:
    """A durable pull consumer and the subjects it reads."""

    durable: str
    subjects: tuple[str, ...]
    settings: ConsumerSettings = field(default_factory=ConsumerSettings)
    # Safe to recreate and replay from the start (an idempotent reader such as audit) when its
    # configuration changes in a way JetStream cannot update in place.
    replayable: bool = False
    # Reads a smaller window while this process's API is busy (a batch lane's first stage, shared/bus/serving.py).
    yields: bool = False


@dataclass(frozen=True)
class Delivery:
    """What the handler may know about the message that carried its event."""

    num_delivered: int
    headers: dict[str, str]
    stream_seq: int
    msg: Msg | None = None
    pending: int = 0  # messages of the consumer still waiting in the stream behind this one


class PubAck(msgspec.Struct, frozen=True):
    """The stream's acknowledgement of a publish (JetStream's ``PubAck``, decoded by msgspec)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None


def delivery_of(msg: Msg) -> Delivery:
    """The delivery count, stream sequence and backlog from a JetStream message's reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`` (or the v2 form
    with domain and account hash in front): read straight from the tokens, where nats-py's ``metadata`` builds
    dataclasses and a datetime for every message, which costs a noticeable share of a busy consumer's CPU.
    """
    reply = msg.reply or ""
    tokens = reply.split(".")
    if len(tokens) == 9 and reply.startswith("$JS.ACK."):
        delivered, seq, pending = tokens[4], tokens[5], tokens[8]
    elif len(tokens) >= 11 and reply.startswith("$JS.ACK."):
        # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>
        # .<pending>...
        delivered, seq, pending = tokens[6], tokens[7], tokens[10]
    else:
        meta = msg.metadata  # raises NotJSMessageError: not a JetStream delivery
        delivered, seq, pending = meta.num_delivered, meta.sequence.stream, meta.num_pending
    return Delivery(num_delivered=int(delivered), headers=dict(msg.headers or {}), stream_seq=int(seq), msg=msg,
                    pending=int(pending))


def backoff(num_delivered: int, base: float = 0.25, cap: float = 10.0) -> float:
    """Redelivery delay after ``num_delivered`` failed deliveries."""
    return min(cap, base * 2 ** max(0, num_delivered - 1))
