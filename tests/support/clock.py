"""Clocks a test moves forward, so that expiry and windows are tested without waiting for them."""

from __future__ import annotations

import time


class SteppedClock:
    """Wall time plus an offset the test advances: code that stamps times by the wall clock (an API computing
    ``expires_in_s``) and code reading this clock (the key store) agree until the test skips ahead."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move this clock ``seconds`` ahead of the wall clock (it never goes back)."""
        assert seconds >= 0, "a clock only moves forward"
        self.offset += seconds


class ManualClock:
    """A clock that stands still until the test moves it: exact times for pure functions and state machines."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
