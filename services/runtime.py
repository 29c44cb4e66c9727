"""What a running service is handed: ``Deps``, built once per process by the composition root.

Every service's ``run(deps, arg)`` takes a ``Deps``; nothing here knows a
particular service. Stages that one target may call in-process on another
(stage fusion) are reached through the typed ``LocalStages``, filled by the
target that provides them, so no service imports another to call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol, Sequence

from shared.auth import KeyStore
from shared.bus import Bus
from shared.catalog import Catalog
from shared.events import Event
from shared.state.stores import Stores
from shared.telemetry import Telemetry
from services.targets import Shape

if TYPE_CHECKING:
    from services.settings import Settings


class Fuser(Protocol):
    """A stage that can finish another's work in-process: routes the ``RequestAdmitted`` among ``out`` now."""

    async def fuse(self, out: Sequence[Event],
                   publish: Callable[[Sequence[Event]], Awaitable[None]]) -> list[Event]: ...


@dataclass
class LocalStages:
    """Stages this process runs that another of its targets may call directly (stage fusion)."""

    # The router's handlers, so a co-located policy routes an admitted request without one more bus hop.
    router: Fuser | None = None


@dataclass
class Deps:
    """Everything a service needs, built once per process."""

    settings: "Settings"
    telemetry: Telemetry
    bus: Bus
    catalog: Catalog
    keyring: KeyStore
    targets: list[str]
    stores: Stores  # the shared KV stores (teams, budgets, rate limits, health), one set per process
    ready: dict[str, bool] = field(default_factory=dict)
    local: LocalStages = field(default_factory=LocalStages)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Shutdown's first steps (stop taking new work, finish what is held), run before the bus drains.
    on_drain: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    draining: bool = False  # set on SIGTERM: /readyz answers 503 so load balancers stop sending work

    @property
    def shape(self) -> Shape:
        """What the target table derives from this process's targets (one source: ``targets``)."""
        return Shape.of(self.targets)

    def is_ready(self) -> bool:
        return not self.draining and self.bus.connected and all(self.ready.get(t, False) for t in self.targets)
