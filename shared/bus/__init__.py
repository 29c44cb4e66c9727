"""The bus: one JetStream stream of lifecycle events, durable pull consumers, KV buckets.

    contract   what services declare and receive: Bucket, Subscription, Delivery, PubAck, handler types,
               delivery_of, backoff, NO_MESSAGE
    core       Bus: connection, stream, consumers, KV, publishing, and a handler's outcome mapped to
               ack / nak(delay) / term
    pull       PullLoop: one long-lived pull request per consumer, topped up as messages arrive
    busypoll   BusyPoll: the event loop keeps turning for a short window after each message
    natsfast   the fast path through nats-py's private internals, pinned and tested on its own
    permissions  the trust boundary: one NATS user per service role and what each may publish, consume and
               write (``render_authorization`` makes the nats-server block from it)
    credentials  how a process proves its role: user and password or .creds, TLS, its own inbox space
    capacity   how full the stream is; new work refused (503, not accepted) before it is full
    retention  the sweep: what every reader has acknowledged leaves the stream

Services import from here; only tests of the fast path reach into ``natsfast``.
"""

from shared.bus.busypoll import BusyPoll
from shared.bus.contract import (
    NO_MESSAGE,
    BatchHandler,
    Bucket,
    Delivery,
    Handler,
    PoisonHandler,
    PubAck,
    Subscription,
    backoff,
    delivery_of,
)
from shared.bus.core import Bus

__all__ = [
    "NO_MESSAGE",
    "BatchHandler",
    "Bucket",
    "Bus",
    "BusyPoll",
    "Delivery",
    "Handler",
    "PoisonHandler",
    "PubAck",
    "Subscription",
    "backoff",
    "delivery_of",
]
