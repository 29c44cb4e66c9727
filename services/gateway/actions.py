"""The audit trail of the gateway's own changes: keys, teams, breakers and cache purges, published as events.

Each change the admin and breaker endpoints make is published, after it is
made, as an ``AdminAction`` on ``sy.evt.admin.<action>`` (its id as
``Nats-Msg-Id``), which audit records in the audit trail and the audit export
ships. Metadata only: the key ids, team names, settings and deployments
involved and who acted, never a key itself.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from shared.auth import Principal
from shared.events import Event, admin_action

log = logging.getLogger("switchyard.gateway")

Publish = Callable[[Event], Awaitable[Any]]


class Actions:
    """Publishes what an admin or operator changed (a no-op without a bus, as in unit tests of the endpoints)."""

    def __init__(self, publish: Publish | None) -> None:
        self._publish = publish

    async def record(self, action: str, actor: Principal, *, tenant: str, team: str, subject_id: str,
                     detail: dict[str, Any] | None = None) -> None:
        """Publish one action; the change is already made, so a bus that stays down is logged, not raised."""
        if self._publish is None:
            return
        event = admin_action(action, tenant=tenant, team=team, actor=actor.key_id, subject_id=subject_id,
                             detail=detail)
        try:
            await self._publish(event)
        except Exception as exc:  # noqa: BLE001 - the change stands; the operator must learn the trail missed it
            log.error("audit trail: could not publish %s on %s by %s (%s): %r", action, subject_id, actor.key_id,
                      event.event_id, exc)
