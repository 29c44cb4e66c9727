"""Finding 6: a provider's error text is scrubbed before it leaves the worker; the audit database is private.

The attack (or the accident): an upstream answers 401 echoing the key it was sent, or 500 with a connection
string and the addresses of its machines. None of it may come back in the 502, be kept in the trace, or be
written to the audit database; and that database's files are readable by their owner only. What an operator
needs to debug the provider (its status and error body, scrubbed the same way) is kept as each attempt's
``detail``, shown in the trace to an operator key only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import httpx

from tests.fakes.providers import Fault
from tests.support.api import wait_trace
from tests.support.governance import bearer, make_key
from tests.support.system import MEMBER_KEY

LEAKED_KEY = "gsk_live_4f9d8a7c6b5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c"
PASSWORD = "hunter2-Sup3rSecret"
DSN = f"postgres://billing_admin:{PASSWORD}@pg-primary.billing.internal:5432/ledger"
INTERNAL_IP = "10.42.7.19"
INTERNAL_HOST = "ip-10-42-7-19.eu-west-1.compute.internal"
SECRETS = (LEAKED_KEY, PASSWORD, "billing_admin", DSN, INTERNAL_IP, INTERNAL_HOST, "pg-primary.billing.internal")

FAULTS = {
    401: f"Incorrect API key provided: {LEAKED_KEY}. You can find your API key at https://console.groq.com/keys.",
    500: f"upstream database error: could not connect to {DSN} (server {INTERNAL_IP}:5432, "
         f"via {INTERNAL_HOST}); Authorization: Bearer {LEAKED_KEY}",
}


def audit_files(system) -> list[Path]:
    data = Path(system.deps.settings.data_dir)
    return sorted(p for p in data.iterdir() if p.name.startswith("audit.db"))


@pytest.mark.parametrize("status", sorted(FAULTS))
async def test_a_provider_error_is_scrubbed_before_the_client_the_trace_and_the_audit_db(secure, fakes, status):
    fakes.always("openai", Fault(status=status, message=FAULTS[status]))
    try:
        r = await secure.http.post("/v1/chat/completions",
                                   json={"model": "m-openai", "messages": [{"role": "user", "content": "hi"}]})
    finally:
        fakes.always("openai", None)
    assert r.status_code == 502, r.text
    assert fakes.requests_to("openai"), "the fake upstream was called"
    message = r.json()["error"]["message"]
    assert "[redacted]" in message or "[internal]" in message, message
    for secret in SECRETS:
        assert secret not in r.text, (secret, r.text)

    trace = await wait_trace(secure, r.headers["x-request-id"], "failed")
    text = str(trace)
    for secret in SECRETS:
        assert secret not in text, (secret, text)

    # Whatever the audit wrote (the database and its write-ahead log) holds none of it either.
    files = audit_files(secure)
    assert files
    blob = b"".join(p.read_bytes() for p in files)
    for secret in SECRETS:
        assert secret.encode() not in blob, secret


async def test_the_audit_database_files_are_readable_by_their_owner_only(secure):
    await wait_trace(secure, (await secure.http.post(
        "/v1/chat/completions", json={"model": "closed-1", "messages": [{"role": "user", "content": "hi"}]}
    )).headers["x-request-id"], "succeeded")
    files = audit_files(secure)
    assert {p.name for p in files} >= {"audit.db"}
    for p in files:
        mode = stat.S_IMODE(os.stat(p).st_mode)
        assert mode == 0o600, (p.name, oct(mode))


async def fail_upstream(system, fakes, status: int, key: str | None = None) -> str:
    """Send one request that the fake upstream fails with ``status`` (under ``key``, else the operator's); its id."""
    headers = bearer(key) if key else {}
    fakes.always("openai", Fault(status=status, message=FAULTS[status]))
    try:
        r = await system.http.post("/v1/chat/completions", headers=headers,
                                   json={"model": "m-openai", "messages": [{"role": "user", "content": "hi"}]})
    finally:
        fakes.always("openai", None)
    assert r.status_code == 502, r.text
    return r.headers["x-request-id"]


@pytest.mark.parametrize("status", sorted(FAULTS))
async def test_an_operator_sees_the_scrubbed_upstream_detail_and_no_tenant_key_does(secure, fakes, status):
    rid = await fail_upstream(secure, fakes, status)
    trace = await wait_trace(secure, rid, "failed")  # read with the operator's key
    attempt = trace["attempts"][-1]
    detail = attempt["detail"]
    # The upstream's own context, beyond the client's message: its status and its error body's type and code.
    assert f"HTTP {status}" in detail, detail
    wire_type = "invalid_request_error" if status == 401 else "server_error"
    assert wire_type in detail and '"error"' in detail, detail
    assert detail != attempt["error"]["message"] and len(detail) > len(attempt["error"]["message"]), detail
    assert "[redacted]" in detail, detail
    if status == 500:
        assert "[internal]" in detail, detail
    for secret in SECRETS:
        assert secret not in detail, (secret, detail)

    # A tenant admin of the same tenant, and a member, read the same trace (and a member its own): no detail.
    tenant_admin, meta = await make_key(secure.http, "team-a", role="admin")
    assert meta["role"] == "admin" and not meta["operator"]
    own = await fail_upstream(secure, fakes, status, key=MEMBER_KEY)
    await wait_trace(secure, own, "failed")
    for key in (tenant_admin, MEMBER_KEY):
        async with httpx.AsyncClient(base_url=secure.base_url, headers=bearer(key)) as client:
            for request_id in (rid, own):
                r = await client.get(f"/v1/requests/{request_id}")
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["attempts"] and all("detail" not in a for a in body["attempts"]), body
                assert '"detail"' not in r.text, r.text

    # The audit database keeps the detail, and still none of the secrets.
    blob = b"".join(p.read_bytes() for p in audit_files(secure))
    assert f"returned HTTP {status}".encode() in blob
    for secret in SECRETS:
        assert secret.encode() not in blob, secret
