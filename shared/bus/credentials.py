"""How a process proves its role to NATS: user and password (or a .creds file), TLS, and its own inbox space.

The user is the settings' ``user`` when set; otherwise, with ``passwords_file``
(the embedded server's), the role of the process's targets (``Access.user``),
with that role's password from the file. Replies (JetStream API answers, pull
deliveries, request/reply) arrive under ``_INBOX.<user>``, the only inbox space
the user may subscribe to (``shared.bus.permissions``).
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.settings import NatsSettings

if TYPE_CHECKING:  # the role table imports the buckets, which import the bus: types only here
    from shared.bus.permissions import Access


log = logging.getLogger("switchyard.bus")


def inbox_prefix(user: str) -> str:
    """Where a user's replies arrive: its own inbox space, which no other role may subscribe to."""
    return f"_INBOX.{user}"


def identity(settings: NatsSettings, access: "Access | None") -> tuple[str | None, str | None]:
    """(user, password) this process connects with; (None, None) for a server without authentication."""
    if settings.user:
        if access is not None and settings.user not in (access.user, "operator"):
            log.warning("NATS user %r is not this process's role %r: the server will refuse what %s does beyond it",
                        settings.user, access.user, access.user)
        return settings.user, settings.password.get_secret_value() if settings.password else None
    if settings.passwords_file and access is not None:
        passwords = json.loads(Path(settings.passwords_file).read_text())
        if access.user not in passwords:
            raise RuntimeError(f"{settings.passwords_file} has no password for the bus user {access.user!r}")
        return access.user, passwords[access.user]
    return None, None


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """A client TLS context when any TLS file is configured (the CA verifies the server; cert and key are ours)."""
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca_file)
    if settings.tls_cert_file:
        ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return ctx


def connect_options(settings: NatsSettings, access: "Access | None") -> dict[str, Any]:
    """The authentication, TLS and inbox keyword arguments of ``nats.connect``."""
    out: dict[str, Any] = {}
    user, password = identity(settings, access)
    if settings.creds_file:
        out["user_credentials"] = settings.creds_file
    elif user is not None:
        out.update(user=user, password=password)
    name = user or (access.user if access is not None else None)
    if name:
        out["inbox_prefix"] = inbox_prefix(name)
    ctx = tls_context(settings)
    if ctx is not None:
        out["tls"] = ctx
    return out
