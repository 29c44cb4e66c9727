"""nats-py still does what ``shared/bus/natsfast.py`` relies on; no nats-server needed.

Each check names the private attribute or internal behaviour it covers (the list in natsfast's docstring).
A failure here after a nats-py upgrade means: re-check the fast path against the new version, fix what
moved, then move ``NATS_PY`` and the pin in pyproject.toml together.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import pathlib
import tomllib

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from packaging.requirements import Requirement
from packaging.version import Version

from shared.bus import NO_MESSAGE, PubAck
from shared.bus.natsfast import NATS_PY, LeanJetStream, _DirectQueue, key_value, subscribe_direct

INSTALLED = Version(importlib.metadata.version("nats-py"))
ROOT = pathlib.Path(__file__).resolve().parents[2]
# nats-py's core client and subscription, parsed once at collection: on CPython 3.11 an ast.parse after a failed
# test can trip over an interpreter bug ("AST constructor recursion depth mismatch") and hide the real failure.
NATS_AIO = {path.name: ast.parse(path.read_text())
            for path in sorted((pathlib.Path(nats.__file__).parent / "aio").glob("*.py"))}


def need(ok: object, what: str) -> None:
    """Fail with a message that says which reliance of the fast path broke."""
    if not ok:
        pytest.fail(f"nats-py {INSTALLED} no longer does what shared/bus/natsfast.py relies on: {what}",
                    pytrace=False)


def unconnected_client() -> Client:
    # An unconnected client queues SUB commands without sending them; connect() would have made its flush
    # queue, which subscribing asserts exists.
    nc = Client()
    nc._flush_queue = asyncio.Queue()
    return nc


def test_installed_nats_py_is_the_version_the_patches_were_checked_against():
    pinned = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
              if Requirement(d).name == "nats-py"]
    assert len(pinned) == 1 and str(pinned[0].specifier) == str(Requirement(f"nats-py{NATS_PY}").specifier), (
        f"pyproject.toml pins {pinned[0] if pinned else 'no nats-py'}, but shared/bus/natsfast.py was checked "
        f"against nats-py{NATS_PY}: move them together, after re-checking the fast path")
    assert INSTALLED in Requirement(f"nats-py{NATS_PY}").specifier, (
        f"nats-py {INSTALLED} is installed, but shared/bus/natsfast.py was checked against {NATS_PY}")


async def test_a_callback_subscription_has_the_queue_task_and_size_that_subscribe_direct_replaces():
    nc = unconnected_client()

    async def cb(msg: Msg) -> None:
        pass

    sub = await nc.subscribe("natsfast.plain", cb=cb)
    need(isinstance(getattr(sub, "_wait_for_msgs_task", None), asyncio.Task),
         "Subscription._wait_for_msgs_task is not the task reading a callback subscription's messages")
    need(isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue),
         "Subscription._pending_queue is not the asyncio.Queue the read loop fills")
    need(isinstance(getattr(sub, "_pending_size", None), int), "Subscription._pending_size is gone")
    await sub.unsubscribe()


async def test_the_read_loop_hands_each_message_to_the_direct_queue():
    nc = unconnected_client()
    got: list[Msg] = []
    pokes: list[int] = []
    sub = await subscribe_direct(nc, "natsfast.direct", got.append, poke=lambda: pokes.append(1))
    need(isinstance(sub._pending_queue, _DirectQueue),
         "subscribe_direct fell back to nats-py's callback path (the subscription's internals look different)")
    await asyncio.sleep(0)  # one turn of the loop, not a timed wait: a cancelled task is done after it runs once
    need(sub._wait_for_msgs_task.cancelled(), "the subscription's own reading task did not stop when cancelled")

    # Client._process_msg is what the read loop calls for every MSG/HMSG the parser completes.
    await nc._process_msg(sub._id, b"natsfast.direct", b"_INBOX.r", b"hello", b"")
    need([m.data for m in got] == [b"hello"] and got[0].reply == "_INBOX.r",
         "Client._process_msg no longer hands a callback subscription's message to _pending_queue.put_nowait")
    need(pokes == [1], "the message did not reach _DirectQueue.put_nowait")
    need(sub._pending_size == 0 and sub.pending_bytes == 0,
         "Client._process_msg no longer counts a message's bytes into _pending_size before put_nowait")
    need(sub.pending_msgs == 0, "Subscription.pending_msgs no longer reads _pending_queue.qsize()")

    # Replies and LeanJetStream read a server status from the headers nats-py parses out of an inline status.
    await nc._process_msg(sub._id, b"natsfast.direct", b"", b"", b"NATS/1.0 404 No Messages\r\n\r\n")
    await nc._process_msg(sub._id, b"natsfast.direct", b"", b"", b"NATS/1.0 503\r\n\r\n")
    need(got[1].headers.get("Status") == "404" and got[1].headers.get("Description") == "No Messages",
         "an inline 404 status is not in msg.headers as Status / Description")
    need(got[2].headers.get("Status") == "503", "an inline 503 (no responders) is not in msg.headers as Status")
    await nc._process_msg(sub._id, b"natsfast.direct", b"", b"v",
                          b"NATS/1.0\r\nNats-Subject: $KV.b.k\r\nNats-Sequence: 7\r\n\r\n")
    need(got[3].headers == {"Nats-Subject": "$KV.b.k", "Nats-Sequence": "7"},
         "a direct get's headers are not in msg.headers as sent")

    await sub.unsubscribe()
    await nc._process_msg(sub._id, b"natsfast.direct", b"", b"late", b"")
    need(len(got) == 4, "a message reached a direct subscription after unsubscribe")


def test_nats_py_calls_nothing_on_a_pending_queue_that_the_direct_queue_lacks():
    provided = {name for name in vars(_DirectQueue) if not name.startswith("_")}
    # Paths a direct subscription never takes: next_msg serves subscriptions without a callback, and
    # _wait_for_msgs is the task subscribe_direct cancels.
    never_taken = {"next_msg", "timed_get", "_wait_for_msgs"}
    missing = []
    for name, tree in NATS_AIO.items():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name in never_taken:
                continue
            inner = {n for f in ast.walk(fn) if f is not fn and isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                     for n in ast.walk(f)}
            for node in ast.walk(fn):
                if (node not in inner and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                        and node.value.attr == "_pending_queue" and node.attr not in provided):
                    missing.append(f"{name}:{node.lineno} {fn.name}() calls _pending_queue.{node.attr}")
    need(not missing, "_DirectQueue stands in for Subscription._pending_queue but lacks what nats-py now uses: "
         + "; ".join(missing))


def test_the_lean_context_accepts_every_argument_of_the_context_it_stands_in_for():
    for name in ("publish", "get_msg"):
        theirs = set(inspect.signature(getattr(JetStreamContext, name)).parameters)
        ours = set(inspect.signature(getattr(LeanJetStream, name)).parameters)
        need(theirs == ours, f"JetStreamContext.{name} takes {sorted(theirs)}, LeanJetStream.{name} {sorted(ours)}")
    need(set(inspect.signature(KeyValue.__init__).parameters) == {"self", "name", "stream", "pre", "js", "direct"},
         f"KeyValue(name=, stream=, pre=, js=, direct=) is now KeyValue{inspect.signature(KeyValue.__init__)}")
    need({"subject", "seq", "data", "headers"} <= set(inspect.signature(RawStreamMsg).parameters),
         f"RawStreamMsg(subject=, seq=, data=, headers=) is now RawStreamMsg{inspect.signature(RawStreamMsg)}")
    for err_type in (APIError, NotFoundError):
        err = err_type(code=404, err_code=NO_MESSAGE, description="d")
        need((err.code, err.err_code, err.description) == (404, NO_MESSAGE, "d"),
             f"{err_type.__name__}(code=, err_code=, description=) no longer keeps them")
    with pytest.raises(APIError) as raised:
        APIError.from_error({"code": 400, "err_code": 10060, "description": "expected stream does not match"})
    need(type(raised.value) is BadRequestError and raised.value.err_code == 10060,
         "APIError.from_error(body) no longer raises the error's subclass with its err_code")


class FakeReplies:
    """What LeanJetStream sends: JetStream publishes and direct gets, answered from a dict of key → message."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict | None]] = []
        self.requested: list[str] = []
        self.stored: dict[str, tuple[int, bytes, dict]] = {}
        self.refuse: dict | None = None

    async def publish(self, subject: str, data: bytes, headers: dict | None, timeout: float) -> PubAck:
        self.published.append((subject, data, headers))
        if self.refuse is not None:
            APIError.from_error(self.refuse)
        return PubAck(stream="KV_b", seq=len(self.published))

    async def request(self, subject: str, data: bytes, headers: dict | None, timeout: float) -> Msg:
        self.requested.append(subject)
        key_subject = subject.removeprefix("$JS.API.DIRECT.GET.KV_b.")
        if key_subject not in self.stored:
            return Msg(_client=None, subject=subject, headers={"Status": "404", "Description": "Message Not Found"})
        seq, value, extra = self.stored[key_subject]
        return Msg(_client=None, subject=subject, data=value,
                   headers={"Nats-Subject": key_subject, "Nats-Sequence": str(seq), **extra})


class SlowPath:
    """nats-py's own JetStream context: a KeyValue read or write must not reach it."""

    def __getattr__(self, name: str):
        pytest.fail(f"nats-py {INSTALLED}: KeyValue called its JetStream context's {name!r}, which LeanJetStream "
                    f"does not make lean (KeyValue's use of _js changed)", pytrace=False)


async def test_key_value_reads_and_writes_go_through_the_lean_context():
    replies = FakeReplies()
    kv = key_value(SlowPath(), replies, "b", timeout=1.0)

    assert await kv.put("k", b"v1") == 1
    await kv.update("k", b"v2", last=1)
    await kv.create("n", b"x", msg_ttl=5)
    await kv.delete("k")
    await kv.purge("k")
    subjects = [s for s, _, _ in replies.published]
    need(subjects == ["$KV.b.k"] * 2 + ["$KV.b.n"] + ["$KV.b.k"] * 2,
         f"KeyValue writes no longer all go through _js.publish: {subjects}")
    headers = [h for _, _, h in replies.published]
    need(headers[0] is None and headers[1] == {"Nats-Expected-Last-Subject-Sequence": "1"}
         and headers[2] == {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-TTL": "5"}
         and headers[3] == {"KV-Operation": "DEL"} and headers[4].get("KV-Operation") == "PURGE",
         f"KeyValue passes other headers / msg_ttl to _js.publish than LeanJetStream expects: {headers}")

    replies.refuse = {"code": 400, "err_code": 10071, "description": "wrong last sequence: 3"}
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.update("k", b"v3", last=2)
    replies.refuse = None

    replies.stored["$KV.b.k"] = (9, b"v9", {})
    entry = await kv.get("k")
    need(replies.requested == ["$JS.API.DIRECT.GET.KV_b.$KV.b.k"],
         f"KeyValue.get no longer reads through _js.get_msg(stream, subject=, direct=True): {replies.requested}")
    need((entry.value, entry.revision) == (b"v9", 9), "KeyValue.get no longer builds its entry from get_msg's message")

    with pytest.raises(KeyNotFoundError) as missing:
        await kv.get("absent")
    cause = missing.value.__context__
    need(isinstance(cause, NotFoundError) and cause.err_code == NO_MESSAGE,
         "KeyValue.get no longer raises KeyNotFoundError while handling get_msg's NotFoundError, so a missing key "
         "cannot be told from a missing bucket")
    replies.stored["$KV.b.gone"] = (10, b"", {"KV-Operation": "DEL"})
    with pytest.raises(KeyNotFoundError):
        await kv.get("gone")
