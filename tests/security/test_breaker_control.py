"""Finding 4: a tenant's admin cannot force a provider's breaker for every tenant; only an operator key can.

The attack: with an admin key of its own tenant, a tenant calls ``POST /v1/providers/breaker`` to force
``mock/mock-1`` open (every tenant's mock-1 traffic would stop). It must get 403 and change nothing, while it
(and any key) may still read the status.
"""

from __future__ import annotations

import httpx

from tests.support.governance import bearer, make_key
from tests.support.system import MEMBER_KEY

DEPLOYMENT = "mock/mock-1"


async def breaker_state(http: httpx.AsyncClient, deployment: str) -> str:
    rows = (await http.get("/v1/providers/status")).json()["data"]
    return next(r for r in rows if r["deployment"] == deployment)["breaker"]["state"]


async def test_a_tenant_admin_cannot_force_a_breaker_for_every_tenant(system):
    http = system.http  # the operator's key
    r = await http.post("/v1/admin/teams", json={"name": "breaker-tenant-admins", "tenant": "tenant-b"})
    assert r.status_code == 201, r.text
    tenant_admin, meta = await make_key(http, "breaker-tenant-admins", role="admin", tenant="tenant-b")
    assert meta["role"] == "admin" and not meta["operator"]
    before = await breaker_state(http, DEPLOYMENT)

    async with httpx.AsyncClient(base_url=system.base_url, headers=bearer(tenant_admin)) as attacker:
        for body in ({"deployment": DEPLOYMENT, "action": "force_open"}, {"provider": "mock", "action": "force_open"},
                     {"deployment": DEPLOYMENT, "action": "reset"}):
            r = await attacker.post("/v1/providers/breaker", json=body)
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "permission_denied" and "operator" in r.json()["error"]["message"]
        status = await attacker.get("/v1/providers/status")  # reading the shared health is fine
        assert status.status_code == 200 and any(r["deployment"] == DEPLOYMENT for r in status.json()["data"])

    async with httpx.AsyncClient(base_url=system.base_url, headers=bearer(MEMBER_KEY)) as member:
        r = await member.post("/v1/providers/breaker", json={"deployment": DEPLOYMENT, "action": "force_open"})
        assert r.status_code == 403
        assert (await member.get("/v1/providers/status")).status_code == 200

    assert await breaker_state(http, DEPLOYMENT) == before == "closed"
    # Every tenant's traffic still flows.
    r = await http.post("/v1/chat/completions",
                        json={"model": "mock-1", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200


async def test_the_status_shows_recent_transitions_but_not_which_operator_key_made_them(system):
    deployment = "mock/mock-embed-1"
    http = system.http  # the operator's key
    try:
        for action in ("force_open", "reset"):
            r = await http.post("/v1/providers/breaker", json={"deployment": deployment, "action": action})
            assert r.status_code == 200, r.text
        async with httpx.AsyncClient(base_url=system.base_url, headers=bearer(MEMBER_KEY)) as member:
            rows = (await member.get("/v1/providers/status")).json()["data"]
        steps = next(r for r in rows if r["deployment"] == deployment)["transitions"]
        assert [(s["from"], s["to"]) for s in steps[-2:]] == [("closed", "forced_open"), ("forced_open", "closed")]
        assert all("by" not in s and s["at"] > 0 and s["reason"] for s in steps)
    finally:
        await http.post("/v1/providers/breaker", json={"deployment": deployment, "action": "reset"})
