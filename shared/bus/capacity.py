"""How full the event stream is, and the gate that keeps room in it for work already accepted.

The stream never evicts accepted work: at its limits (``max_bytes``,
``max_msgs``) it refuses new messages (discard new). Every stage after the
gateway publishes before it acknowledges, so a stream filled to the brim by new
requests would stop the pipeline too. The gateway therefore accepts new
requests only while the stream is less than ``admit_below`` full; the rest is
room for accepted work to move on. How full it is comes from a poll of the
stream's state every ``capacity_poll_s`` (one API call, off the request path),
so the check a request pays is one comparison. Should the stream still refuse
a request's first event (a burst between two polls), that request is refused
the same way: 503, not accepted, with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from shared.errors import ServiceUnavailable

if TYPE_CHECKING:
    from shared.bus.core import Bus

log = logging.getLogger("switchyard.bus")

FULL_CODE = "stream_full"
# What nats-server answers a publish to a full discard-new stream (JSStreamStoreFailedF, err_code 10077).
_FULL = ("maximum bytes exceeded", "maximum messages exceeded")


def is_full(exc: BaseException) -> bool:
    """Whether a publish was refused because the stream is at one of its limits."""
    text = (getattr(exc, "description", None) or str(exc)).lower()
    return any(f in text for f in _FULL)


def full_error(retry_after_s: float, fill: float | None = None) -> ServiceUnavailable:
    """The refusal of a request the stream has no room for: it was not accepted and will never run."""
    how = f" ({fill:.0%} full)" if fill is not None else ""
    return ServiceUnavailable(f"Switchyard is at capacity: the event stream is full{how}, so the request was not "
                              f"accepted and will not run. Retry after {retry_after_s:g} s.", code=FULL_CODE,
                              retry_after=retry_after_s)


class StreamCapacity:
    """The stream's fill, polled; ``check`` refuses new work above the watermark."""

    def __init__(self, bus: "Bus") -> None:
        self.bus = bus
        self.fill = 0.0  # the larger of bytes / max_bytes and messages / max_msgs at the last poll
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Poll from now on (once per bus; a no-op before it is connected)."""
        if self._task is None and self.bus.js is not None:
            self._task = self.bus.start(self._run())

    async def _run(self) -> None:
        s = self.bus.settings
        failing = False
        while True:
            try:
                self.observe(await self.bus.js.stream_info(s.stream))
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the last reading; the publish itself still checks
                if not failing:
                    log.warning("could not read how full stream %s is: %r", s.stream, exc)
                failing = True
            await asyncio.sleep(s.capacity_poll_s)

    def observe(self, info) -> None:
        """Take a ``StreamInfo``'s state and limits as the current fill."""
        state, cfg = info.state, info.config
        ratios = [state.bytes / cfg.max_bytes if cfg.max_bytes and cfg.max_bytes > 0 else 0.0,
                  state.messages / cfg.max_msgs if cfg.max_msgs and cfg.max_msgs > 0 else 0.0]
        self.fill = max(ratios)
        self.bus.telemetry.metrics.stream_fill.labels(self.bus.settings.stream).set(self.fill)

    def check(self) -> None:
        """Raise the not-accepted refusal when the stream is too full for new work."""
        self.start()
        s = self.bus.settings
        if self.fill >= s.admit_below:
            self.bus.telemetry.metrics.not_accepted.labels(FULL_CODE).inc()
            raise full_error(s.full_retry_after_s, self.fill)
