"""Schemathesis against the live OpenAPI document of a running system: no server error, no schema violation.

Every operation the document lists is generated against (coverage and
fuzzing phases, a few examples each, deterministic), authenticated with the
operator's admin key, on the built-in catalog. The checks: no 5xx; every
status answered is declared; every body and content type matches what is
declared for it; declared response headers are present; a method a path does
not have gets a 405 whose ``Allow`` lists the methods it has. What is not checked,
and why: schemathesis' "positive data acceptance" (a schema-valid request
may still be refused for what a schema cannot say -- an unknown model, a
tool_choice naming no offered tool, a budget -- and those 4xx are declared),
and the stateful phase (the document declares no links).

One ordering matters and is said here rather than hidden: the key-revoking
and key-rotating operations run in a second pass, with a key of their own,
because the fuzzer reads key ids from ``GET /v1/admin/keys`` and would
otherwise revoke the key the rest of the run authenticates with.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from shared.natsd import NatsServer
from tests.support.system import ADMIN_KEY, make_settings, start_system

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance,unsupported_method,allow_header_conformance")
KEY_MUTATIONS = r"^/v1/admin/keys/\{key_id\}/(revoke|rotate)$"


@pytest.fixture(scope="module")
async def system(tmp_path_factory):
    """The embedded default: the built-in catalog (the mock provider), on a bus of its own."""
    root = tmp_path_factory.mktemp("openapi")
    nats = NatsServer(root / "nats").start()
    running = await start_system(make_settings(nats, root / "data", catalog_path=None))
    yield running
    await running.close()
    nats.stop()


async def schemathesis(system, key: str, *selection: str, examples: int, cwd) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{system.base_url}/openapi.json",
        "--header", f"Authorization: Bearer {key}", "--checks", CHECKS, "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(examples), "--generation-deterministic",
        "--generation-with-security-parameters", "false",
        "--request-timeout", "30", "--no-color", *selection,
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    return proc.returncode, text[text.find("FAILURES"):][:8000] if "FAILURES" in text else text[-3000:]


async def test_no_server_error_and_no_schema_violation(system, tmp_path):
    doc = (await system.http.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}
    wrong = await system.http.delete("/v1/admin/keys")  # two routes share the path: both methods are named
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    code, out = await schemathesis(system, ADMIN_KEY, "--exclude-path-regex", KEY_MUTATIONS, examples=6, cwd=tmp_path)
    assert code == 0, out
    assert "Authentication failed" not in out, out  # the run was authenticated throughout
    created = await system.http.post("/v1/admin/keys", json={"team": "default", "role": "admin",
                                                              "name": "schemathesis key mutations"})
    assert created.status_code == 201, created.text
    code, out = await schemathesis(system, created.json()["key"], "--include-path-regex", KEY_MUTATIONS,
                                   examples=6, cwd=tmp_path)
    assert code == 0, out
