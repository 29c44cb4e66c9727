"""``Idempotency-Key`` at the gateway: claim the key before a request is published, answer retries from the claim.

Chat completions, Anthropic messages and embeddings (``Completions``) store their answer for retries; a job's
answer is the job itself, so a retried submission gets the job's current record (``Jobs``). The store and its
rules are ``shared.state.idempotency``; what is guaranteed is docs/reliability.md. Calls without the header
never come here: the hot path keeps no extra KV operation.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from starlette.responses import Response

from services.gateway.web import error_response
from shared.bus import Bus
from shared.errors import Conflict, OutcomeUnknown
from shared.state.buckets import IDEMPOTENCY
from shared.state.idempotency import IdempotencyRecord, IdempotencyStore, fingerprint, replay_error

log = logging.getLogger("switchyard.gateway")

REPLAYED = "idempotent-replayed"  # response header: this answer is the first call's, not a new run
_NOT_STORED = {"content-length", "content-type"}


class Idempotent:
    """Runs a request at most once per tenant and ``Idempotency-Key`` within the store's window."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.store: IdempotencyStore | None = None

    async def start(self) -> None:
        self.store = IdempotencyStore(await self.bus.kv(IDEMPOTENCY))

    async def claim(self, key: str, tenant: str, route: str, body: bytes,
                    request_id: str) -> tuple[str, IdempotencyRecord | None]:
        """(fingerprint, None) when this call owns the key; else the record of the call that does."""
        fp = fingerprint(route, body)
        return fp, await self.store.claim(tenant, key, fp, request_id)

    async def run(self, key: str, tenant: str, route: str, body: bytes, request_id: str, stream: bool,
                  call: Callable[[], Awaitable[Response]]) -> Response:
        """``call`` once for this key: its answer is stored (not a stream's) for every retry to get.

        A call that raised before its request was accepted gives the key back (a retry runs it); one whose
        publish was never acknowledged (``OutcomeUnknown``) keeps it, so no retry can run it twice. A 504 (the
        request goes on) keeps it too: retries get 409 in progress. A request that ended in a server-side failure
        (5xx) gives it back, so a retry runs it again; any other answer (success, 4xx) is stored and replayed.
        """
        fp, existing = await self.claim(key, tenant, route, body, request_id)
        if existing is not None:
            return self.replay(existing, fp, stream)
        try:
            response = await call()
        except OutcomeUnknown:
            raise
        except Exception:
            await self.release(tenant, key)
            raise
        status = response.status_code
        if stream or status == 504:
            return response  # a stream's answer is not kept; a 504's request goes on: retries get 409 in progress
        if status >= 500:
            await self.release(tenant, key)  # ended in a server-side failure: a retry runs it again
            return response
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _NOT_STORED}
        try:
            await self.store.answer(tenant, key, request_id, fp, status, bytes(response.body), headers,
                                    response.media_type or "application/json")
        except Exception as exc:  # noqa: BLE001 - the answer still goes out; retries get 409 in progress
            log.warning("could not store the answer of %s for its Idempotency-Key: %r", request_id, exc)
        return response

    def replay(self, record: IdempotencyRecord, fp: str, stream: bool) -> Response:
        """The answer a retry gets from the first call's record."""
        refused = replay_error(record, fp)
        if refused is None and stream:
            refused = Conflict(f"A streamed request with this Idempotency-Key ({record.request_id}) ran already; "
                               f"streams are not replayed. Its outcome: GET /v1/requests/{record.request_id}.",
                               code="idempotency_in_progress", param="Idempotency-Key")
        if refused is not None:
            return error_response(refused.info(), {"x-request-id": record.request_id, REPLAYED: "true"})
        return Response(record.body, status_code=record.status, media_type=record.media_type,
                        headers={**(record.headers or {}), REPLAYED: "true"})

    async def release(self, tenant: str, key: str) -> None:
        """Give a claimed key back (its request was not accepted, or ended failing): a retry runs it."""
        try:
            await self.store.release(tenant, key)
        except Exception as exc:  # noqa: BLE001 - the key then stays claimed until it expires
            log.warning("could not release an Idempotency-Key: %r", exc)
