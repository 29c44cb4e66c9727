"""The official ``anthropic`` SDK against ``POST /v1/messages``: routed through the pipeline to any provider."""

from __future__ import annotations

import anthropic
import pytest

from tests.support.api import sdk
from tests.support.system import ADMIN_KEY


def client(system, key: str = ADMIN_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=system.base_url, api_key=key, max_retries=0)


async def test_messages_sync_matches_openai_answer(system):
    msg = await client(system).messages.create(
        model="mock-1", max_tokens=64, system="be brief",
        messages=[{"role": "user", "content": "Say hello"}])
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text.startswith("Mock reply:")
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0
    same = await sdk(system).chat.completions.create(
        model="mock-1", max_tokens=64,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Say hello"}])
    assert msg.content[0].text == same.choices[0].message.content


async def test_messages_stream(system):
    async with client(system).messages.stream(
            model="resilient", max_tokens=64, messages=[{"role": "user", "content": "stream please"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text.startswith("Mock reply:")
    assert final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.stop_reason == "end_turn"


async def test_messages_errors_in_anthropic_shape(system):
    with pytest.raises(anthropic.AuthenticationError):
        await client(system, key="sk-nope").messages.create(
            model="mock-1", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError) as exc:
        await client(system).messages.create(model="nope", max_tokens=8,
                                              messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as exc:
        await client(system).messages.create(model="mock-1", max_tokens=8, extra_body={"top_k": 5},
                                             messages=[{"role": "user", "content": "x"}])
    assert "top_k" in exc.value.body["error"]["message"]


async def test_messages_stream_cut_is_an_error(system):
    with pytest.raises(anthropic.APIError):
        async with client(system).messages.stream(
                model="mock-1", max_tokens=64, messages=[{"role": "user", "content": "x"}],
                extra_body={"switchyard": {"mock": {"cut_after": 2}}}) as stream:
            async for _ in stream.text_stream:
                pass
