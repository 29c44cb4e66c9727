"""The Anthropic Messages ingress translation, driven by the official ``anthropic`` SDK over loopback HTTP.

A test-only route (parse → canned canonical answer → render) stands in for the
gateway, so what is checked is exactly what the SDK sends and accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import anthropic
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.gateway.anthropic_format import (
    MessagesStreamEncoder,
    parse_messages_request,
    render_error,
    render_message,
)
from services.workers.adapters.mock import MockAdapter
from services.workers.adapters.openai import ChatCompletionsDecoder
from shared.canonical import (
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
)
from shared.errors import ErrorInfo, InvalidRequest, PayloadTooLarge, SwitchyardError, UpstreamUnavailable
from tests.fakes.providers import LoopbackServer

from tests.support.adapters import chat, decode_all, spec, sse_fixture, target

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@dataclass
class Scenario:
    """What the stand-in route answers, and what it received."""

    response: ChatResponse | None = None
    chunks: list[StreamChunk] = field(default_factory=list)
    fail_with: ErrorInfo | None = None  # before anything (HTTP error) or, for streams, after the chunks
    received: list[ChatRequest] = field(default_factory=list)


def app_for(s: Scenario) -> Starlette:
    async def messages(request: Request) -> Response:
        try:
            req = parse_messages_request(await request.body(), 1_000_000)
        except SwitchyardError as exc:
            return JSONResponse(render_error(exc.info()), status_code=exc.status)
        s.received.append(req)
        if s.fail_with is not None and not req.stream:
            return JSONResponse(render_error(s.fail_with, "req_1"), status_code=s.fail_with.status)
        if not req.stream:
            return JSONResponse(render_message(s.response, "req_0123abcd", req.model))

        async def events():
            encoder = MessagesStreamEncoder("req_0123abcd", req.model, input_tokens=10)
            for chunk in s.chunks:
                yield encoder.encode(chunk)
            yield encoder.error(s.fail_with) if s.fail_with else encoder.finish()
        return StreamingResponse(events(), media_type="text/event-stream")
    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


@pytest.fixture
def scenario() -> Iterator[tuple[Scenario, anthropic.AsyncAnthropic]]:
    s = Scenario()
    with LoopbackServer(app_for(s)) as server:
        yield s, anthropic.AsyncAnthropic(base_url=server.url, api_key="sk-test-member", max_retries=0)


TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


async def test_sdk_request_becomes_the_canonical_request(scenario):
    s, client = scenario
    s.response = ChatResponse(model="x", choices=[Choice(message=Message(role="assistant", content="ok"),
                                                         finish_reason="stop")])
    await client.messages.create(
        model="claude-sonnet-4-5", max_tokens=300, stop_sequences=["END"],
        extra_body={"temperature": 0.2},  # older SDKs still send sampling parameters
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        tools=TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": True},
        metadata={"user_id": "user-77"},
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": PNG}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": [{"type": "text", "text": "18C"}], "is_error": False},
                                         {"type": "text", "text": "And tomorrow?"}]},
        ])
    [req] = s.received
    assert (req.model, req.max_tokens, req.temperature, req.stop, req.user) == \
        ("claude-sonnet-4-5", 300, 0.2, ["END"], "user-77")
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "tool", "user"]
    assert req.messages[0].content[0].text == "Be brief."
    assert req.messages[1].content[1].image_url == {"url": f"data:image/png;base64,{PNG}"}
    call = req.messages[2].tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == \
        ("toolu_1", "get_weather", {"city": "Paris"})
    assert (req.messages[3].tool_call_id, req.messages[3].content) == ("toolu_1", "18C")
    assert req.tools[0]["function"]["parameters"]["required"] == ["city"]
    assert req.tool_choice == "required" and req.parallel_tool_calls is False
    assert req.stream is False


async def test_canonical_response_is_a_message_the_sdk_parses(scenario):
    s, client = scenario
    s.response = ChatResponse(model="gpt-4o", choices=[Choice(
        message=Message(role="assistant", content="Let me look.", tool_calls=[
            ToolCall(id="call_9", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))]),
        finish_reason="tool_calls")],
        usage=Usage(prompt_tokens=1200, completion_tokens=30, cached_tokens=1000, cache_creation_tokens=50))
    msg = await client.messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                       messages=[{"role": "user", "content": "hi"}])
    assert msg.id == "msg_0123abcd" and msg.model == "claude-sonnet-4-5"
    assert msg.content[0].text == "Let me look."
    assert (msg.content[1].type, msg.content[1].id, msg.content[1].input) == ("tool_use", "call_9", {"city": "Paris"})
    assert msg.stop_reason == "tool_use"
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens,
            msg.usage.output_tokens) == (150, 1000, 50, 30)


async def test_text_stream_through_the_sdk(scenario):
    s, client = scenario
    mock = MockAdapter(spec("mock"))
    s.chunks = [c async for c in mock.stream(chat("hello"), target("openai", "mock-1"), 5)]
    expected = "".join(c.choices[0].delta.content or "" for c in s.chunks if c.choices)
    async with client.messages.stream(model="claude-haiku-4-5", max_tokens=200,
                                      messages=[{"role": "user", "content": "hello"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == expected and final.content[0].text == expected
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == s.chunks[-1].usage.completion_tokens
    assert final.usage.input_tokens == s.chunks[-1].usage.prompt_tokens  # the final usage replaced the estimate
    assert s.received[0].stream and s.received[0].stream_options == {"include_usage": True}


async def test_streamed_tool_calls_through_the_sdk(scenario):
    s, client = scenario
    s.chunks = decode_all(ChatCompletionsDecoder("openai", chat()), sse_fixture("openai/stream_tool_calls.sse"))
    async with client.messages.stream(model="m", max_tokens=200, tools=TOOLS,
                                      messages=[{"role": "user", "content": "Paris and Lyon"}]) as stream:
        final = await stream.get_final_message()
    assert [(b.type, b.id, b.input) for b in final.content] == [
        ("tool_use", "call_DdmO9pD3xa9XTPNJ32zg2hcA", {"city": "Paris"}),
        ("tool_use", "call_7mQ2kF0Zr1a9bXcW4tYv8nLp", {"city": "Lyon"})]
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 46


async def test_upstream_failure_mid_stream_reaches_the_sdk_as_an_error(scenario):
    s, client = scenario
    s.chunks = [StreamChunk(choices=[]), chat_chunk("Tomorrow")]
    s.fail_with = UpstreamUnavailable("stream cut: anthropic ended without message_stop").info()
    got = []
    with pytest.raises(anthropic.APIStatusError, match="stream cut"):
        async with client.messages.stream(model="m", max_tokens=50,
                                          messages=[{"role": "user", "content": "x"}]) as stream:
            async for t in stream.text_stream:
                got.append(t)
    assert got == ["Tomorrow"]


def chat_chunk(text: str) -> StreamChunk:
    return StreamChunk(choices=[ChunkChoice(delta=Delta(content=text))])


@pytest.mark.parametrize("error,sdk_error,kind", [
    (InvalidRequest("anthropic does not support seed: seeded sampling", param="seed"), anthropic.BadRequestError,
     "invalid_request_error"),
    (UpstreamUnavailable("all providers failed"), anthropic.InternalServerError, "api_error"),
])
async def test_errors_reach_the_sdk_as_its_own_exceptions(scenario, error, sdk_error, kind):
    s, client = scenario
    s.fail_with = error.info()
    with pytest.raises(sdk_error) as exc:
        await client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["error"]["type"] == kind and exc.value.body["error"]["message"] == error.message


async def test_rate_limit_error_keeps_its_type(scenario):
    s, client = scenario
    s.fail_with = ErrorInfo(status=429, type="rate_limit_error", code="rate_limit_exceeded", message="slow down",
                            retry_after=3)
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}])


async def test_invalid_requests_are_answered_in_anthropics_shape(scenario):
    s, client = scenario
    with pytest.raises(anthropic.BadRequestError) as exc:
        await client.messages.create(model="m", max_tokens=10, extra_body={"top_k": 5},
                                     messages=[{"role": "user", "content": "x"}])
    assert "top_k" in exc.value.body["error"]["message"]


def test_error_types_by_status():
    def kind(status):
        return render_error(ErrorInfo(status=status, type="t", code="c", message="m"))["error"]["type"]
    assert [kind(s) for s in (400, 401, 403, 404, 413, 429, 500, 503, 504, 529)] == [
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error", "request_too_large",
        "rate_limit_error", "api_error", "overloaded_error", "timeout_error", "overloaded_error"]
    assert render_error(ErrorInfo(status=400, type="t", code="c", message="m"), "req_1")["request_id"] == "req_1"


# ---- parsing edge cases ------------------------------------------------------------------------

def parse(body: dict[str, Any]) -> ChatRequest:
    return parse_messages_request(json.dumps(body).encode(), 100_000)


BASE = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("extra,param", [
    ({"top_k": 5}, "top_k"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}, "mcp_servers"),
    ({"temperature": 1.5}, "temperature"),
    ({"output_config": {"effort": "high"}}, "output_config.effort"),
    ({"inference_geo": "eu"}, "inference_geo"),
    ({"speed": "fast"}, "speed"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "url", "url": "https://x/a.pdf"}}]}]}, "messages[0].content[0].source"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]}]},
     "messages[0].content[0].content"),
])
def test_refused_and_invalid_requests_name_the_parameter(extra, param):
    with pytest.raises(InvalidRequest) as exc:
        parse({**BASE, **extra})
    assert exc.value.param == param and exc.value.status == 400


def test_missing_max_tokens_and_size_limit():
    body = dict(BASE)
    del body["max_tokens"]
    with pytest.raises(InvalidRequest) as exc:
        parse(body)
    assert "max_tokens" in exc.value.message
    with pytest.raises(PayloadTooLarge):
        parse_messages_request(b"x" * 200, 100)


def test_documents_error_results_and_thinking_history():
    req = parse({**BASE, "system": "sys", "messages": [
        {"role": "user", "content": [{"type": "document", "title": "report",
                                      "source": {"type": "base64", "media_type": "application/pdf",
                                                 "data": "JVBERi0x"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "private", "signature": "s"},
                                          {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "boom",
                                      "is_error": True}]}]})
    assert req.messages[0].content == "sys"
    assert req.messages[1].content[0].file == {"filename": "report.pdf",
                                               "file_data": "data:application/pdf;base64,JVBERi0x"}
    assert req.messages[2].content is None and req.messages[2].tool_calls[0].id == "t1"  # thinking not carried
    assert req.messages[3].content == "Error: boom"


def test_encoder_without_any_chunk_still_frames_a_complete_message():
    enc = MessagesStreamEncoder("req_1", "m")
    text = enc.finish().decode()
    assert [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event:")] == [
        "message_start", "message_delta", "message_stop"]


async def test_structured_output_becomes_a_json_schema_response_format(scenario):
    s, client = scenario
    s.response = ChatResponse(model="x", choices=[Choice(message=Message(role="assistant", content='{"temp_c": 21}'),
                                                         finish_reason="stop")])
    schema = {"type": "object", "properties": {"temp_c": {"type": "number"}}, "required": ["temp_c"],
              "additionalProperties": False}
    msg = await client.messages.create(model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}],
                                       output_config={"format": {"type": "json_schema", "schema": schema}},
                                       cache_control={"type": "ephemeral"})
    assert json.loads(msg.content[0].text) == {"temp_c": 21}
    assert s.received[0].response_format == {"type": "json_schema", "json_schema": {"name": "output",
                                                                                  "schema": schema}}
