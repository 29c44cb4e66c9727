"""Prompt templates per tenant in JetStream KV (``sy_prompts``): immutable versions and a head naming the active one.

KV layout::

    <tenant>.<id>.head     TemplateHead      description, the latest version number, the active one
    <tenant>.<id>.v<n>     TemplateVersion   one version: messages with ``{{variables}}``, their types, defaults,
                                             the optional default model and parameters (never changed once written)

A template is created as a head with no versions and then its first version.
A new version takes the next free number with a create-only write (two
admins adding a version at once get two numbers, never one overwriting the
other), then moves the head's ``latest`` (and ``active``, when asked) with
compare-and-set. Rendering (``services/gateway/templates.py``) reads a version
by number, or the head's active one.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Callable, Literal

import msgspec
from msgspec import Meta, Struct
from nats.js.kv import KeyValue

from shared.errors import ServiceUnavailable
from shared.ids import check_name
from shared.state.kv import Codec, cas, create, keys_matching, read

WHAT = "prompt store"
VariableType = Literal["string", "integer", "number", "boolean"]
MAX_VERSIONS_SCAN = 10_000  # bounds the search for a free version number


class Variable(Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A typed template variable; one without a default must be given by every request."""

    type: VariableType = "string"
    default: str | int | float | bool | None = None
    description: Annotated[str, Meta(max_length=1000)] = ""
    max_length: Annotated[int, Meta(ge=1)] | None = None  # strings only


class TemplateMessage(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One message of a template; ``content`` may hold ``{{name}}`` placeholders."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Meta(max_length=200_000)]


class TemplateVersion(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One version of a template, as stored."""

    tenant: str
    id: str
    version: int
    messages: list[TemplateMessage]
    variables: dict[str, Variable] = msgspec.field(default_factory=dict)
    model: str | None = None  # used when a request names none
    parameters: dict[str, Any] | None = None  # defaults for request fields the request leaves out
    description: str = ""
    created_at: float = 0.0
    created_by: str = ""  # the key id of the admin who wrote it

    def public(self) -> dict:
        return {"object": "prompt.version", **msgspec.to_builtins(self)}


class TemplateHead(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A template's name and which of its versions requests get when they name none."""

    tenant: str
    id: str
    description: str = ""
    latest: int = 0
    active: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    def public(self) -> dict:
        return {"object": "prompt", "id": self.id, "tenant": self.tenant, "description": self.description,
                "latest_version": self.latest, "active_version": self.active, "created_at": self.created_at,
                "updated_at": self.updated_at}


class TemplateExists(Exception):
    """A template of that id exists already."""


class PromptStore:
    """Template heads and versions in KV."""

    def __init__(self, kv: KeyValue | None, *, clock: Callable[[], float] = time.time,
                 cas_timeout_s: float = 5.0) -> None:
        self.kv = kv
        self.clock = clock
        self.cas_timeout_s = cas_timeout_s
        self.heads = Codec(TemplateHead)
        self.versions = Codec(TemplateVersion)

    @staticmethod
    def _head_key(tenant: str, template: str) -> str:
        return f"{check_name(tenant, 'tenant')}.{check_name(template, 'template id')}.head"

    @staticmethod
    def _version_key(tenant: str, template: str, version: int) -> str:
        return f"{check_name(tenant, 'tenant')}.{check_name(template, 'template id')}.v{int(version)}"

    async def head(self, tenant: str, template: str) -> TemplateHead | None:
        return await read(self.kv, self._head_key(tenant, template), self.heads, WHAT)

    async def version(self, tenant: str, template: str, version: int) -> TemplateVersion | None:
        return await read(self.kv, self._version_key(tenant, template, version), self.versions, WHAT)

    async def create(self, first: TemplateVersion, description: str = "") -> tuple[TemplateHead, TemplateVersion]:
        """A new template whose version 1 is ``first`` (its ``version`` is ignored), active at once."""
        now = self.clock()
        head = TemplateHead(tenant=first.tenant, id=first.id, description=description, created_at=now, updated_at=now)
        if not await create(self.kv, self._head_key(first.tenant, first.id), self.heads, head, WHAT):
            raise TemplateExists(f"a prompt template '{first.id}' exists already; add a version to it instead")
        return await self.add_version(first, activate=True)

    async def add_version(self, body: TemplateVersion, activate: bool) -> tuple[TemplateHead, TemplateVersion]:
        """Store ``body`` as the template's next version; returns the head after it and the version as stored.

        Raises LookupError when the template does not exist.
        """
        head = await self.head(body.tenant, body.id)
        if head is None:
            raise LookupError(body.id)
        number = head.latest + 1
        while True:
            version = msgspec.structs.replace(body, version=number, created_at=self.clock())
            if await create(self.kv, self._version_key(body.tenant, body.id, number), self.versions, version, WHAT):
                break
            number += 1  # another admin took that number first
            if number > head.latest + MAX_VERSIONS_SCAN:
                raise ServiceUnavailable(f"the {WHAT} could not find a free version number")

        def change(current: TemplateHead | None):
            if current is None:
                return None, None
            active = number if activate or current.active == 0 else current.active
            new = msgspec.structs.replace(current, latest=max(current.latest, number), active=active,
                                          updated_at=self.clock())
            return new, new

        head = await cas(self.kv, self._head_key(body.tenant, body.id), self.heads, change,
                         timeout_s=self.cas_timeout_s, what=WHAT)
        if head is None:
            raise LookupError(body.id)
        return head, version

    async def activate(self, tenant: str, template: str, version: int) -> TemplateHead | None:
        """Make ``version`` the one requests get; None when the template does not exist. The version must."""

        def change(current: TemplateHead | None):
            if current is None:
                return None, None
            new = msgspec.structs.replace(current, active=version, updated_at=self.clock())
            return new, new

        return await cas(self.kv, self._head_key(tenant, template), self.heads, change,
                         timeout_s=self.cas_timeout_s, what=WHAT)

    async def list(self, tenant: str) -> list[TemplateHead]:
        keys = await keys_matching(self.kv, f"{check_name(tenant, 'tenant')}.*.head", WHAT)  # only this tenant's
        out = []
        for key in sorted(keys):
            head = await read(self.kv, key, self.heads, WHAT)
            if head is not None:
                out.append(head)
        return out
