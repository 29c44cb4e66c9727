"""Finding 5: size, token and budget checks count everything a request sends upstream.

The attack: hide the bulk of a prompt where the counting did not look — a tool definition, tool-call
arguments, a tool result, a ``response_format`` schema, images — so a request of megabytes passes as a few
tokens against ``max_prompt_chars``, the context window, a small TPM limit and the budget reservation.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.governance import bearer, make_key, make_team

TPM = 5_000
BULK = "lorem ipsum dolor sit amet " * 1_500  # ~40 k characters: ~10 k tokens, twice the TPM limit


def user(text: str = "hi") -> dict:
    return {"role": "user", "content": text}


def tool(description: str) -> dict:
    return {"type": "function", "function": {"name": "lookup", "description": description,
                                             "parameters": {"type": "object", "properties": {}}}}


def carrying(where: str, bulk: str) -> dict:
    """A small chat request with ``bulk`` hidden in ``where``."""
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    body: dict = {"model": "mock-1", "max_tokens": 16, "messages": [user()]}
    if where == "tool_description":
        body["tools"] = [tool(bulk)]
    elif where == "tool_call_arguments":
        call["function"]["arguments"] = '{"q": "%s"}' % bulk
        body["messages"] = [user(), {"role": "assistant", "tool_calls": [call]},
                            {"role": "tool", "tool_call_id": "call_1", "content": "ok"}, user()]
    elif where == "tool_result":
        body["messages"] = [user(), {"role": "assistant", "tool_calls": [call]},
                            {"role": "tool", "tool_call_id": "call_1", "content": bulk}, user()]
    elif where == "system_message":
        body["messages"] = [{"role": "system", "content": bulk}, user()]
    elif where == "response_format":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "out", "schema": {"type": "object", "description": bulk}}}
    elif where == "images":  # a fixed cost per image however small its bytes: four are ~6,400 tokens
        image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, *[image] * 4]}]
    return body


@pytest.fixture(scope="module")
async def small_tpm_key(system) -> str:
    await make_team(system.http, "tpm-small")
    key, _ = await make_key(system.http, "tpm-small", limits={"tpm": TPM})
    return key


async def test_a_small_request_fits_the_limit(system, small_tpm_key):
    async with httpx.AsyncClient(base_url=system.base_url, headers=bearer(small_tpm_key), timeout=30) as c:
        r = await c.post("/v1/chat/completions", json=carrying("tool_description", "look a word up"))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("where", ["tool_description", "tool_call_arguments", "tool_result", "system_message",
                                   "response_format", "images"])
async def test_what_is_hidden_outside_the_user_text_counts_against_tpm(system, small_tpm_key, where):
    async with httpx.AsyncClient(base_url=system.base_url, headers=bearer(small_tpm_key), timeout=30) as c:
        r = await c.post("/v1/chat/completions", json=carrying(where, BULK))
    assert r.status_code == 422, r.text  # more tokens than the key may use in a minute: refused before any call
    assert r.json()["error"]["code"] == "tokens_exceed_rate_limit"


async def test_three_megabytes_in_a_tool_description_are_too_large(system):
    r = await system.http.post("/v1/chat/completions", json=carrying("tool_description", "x" * 3_000_000))
    assert r.status_code == 413, r.text  # over max_prompt_chars (2,000,000), though the messages are two words
    assert r.json()["error"]["code"] == "request_too_large"


async def test_a_tool_definition_past_the_context_window_is_refused(system):
    # ~50 k tokens in the tool description: under max_prompt_chars, over mock-1's 32 k context window.
    r = await system.http.post("/v1/chat/completions", json=carrying("tool_description", "abcd " * 40_000))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"


async def test_the_budget_reservation_counts_the_tool_definition(system):
    await make_team(system.http, "reservation-tools", daily_budget_usd=0.001)
    key, _ = await make_key(system.http, "reservation-tools")
    async with httpx.AsyncClient(base_url=system.base_url, headers=bearer(key), timeout=30) as c:
        small = await c.post("/v1/chat/completions", json=carrying("tool_description", "look a word up"))
        assert small.status_code == 200, small.text
        # 100 k characters of tool description are ~25 k prompt tokens, $0.0025 at mock-1's $0.10 per million:
        # more than the team's whole day, so the reservation is refused before any call.
        r = await c.post("/v1/chat/completions", json=carrying("tool_description", "x" * 100_000))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "budget_exceeded"
