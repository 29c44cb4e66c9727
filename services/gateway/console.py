"""The web console at ``/ui/`` and the API reference at ``/docs``, both served from files in this package.

    GET /            → 307 to /ui/
    GET /ui          → 307 to /ui/
    GET /ui/         the console (a single page: plain ES modules, no build step; docs/console.md)
    GET /ui/{file}   one of the console's files, or a vendored asset (vendor/*/, each with its licence)
    GET /docs        Swagger UI over /openapi.json, with its JavaScript and CSS from vendor/swagger-ui/

Nothing is fetched from a CDN: the console and ``/docs`` work on a machine
without internet. The console calls the same JSON API as any client, with the
API key the user signed in with (kept in the browser's session storage, sent
as ``Authorization: Bearer``); these routes themselves need no key, as they
hold no data.

Every file under ``console/`` is read once when the gateway starts, into a
table keyed by its path relative to that folder; a request names a key of the
table and is never joined to a path on disk, so ``..``, encoded slashes or
absolute paths cannot reach any other file. HTML pages go out with a strict
Content-Security-Policy (scripts from this origin only, no inline script, no
third-party connection), so even a rendering bug cannot run injected code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from shared.errors import NotFound

STATIC_ROOT = Path(__file__).with_name("console")
UI_PREFIX = "/ui/"

# The console: its own scripts and styles only; API calls to this origin only; no frames, no forms posted away.
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# Swagger UI sets style attributes in its markup (React), hence 'unsafe-inline' for styles; scripts stay 'self'.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}

_DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Switchyard API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/ui/vendor/swagger-ui/swagger-ui.css">
<link rel="icon" type="image/png" href="/ui/vendor/swagger-ui/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/ui/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/ui/docs.js"></script>
</body>
</html>
""".encode()


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of the console, as it is served."""

    body: bytes
    media_type: str
    etag: str


def _security_headers(csp: str | None) -> dict[str, str]:
    headers = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
    if csp:
        headers["Content-Security-Policy"] = csp
    return headers


class StaticFolder:
    """Every file under a folder, read once: looked up by relative name, so no request reaches outside it."""

    def __init__(self, root: Path) -> None:
        self.files: dict[str, StaticFile] = {}
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):
                continue
            body = path.read_bytes()
            kind = _TYPES.get(path.suffix, "text/plain; charset=utf-8" if path.suffix == "" else None)
            if kind is None:
                continue  # a kind of file the console does not use is not served
            self.files[rel] = StaticFile(body, kind, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    def response(self, name: str, request: Request, csp: str | None = None) -> Response:
        """The file called ``name`` (304 when the browser has it), or 404 in OpenAI's error shape."""
        found = self.files.get(name)
        if found is None:
            raise NotFound(f"No file '{name}' in the console.", param="path")
        headers = {**_security_headers(csp), "ETag": found.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)


class Console:
    """The console's and /docs' routes over one static folder."""

    def __init__(self, root: Path = STATIC_ROOT) -> None:
        self.static = StaticFolder(root)

    async def to_console(self, request: Request) -> Response:
        """``/`` and ``/ui``: the console's page."""
        return RedirectResponse(UI_PREFIX, status_code=307)

    async def page(self, request: Request) -> Response:
        """``/ui/``: the console's single page."""
        return self.static.response("index.html", request, CONSOLE_CSP)

    async def asset(self, request: Request, path: str) -> Response:
        """``/ui/{path}``: one file of the console (HTML ones with the console's policy)."""
        return self.static.response(path, request, CONSOLE_CSP if path.endswith(".html") else None)

    async def docs(self, request: Request) -> Response:
        """``/docs``: Swagger UI from the vendored bundle, configured by ``docs.js`` (no inline script)."""
        return Response(_DOCS_HTML, media_type="text/html; charset=utf-8", headers=_security_headers(DOCS_CSP))


def install_console(app: FastAPI, console: Console | None = None) -> None:
    """The console's routes and /docs served offline (the document's bearer scheme, which "Try it out" sends, is
    declared by ``openapi.install_openapi``).

    The app must be created with ``docs_url=None`` (and ``redoc_url=None``: ReDoc would load from a CDN)."""
    console = console or Console()
    for path, handler in (("/", console.to_console), ("/ui", console.to_console), (UI_PREFIX, console.page),
                          (UI_PREFIX + "{path:path}", console.asset), ("/docs", console.docs)):
        app.add_api_route(path, handler, methods=["GET"], include_in_schema=False)
