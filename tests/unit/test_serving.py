"""The batch lane's yield to the API of its process (shared/bus/serving.py): when it is busy, how far it
shrinks, when it is quiet again, and who is told."""

from __future__ import annotations

from shared.bus.serving import Serving


def test_busy_at_the_threshold_quiet_at_half_of_it():
    s = Serving(busy_at=4, window=2)
    quiet: list[int] = []
    s.on_quiet(lambda: quiet.append(s.active))
    for _ in range(3):
        s.started()
    assert not s.busy and s.window(64) == 64
    s.started()
    assert s.busy and s.window(64) == 2 and s.window(1) == 1  # never more than the full window
    s.finished()  # 3 left: still busy (no flapping around the threshold)
    assert s.busy and not quiet
    s.finished()  # 2 left: half the threshold
    assert not s.busy and s.window(64) == 64 and quiet == [2]
    s.finished()
    s.finished()
    assert s.active == 0 and quiet == [2]


def test_zero_never_yields_and_the_window_is_never_empty():
    s = Serving(busy_at=0)
    for _ in range(1000):
        s.started()
    assert not s.busy and s.window(64) == 64
    s = Serving(busy_at=1, window=0)
    s.started()
    assert s.window(64) == 1  # a window of at least one message: the lane never stops
