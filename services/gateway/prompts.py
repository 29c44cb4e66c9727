"""Prompt templates at the gateway: the admin endpoints, and rendering a request that references one.

    POST /v1/admin/prompts                               create a template (its version 1, active)
    GET  /v1/admin/prompts                               list the tenant's templates
    GET  /v1/admin/prompts/{id}                          one template and its active version
    POST /v1/admin/prompts/{id}/versions                 a new version ({"activate": true} makes it active)
    GET  /v1/admin/prompts/{id}/versions/{version}       one version
    POST /v1/admin/prompts/{id}/active                   set the active version ({"version": n})

Admin keys, inside their own tenant (the operator's may name another with
``tenant``), like the rest of the admin API. Any key of the tenant may
reference a template in a request; ``render`` does it before the request is
published, so policy's risk and PII checks see the final text (see
``templates.py`` for the language and the rules).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import templates as t
from services.gateway.admin import Admin
from services.gateway.handlers import decode_body
from services.gateway.web import SMALL_BODY_BYTES, read_body
from services.ops import json_response
from shared.auth import Principal
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.events import PromptRef
from shared.ids import SAFE_NAME
from shared.state.prompts import PromptStore, TemplateExists, TemplateVersion
from shared.state.stores import Stores

_template_decoder = msgspec.json.Decoder(t.TemplateIn)


class ActiveIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/admin/prompts/{id}/active."""

    version: Annotated[int, Meta(ge=1)]
    tenant: str | None = None


_active_decoder = msgspec.json.Decoder(ActiveIn)


class Prompts:
    """The template endpoints, and the step that renders a referencing request, over the tenant's template store."""

    def __init__(self, admin: Admin, stores: Stores) -> None:
        self.admin = admin
        self.stores = stores

    async def _store(self) -> PromptStore:
        return await self.stores.prompts()

    # ---- requests ------------------------------------------------------------------------

    async def render(self, body: bytes, principal: Principal,
                     api: str = "chat.completions") -> tuple[bytes, PromptRef | None]:
        """The request body with its template rendered in, and which version it was; unchanged without one.

        Chat completions (sync, streamed, jobs) only: another API naming a template gets a 400 rather than a
        reference that would travel unrendered."""
        if b'"prompt"' not in body:  # the common case costs one substring search
            return body, None
        try:
            raw = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return body, None  # the dialect's parser says what is wrong with it
        if not isinstance(raw, dict):
            return body, None
        ref = t.prompt_reference(raw)
        if ref is None:
            return body, None
        if api != "chat.completions":
            raise InvalidRequest("prompt templates are rendered for chat completions (/v1/chat/completions, "
                                 "/v1/jobs) only", param="switchyard.prompt")
        version = await self._resolve(principal.tenant, ref.id, ref.version)
        return msgspec.json.encode(t.applied(raw, version, ref.variables)), t.reference(version)

    async def _resolve(self, tenant: str, template: str, number: int | None) -> TemplateVersion:
        if not SAFE_NAME.match(template):
            raise t.missing(template, None)
        store = await self._store()
        if number is None:
            head = await store.head(tenant, template)
            if head is None or head.active == 0:
                raise t.missing(template, None)
            number = head.active
        version = await store.version(tenant, template, number)
        if version is None:
            if await store.head(tenant, template) is None:
                raise t.missing(template, None)
            raise t.missing(template, number)
        return version

    # ---- admin ---------------------------------------------------------------------------

    async def _template_in(self, request: Request) -> t.TemplateIn:
        body = decode_body(await read_body(request, SMALL_BODY_BYTES), _template_decoder, SMALL_BODY_BYTES,
                           "prompt template")
        t.check_template(body)
        return body

    async def create(self, request: Request) -> Response:
        self.admin.admin_in(request, None)  # an admin key before anything else is read
        body = await self._template_in(request)
        p, tenant = self.admin.admin_in(request, body.tenant)
        if body.id is None or not SAFE_NAME.match(body.id):
            raise InvalidRequest("id must be 1-63 lowercase letters, digits, '-' or '_'", param="id")
        try:
            head, version = await (await self._store()).create(t.version_of(body, tenant, body.id, p.key_id),
                                                               body.description)
        except TemplateExists as exc:
            raise Conflict(str(exc), code="prompt_exists") from None
        return json_response({**head.public(), "version": version.public()}, status=201)

    async def list_prompts(self, request: Request) -> Response:
        _, tenant = self.admin.admin_in(request, request.query_params.get("tenant"))
        heads = await (await self._store()).list(tenant)
        return json_response({"object": "list", "data": [h.public() for h in heads]})

    async def get_prompt(self, request: Request, prompt_id: str) -> Response:
        _, tenant = self.admin.admin_in(request, request.query_params.get("tenant"))
        store = await self._store()
        head = await store.head(tenant, prompt_id) if SAFE_NAME.match(prompt_id) else None
        if head is None:
            raise NotFound(f"No prompt template '{prompt_id}'.", param="prompt_id", code="prompt_not_found")
        active = await store.version(tenant, prompt_id, head.active) if head.active else None
        return json_response({**head.public(), "active": active.public() if active else None})

    async def add_version(self, request: Request, prompt_id: str) -> Response:
        self.admin.admin_in(request, None)
        body = await self._template_in(request)
        p, tenant = self.admin.admin_in(request, body.tenant or request.query_params.get("tenant"))
        if body.id is not None and body.id != prompt_id:
            raise InvalidRequest("id is the template's, in the path; leave it out", param="id")
        if not SAFE_NAME.match(prompt_id):
            raise NotFound(f"No prompt template '{prompt_id}'.", param="prompt_id", code="prompt_not_found")
        try:
            head, version = await (await self._store()).add_version(
                t.version_of(body, tenant, prompt_id, p.key_id), activate=body.activate)
        except LookupError:
            raise NotFound(f"No prompt template '{prompt_id}'.", param="prompt_id", code="prompt_not_found") from None
        return json_response({**head.public(), "version": version.public()}, status=201)

    async def get_version(self, request: Request, prompt_id: str, version: str) -> Response:
        _, tenant = self.admin.admin_in(request, request.query_params.get("tenant"))
        number = int(version) if version.isdigit() else 0
        found = await (await self._store()).version(tenant, prompt_id, number) \
            if SAFE_NAME.match(prompt_id) and number > 0 else None
        if found is None:
            raise NotFound(f"Prompt template '{prompt_id}' has no version {version}.", param="version",
                           code="prompt_version_not_found")
        return json_response(found.public())

    async def activate(self, request: Request, prompt_id: str) -> Response:
        self.admin.admin_in(request, None)
        body: ActiveIn = decode_body(await read_body(request, SMALL_BODY_BYTES), _active_decoder, SMALL_BODY_BYTES,
                                     "active version")
        _, tenant = self.admin.admin_in(request, body.tenant or request.query_params.get("tenant"))
        store = await self._store()
        if not SAFE_NAME.match(prompt_id) or await store.head(tenant, prompt_id) is None:
            raise NotFound(f"No prompt template '{prompt_id}'.", param="prompt_id", code="prompt_not_found")
        if await store.version(tenant, prompt_id, body.version) is None:
            raise NotFound(f"Prompt template '{prompt_id}' has no version {body.version}.", param="version",
                           code="prompt_version_not_found")
        head = await store.activate(tenant, prompt_id, body.version)
        return json_response(head.public())
