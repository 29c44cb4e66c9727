"""Small asyncio helpers for the hot path."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def wait_future(fut: asyncio.Future[T], timeout: float) -> T:
    """``fut``'s result, or ``TimeoutError`` once ``timeout`` seconds pass (``fut`` then fails with it).

    For a future some callback resolves (a reply, a terminal event): one timer that fails the future costs
    less than ``asyncio.timeout``'s context manager, which cancels and uncancels the waiting task, and the
    hot path waits like this several times per request. Cancelling the waiting task cancels ``fut``.
    """
    expiry = asyncio.get_running_loop().call_later(timeout, _expire, fut)
    try:
        return await fut
    finally:
        expiry.cancel()
