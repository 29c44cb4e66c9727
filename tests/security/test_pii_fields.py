"""Finding 8: personal data is caught in every free-text field that goes upstream, not only message text.

The attack (or the careless client): PII placed in a tool description, an image URL, ``user``,
``metadata``, a message ``name``, ``stop``, ``response_format`` or Anthropic ``tools``. With the default
``redact`` policy, what the provider receives holds placeholders instead; with ``block`` the request is
refused. The fake upstream records the bytes it received, so the test reads exactly what left Switchyard.
"""

from __future__ import annotations

import json

import httpx

from tests.support.api import wait_trace
from tests.support.governance import bearer, make_key, make_team

EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"
VALUES = (EMAIL, PHONE, CARD, SSN)


def everywhere() -> dict:
    """A chat request with a PII value in every free-text field other than the user's text."""
    return {
        "model": "m-openai", "max_tokens": 16,
        "messages": [
            {"role": "system", "content": "You help with orders."},
            {"role": "user", "name": EMAIL, "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": f"https://img.example.com/u/{EMAIL}/receipt.png"}}]},
        ],
        "tools": [{"type": "function", "function": {
            "name": "refund", "description": f"Refund the card {CARD}; questions to {EMAIL} or {PHONE}.",
            "parameters": {"type": "object", "properties": {
                "ssn": {"type": "string", "description": f"the customer's SSN, e.g. {SSN}"}}}}}],
        "user": EMAIL,
        "metadata": {"customer": EMAIL, "callback": PHONE},
        "stop": [f"card {CARD}"],
        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {
            "type": "object", "description": f"write to {EMAIL}", "properties": {}}}},
    }


async def test_pii_in_every_field_is_redacted_before_the_provider(secure, fakes):
    fakes.reset()
    r = await secure.http.post("/v1/chat/completions", json=everywhere())
    assert r.status_code == 200, r.text
    sent = fakes.last("openai").body.decode()
    for value in VALUES:
        assert value not in sent, (value, sent)
    body = json.loads(sent)
    assert body["user"] == "<EMAIL_1>" and body["metadata"]["customer"] == "<EMAIL_1>"
    assert "<CARD_1>" in body["tools"][0]["function"]["description"] and "<CARD_1>" in body["stop"][0]
    assert "<EMAIL_1>" in body["messages"][1]["content"][1]["image_url"]["url"]
    assert body["messages"][1]["name"] == "<EMAIL_1>"
    assert "<SSN_1>" in json.dumps(body["tools"][0]["function"]["parameters"])
    counts = dict(kv.split("=") for kv in r.headers["x-switchyard-redactions"].split(","))
    assert {"EMAIL", "PHONE", "CARD", "SSN"} <= counts.keys()
    await wait_trace(secure, r.headers["x-request-id"], "succeeded")


async def test_pii_in_anthropic_tools_is_redacted_too(secure, fakes):
    fakes.reset()
    r = await secure.http.post("/v1/messages", json={
        "model": "m-openai", "max_tokens": 16, "system": f"Escalations go to {EMAIL}.",
        "metadata": {"user_id": EMAIL},
        "messages": [{"role": "user", "content": "hello"}],
        "tools": [{"name": "call_back", "description": f"Call the customer on {PHONE}.",
                   "input_schema": {"type": "object", "properties": {}}}]})
    assert r.status_code == 200, r.text
    sent = fakes.last("openai").body.decode()
    for value in (EMAIL, PHONE):
        assert value not in sent, (value, sent)
    assert "<PHONE_1>" in sent and "<EMAIL_1>" in sent


async def test_a_blocking_team_refuses_pii_outside_the_messages(secure, fakes):
    await make_team(secure.http, "pii-blockers", pii_action="block")
    key, _ = await make_key(secure.http, "pii-blockers")
    fakes.reset()
    async with httpx.AsyncClient(base_url=secure.base_url, headers=bearer(key), timeout=30) as c:
        for extra in ({"user": EMAIL}, {"metadata": {"note": CARD}}, {"stop": [SSN]},
                      {"tools": everywhere()["tools"]}):
            body = {"model": "m-openai", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}], **extra}
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 400, (extra, r.text)
            assert r.json()["error"]["code"] == "pii_detected"
    assert not fakes.requests_to("openai")  # nothing reached the provider
