"""The one compare-and-set helper (``shared.state.kv``) against a small in-memory bucket that answers as nats-py does.

The fake raises what nats-py raises: ``KeyNotFoundError`` with the JetStream error underneath (no message
for a missing key, no stream for a missing bucket), ``KeyWrongLastSequenceError`` for a lost race. The same
behaviour against a real nats-server is in ``tests/integration/test_state_kv.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from shared.bus import NO_MESSAGE
from shared.errors import ServiceUnavailable
from shared.state.kv import Codec, GroupCommit, Known, cas, create, create_or_read, is_conflict, kv_get, read

NO_STREAM = 10059


class Count(msgspec.Struct):
    """A stored value for the tests."""

    n: int = 0


CODEC = Codec(Count)


@dataclass
class Entry:
    """What ``KeyValue.get`` returns (the fields the helper reads)."""

    key: str
    value: bytes
    revision: int


class FakeKV:
    """A bucket in memory: revisions, create-only and compare-and-set writes, and hooks to lose a race."""

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}
        self.seq = 0
        self.gets = 0
        self.before_write: Callable[[str], None] | None = None  # runs before each write: a rival writes here
        self.missing_bucket = False
        self.write_error: Exception | None = None

    def put_now(self, key: str, value: Count) -> int:
        self.seq += 1
        self.data[key] = Entry(key, CODEC.encode(value), self.seq)
        return self.seq

    async def get(self, key: str) -> Entry:
        self.gets += 1
        code = NO_STREAM if self.missing_bucket else NO_MESSAGE
        if self.missing_bucket or key not in self.data:
            try:
                raise NotFoundError(code=404, err_code=code, description="not found")
            except NotFoundError:
                raise KeyNotFoundError  # noqa: B904 - nats-py chains it the same way
        return self.data[key]

    async def _write(self, key: str, value: bytes, expected: int) -> int:
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook(key)
        if self.write_error is not None:
            raise self.write_error
        current = self.data.get(key)
        if (current.revision if current else 0) != expected:
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        self.seq += 1
        self.data[key] = Entry(key, value, self.seq)
        return self.seq

    async def create(self, key: str, value: bytes) -> int:
        return await self._write(key, value, 0)

    async def update(self, key: str, value: bytes, last: int) -> int:
        return await self._write(key, value, last)


def bump(current: Count | None) -> tuple[Count, int]:
    n = (current.n if current else 0) + 1
    return Count(n), n


async def test_a_missing_key_reads_as_none_and_a_missing_bucket_is_unavailable():
    kv = FakeKV()
    assert await kv_get(kv, "absent") is None
    assert await read(kv, "absent", CODEC) is None
    kv.missing_bucket = True
    with pytest.raises(ServiceUnavailable, match="the team store is unavailable"):
        await kv_get(kv, "absent", "team store")
    with pytest.raises(ServiceUnavailable, match="not configured"):
        await kv_get(None, "absent", "team store")


async def test_cas_creates_a_missing_key_then_updates_it():
    kv = FakeKV()
    assert await cas(kv, "k", CODEC, bump) == 1
    assert await cas(kv, "k", CODEC, bump) == 2
    assert (await read(kv, "k", CODEC)).n == 2


async def test_cas_retries_a_lost_race_on_the_fresh_value():
    kv = FakeKV()
    kv.put_now("k", Count(10))
    seen: list[int] = []

    def change(current: Count | None) -> tuple[Count, int]:
        seen.append(current.n)
        return bump(current)

    kv.before_write = lambda key: kv.put_now(key, Count(20))  # a rival writes between our read and our write
    assert await cas(kv, "k", CODEC, change) == 21
    assert seen == [10, 20]
    assert (await read(kv, "k", CODEC)).n == 21


async def test_a_change_that_returns_nothing_writes_nothing():
    kv = FakeKV()
    kv.put_now("k", Count(3))
    assert await cas(kv, "k", CODEC, lambda cur: (None, "kept")) == "kept"
    assert kv.data["k"].revision == 1


async def test_cas_gives_up_after_its_timeout_of_conflicts():
    kv = FakeKV()

    class Rival:
        def __call__(self, key: str) -> None:
            kv.put_now(key, Count(0))
            kv.before_write = self  # every write loses

    kv.before_write = Rival()
    with pytest.raises(ServiceUnavailable, match="too contended"):
        await cas(kv, "k", CODEC, bump, timeout_s=0.05, what="budget store")


async def test_a_write_that_fails_otherwise_is_unavailable_not_a_conflict():
    kv = FakeKV()
    kv.write_error = TimeoutError("no answer")
    with pytest.raises(ServiceUnavailable, match="the budget store is unavailable"):
        await cas(kv, "k", CODEC, bump, what="budget store")
    with pytest.raises(ServiceUnavailable):
        await cas(None, "k", CODEC, bump)


async def test_a_known_value_saves_the_first_read_and_written_reports_the_revision():
    kv = FakeKV()
    rev = kv.put_now("k", Count(5))
    stored: list[tuple[int, int]] = []
    result = await cas(kv, "k", CODEC, bump, known=Known(Count(5), rev),
                       written=lambda new, revision: stored.append((new.n, revision)))
    assert result == 6 and kv.gets == 0
    assert stored == [(6, kv.data["k"].revision)]


async def test_a_stale_known_value_costs_one_conflict_and_then_reads():
    kv = FakeKV()
    kv.put_now("k", Count(5))
    kv.put_now("k", Count(7))  # the watched copy has not seen this one yet
    assert await cas(kv, "k", CODEC, bump, known=Known(Count(5), 1)) == 8
    assert kv.gets == 1


async def test_create_is_create_only():
    kv = FakeKV()
    assert await create(kv, "k", CODEC, Count(1)) is True
    assert await create(kv, "k", CODEC, Count(2)) is False
    assert (await read(kv, "k", CODEC)).n == 1
    assert await create_or_read(kv, "k", CODEC, Count(3)) == (Count(1), False)
    assert await create_or_read(kv, "other", CODEC, Count(3)) == (Count(3), True)


def test_conflicts_are_told_from_failures():
    assert is_conflict(KeyWrongLastSequenceError(description="wrong last sequence"))
    assert is_conflict(Exception("nats: key exists"))
    assert not is_conflict(TimeoutError())


# ---- GroupCommit: concurrent changes of one key, one write per batch ------------------------------------

class CountingKV(FakeKV):
    """A FakeKV that counts writes and makes each one take a moment (so changes pile up behind it)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    async def _write(self, key: str, value: bytes, expected: int) -> int:
        self.writes += 1
        await asyncio.sleep(0.001)
        return await super()._write(key, value, expected)


async def test_group_commit_applies_concurrent_changes_in_order_in_few_writes():
    kv = CountingKV()
    commits = GroupCommit(kv, CODEC, what="budget store")
    results = await asyncio.gather(*(commits.cas("k", bump) for _ in range(100)))
    assert sorted(results) == list(range(1, 101))  # each caller saw the value its own change made
    assert (await read(kv, "k", CODEC)).n == 100
    assert kv.writes < 10  # the first change alone, then the rest in batches


async def test_group_commit_refuses_per_change_like_one_cas_each():
    kv = CountingKV()
    commits = GroupCommit(kv, CODEC)

    def take_if_room(current: Count | None) -> tuple[Count | None, bool]:
        n = current.n if current else 0
        return (Count(n + 1), True) if n < 7 else (None, False)  # a limit of 7, like a budget

    taken = await asyncio.gather(*(commits.cas("k", take_if_room) for _ in range(30)))
    assert taken.count(True) == 7 and (await read(kv, "k", CODEC)).n == 7


async def test_a_change_that_raises_fails_only_its_caller():
    kv = CountingKV()
    commits = GroupCommit(kv, CODEC)

    def broken(current: Count | None):
        raise ValueError("bad change")

    results = await asyncio.gather(commits.cas("k", bump), commits.cas("k", broken), commits.cas("k", bump),
                                   return_exceptions=True)
    assert isinstance(results[1], ValueError) and sorted(results[::2]) == [1, 2]


async def test_group_commit_retries_a_batch_that_lost_a_race_to_another_process():
    kv = CountingKV()
    kv.put_now("k", Count(10))
    commits = GroupCommit(kv, CODEC)
    kv.before_write = lambda key: kv.put_now(key, Count(20))  # another replica writes in between
    assert await commits.cas("k", bump) == 21


async def test_group_commit_reports_an_unreachable_store_to_every_caller():
    kv = CountingKV()
    kv.write_error = TimeoutError("no answer")
    commits = GroupCommit(kv, CODEC, what="budget store")
    results = await asyncio.gather(*(commits.cas("k", bump) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    kv.write_error = None
    assert await commits.cas("k", bump) == 1  # nothing stuck: the next change goes through


async def test_group_commit_skips_the_read_of_a_key_it_wrote_last():
    kv = CountingKV()
    commits = GroupCommit(kv, CODEC)
    for expected in (1, 2, 3):
        assert await commits.cas("k", bump) == expected
    assert kv.gets == 1  # only the first change read the key


async def test_a_remembered_value_never_decides_alone():
    kv = CountingKV()
    commits = GroupCommit(kv, CODEC)

    def take_if_room(current: Count | None) -> tuple[Count | None, bool]:
        n = current.n if current else 0
        return (Count(n + 1), True) if n < 2 else (None, False)

    assert [await commits.cas("k", take_if_room) for _ in range(2)] == [True, True]
    kv.put_now("k", Count(0))  # another process gave the room back: the remembered value (2, full) is stale
    assert await commits.cas("k", take_if_room) is True  # decided again on the stored value, not refused
    kv.put_now("k", Count(5))  # and a stale value that would write loses the race and reads again
    assert await commits.cas("k", bump) == 6
