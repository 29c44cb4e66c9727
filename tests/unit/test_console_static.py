"""The console's static files (services/gateway/console.py) without a browser: what is served, with which
headers, that no request reaches outside the folder, that the page holds no inline script and never writes
HTML from data, and that every file ships in the installed package."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from fastapi import FastAPI

from services.gateway.console import CONSOLE_CSP, STATIC_ROOT, Console, StaticFolder, install_console
from shared.errors import NotFound

ROOT = Path(__file__).resolve().parents[2]


async def get(app, raw_path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET through the ASGI app with the path exactly as given (percent-decoded as a server would)."""
    from urllib.parse import unquote

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote(raw_path), "raw_path": raw_path.encode(), "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    head = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], head, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def app() -> FastAPI:
    from services.gateway.app import install_error_handlers

    built = FastAPI(docs_url=None, redoc_url=None)
    install_error_handlers(built)
    install_console(built)
    return built


async def test_the_page_goes_out_with_a_strict_content_security_policy(app):
    status, head, body = await get(app, "/ui/")
    assert status == 200 and head["content-type"].startswith("text/html")
    csp = dict(part.strip().split(" ", 1) for part in head["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert "unsafe" not in head["content-security-policy"] and head["content-security-policy"] == CONSOLE_CSP
    assert head["x-content-type-options"] == "nosniff" and head["x-frame-options"] == "DENY"
    scripts = re.findall(rb"<script\b[^>]*>", body)
    assert scripts and all(b'src="/ui/' in tag for tag in scripts)  # no inline script, nothing from elsewhere
    assert len(re.findall(rb"<script\b[^>]*>\s*</script>", body)) == len(scripts)  # each one empty
    status, head, _ = await get(app, "/ui/", {"if-none-match": head["etag"]})
    assert status == 304


async def test_root_and_ui_lead_to_the_console_and_docs_load_nothing_from_a_cdn(app):
    for path in ("/", "/ui"):
        status, head, _ = await get(app, path)
        assert (status, head["location"]) == (307, "/ui/")
    status, head, body = await get(app, "/docs")
    assert status == 200 and "script-src 'self';" in head["content-security-policy"]
    assert re.findall(rb'(?:src|href)="(https?:)?//', body) == []
    for asset in re.findall(rb'(?:src|href)="(/ui/[^"]+)"', body):
        assert (await get(app, asset.decode()))[0] == 200, asset


async def test_no_request_reaches_a_file_outside_the_folder(app):
    for path in ("/ui/../console.py", "/ui/..%2fconsole.py", "/ui/%2e%2e/app.py", "/ui/vendor/../../console.py",
                 "/ui//etc/passwd", "/ui/%2fetc%2fpasswd", "/ui/pages/../../console.py", "/ui/./index.html",
                 "/ui/\\..\\console.py", "/ui/vendor/swagger-ui/../../../console.py"):
        status, head, body = await get(app, path)
        assert status == 404, path
        assert head["content-type"] == "application/json" and b"import" not in body, path


def test_the_folder_table_holds_only_its_own_visible_files(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.js").write_text("export {};")
    (tmp_path / "site" / ".secret.js").write_text("no")
    (tmp_path / "site" / "tool.exe").write_bytes(b"MZ")
    (tmp_path / "outside.js").write_text("no")
    folder = StaticFolder(tmp_path / "site")
    assert set(folder.files) == {"a.js"}
    with pytest.raises(NotFound):
        folder.response("../outside.js", request=None)  # type: ignore[arg-type]


def test_the_console_never_writes_html_from_data():
    """Everything the API returns reaches the page as text nodes or attribute values (dom.js ``h``)."""
    sources = [p for p in STATIC_ROOT.rglob("*.js") if "vendor" not in p.parts]
    assert len(sources) >= 8
    for path in sources:
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                     "setAttribute(\"style\"", "localStorage"):
            assert sink not in text, f"{path.name} uses {sink}"


def test_every_console_file_is_in_the_installed_package():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["services.gateway"]
    package = ROOT / "services" / "gateway"
    files = [p.relative_to(package).as_posix() for p in STATIC_ROOT.rglob("*") if p.is_file()]
    assert "console/index.html" in files and "console/vendor/swagger-ui/swagger-ui-bundle.js" in files
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) and name.count("/") == pat.count("/") for pat in patterns), name
    served = Console().static.files
    assert {"index.html", "app.js", "app.css", "docs.js", "vendor/swagger-ui/swagger-ui-bundle.js",
            "vendor/swagger-ui/swagger-ui.css", "vendor/swagger-ui/LICENSE"} <= set(served)
