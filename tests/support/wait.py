"""Waiting for a condition instead of sleeping a fixed time: a test goes on as soon as the system is there,
and a slow machine gets the whole timeout rather than a guess."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Awaitable, Callable, TypeVar, Union

T = TypeVar("T")


async def eventually(predicate: Callable[[], Union[T, Awaitable[T]]], timeout: float = 10.0,
                     interval: float = 0.02, message: str | Callable[[], str] | None = None) -> T:
    """Call ``predicate`` (sync or async) until it returns something truthy, and return that value.

    Whatever the predicate raises (an assertion on a state that can no longer turn out well) fails the test
    at once. At the timeout an ``AssertionError`` names the predicate and its last value, after ``message``
    (a string, or a callable that reads the state at that moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            break
        await asyncio.sleep(interval)
    raise _timed_out(predicate, timeout, value, message)


def eventually_sync(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
                    message: str | Callable[[], str] | None = None) -> T:
    """``eventually`` for code that runs outside the event loop (a server started in a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise _timed_out(predicate, timeout, value, message)


def _timed_out(predicate: Callable, timeout: float, value: object,
               message: str | Callable[[], str] | None) -> AssertionError:
    what = message() if callable(message) else message
    name = getattr(predicate, "__qualname__", repr(predicate))
    return AssertionError(f"{what + ': ' if what else ''}{name} not true within {timeout}s (last value: {value!r})")
