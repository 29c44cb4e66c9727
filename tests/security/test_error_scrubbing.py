"""Finding 6: a provider's error text is scrubbed before it leaves the worker; the audit database is private.

The attack (or the accident): an upstream answers 401 echoing the key it was sent, or 500 with a connection
string and the addresses of its machines. None of it may come back in the 502, be kept in the trace, or be
written to the audit database; and that database's files are readable by their owner only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.fakes.providers import Fault
from tests.support.api import wait_trace

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
