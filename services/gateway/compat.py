"""The small endpoints SDKs call around completions: one model (``GET /v1/models/{id}``) and Anthropic's token
count (``POST /v1/messages/count_tokens``).

Both answer from this process's catalog and the request alone (no bus): a
model is listed if at least one configured deployment can serve it; the token
count is the same measurement admission uses for the context-window check,
the rate limits and the budget reservation (``measure_prompt``), so what a
client counts is what it is charged against.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import anthropic_format as anthropic
from services.gateway.settings import GatewaySettings
from services.gateway.web import error_response, principal_of, read_body
from services.ops import json_response
from shared.auth import KeyStore
from shared.canonical import estimate_prompt_tokens
from shared.catalog import Catalog
from shared.errors import InvalidRequest, NotFound, SwitchyardError
from shared.openai_format import model_object


class Compat:
    """``GET /v1/models/{id}`` and ``POST /v1/messages/count_tokens``."""

    def __init__(self, keyring: KeyStore, catalog: Catalog, settings: GatewaySettings) -> None:
        self.keyring = keyring
        self.catalog = catalog
        self.settings = settings

    async def model(self, request: Request, model_id: str) -> Response:
        principal_of(self.keyring, request)
        if model_id not in self.catalog.available_models():
            raise NotFound(f"The model '{model_id}' does not exist or is not available on this gateway.",
                           param="model", code="model_not_found")
        spec = self.catalog.models.get(model_id)
        owner = spec.deployments[0].provider if spec is not None else "switchyard"
        return json_response(model_object(model_id, owner))

    async def count_tokens(self, request: Request) -> Response:
        """Anthropic's ``{"input_tokens": n}`` for a Messages request (``max_tokens`` may be left out)."""
        try:
            principal_of(self.keyring, request)
            body = await read_body(request, self.settings.max_body_bytes)
            try:
                raw = msgspec.json.decode(body) if body.strip() else None
            except msgspec.DecodeError as exc:
                raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
            if not isinstance(raw, dict):
                raise InvalidRequest("expected a JSON Messages request")
            if raw.get("max_tokens") is None:  # counting needs no output cap; the Messages parser wants one
                raw["max_tokens"] = 1
            raw.pop("stream", None)
            chat = anthropic.parse_messages_request(msgspec.json.encode(raw), self.settings.max_body_bytes)
            self.catalog.check_servable(chat.model)
            return json_response({"input_tokens": estimate_prompt_tokens(chat)})
        except SwitchyardError as exc:
            info = exc.info()
            return error_response(info, body=anthropic.render_error(info))
