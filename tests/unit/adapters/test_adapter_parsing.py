"""Response, stream and error parsing against payloads written from each provider's API reference."""

from __future__ import annotations

import json

import pytest
from botocore.eventstream import EventStreamBuffer

from services.workers.adapters.anthropic import MessagesStreamDecoder, parse_message
from services.workers.adapters.base import SSEEvent, classify, retry_after, scrub
from services.workers.adapters.bedrock import ConverseStreamDecoder, parse_converse
from services.workers.adapters.gemini import GenerateStreamDecoder, parse_generate
from services.workers.adapters.mistral import FINISH_MISTRAL
from services.workers.adapters.openai import ChatCompletionsDecoder, parse_body, parse_embeddings
from shared.canonical import EmbeddingRequest, Usage
from shared.errors import (
    ContextLengthExceeded,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from tests.fakes.providers import bedrock_event

from tests.support.adapters import (
    chat,
    decode_all,
    finish_of,
    fixture_bytes,
    fixture_json,
    make_adapter,
    sse_fixture,
    target,
    text_of,
    tool_calls_of,
)

# ---- whole responses ---------------------------------------------------------------------------

def test_openai_tool_calls_and_cached_usage():
    r = parse_body(fixture_bytes("openai/response_tool_calls.json"), target("openai"))
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    assert c.message.tool_calls[0].id == "call_ujD1NwPxzeOSCbgw2NOabOin"
    assert json.loads(c.message.tool_calls[0].function.arguments) == {"city": "Paris", "days_ahead": 1}
    assert r.usage == Usage(prompt_tokens=1117, completion_tokens=46, cached_tokens=1024)
    assert r.model == "gpt-4o-2024-08-06" and r.system_fingerprint == "fp_fc9f1d7035"


def test_openai_reasoning_tokens():
    r = parse_body(fixture_bytes("openai/response_reasoning.json"), target("openai"))
    assert r.usage.reasoning_tokens == 384 and r.usage.completion_tokens == 394


def test_azure_content_filter_finish():
    r = parse_body(fixture_bytes("azure/response_content_filter.json"), target("azure"))
    assert r.choices[0].finish_reason == "content_filter" and r.usage.prompt_tokens == 40


def test_mistral_tool_calls_and_reasoning_content_chunks():
    r = parse_body(fixture_bytes("mistral/response_tool_calls.json"), target("mistral"), "mistral", FINISH_MISTRAL)
    call = r.choices[0].message.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("D681PevKs", "function", "get_weather")
    r = parse_body(fixture_bytes("mistral/response_thinking.json"), target("mistral"), "mistral", FINISH_MISTRAL)
    assert r.choices[0].message.content == "Tomorrow will be sunny, 21°C."  # the thinking chunk is not the answer
    assert r.choices[0].finish_reason == "length"  # model_length


def test_anthropic_usage_counts_cache_reads_and_writes_into_the_prompt():
    r = parse_message(fixture_bytes("anthropic/response_text_cached.json"), target("anthropic"))
    assert r.choices[0].message.content == "Tomorrow Paris should see sunshine and about 21°C."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage == Usage(prompt_tokens=21 + 188 + 1800, completion_tokens=17, cached_tokens=1800,
                            cache_creation_tokens=188)
    assert r.provider_id == "msg_01XFDUDYJgAACzvnptvVoYEL"


def test_anthropic_tool_use_without_the_thinking():
    r = parse_message(fixture_bytes("anthropic/response_tool_use.json"), target("anthropic"))
    m = r.choices[0].message
    assert m.content == "Let me check tomorrow's forecast."
    assert m.tool_calls[0].id == "toolu_01A09q90qw90lq917835lq9"
    assert json.loads(m.tool_calls[0].function.arguments) == {"city": "Paris", "days_ahead": 1}
    assert r.choices[0].finish_reason == "tool_calls" and r.usage.reasoning_tokens == 24


def test_anthropic_forced_json_tool_comes_back_as_text():
    data = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                       "content": [{"type": "tool_use", "id": "toolu_1", "name": "json_response",
                                    "input": {"temp_c": 21}}],
                       "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7}}).encode()
    r = parse_message(data, target("anthropic"), json_output=True)
    assert json.loads(r.choices[0].message.content) == {"temp_c": 21}
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    # without JSON mode a client's own tool of that name stays a tool call
    r = parse_message(data, target("anthropic"))
    assert r.choices[0].message.tool_calls[0].function.name == "json_response"
    assert r.choices[0].finish_reason == "tool_calls"


def test_gemini_thoughts_are_billed_as_output_but_not_shown():
    r = parse_generate(fixture_bytes("gemini/response_text_thoughts.json"), target("gemini"))
    assert r.choices[0].message.content == "Tomorrow in Paris: sunny, around 21°C."
    assert r.usage == Usage(prompt_tokens=1310, completion_tokens=12 + 86, cached_tokens=1024, reasoning_tokens=86)


def test_gemini_function_calls_get_ids_and_tool_calls_finish():
    r = parse_generate(fixture_bytes("gemini/response_function_call.json"), target("gemini"))
    calls = r.choices[0].message.tool_calls
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Lyon"]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    assert r.choices[0].finish_reason == "tool_calls"


def test_gemini_blocked_prompt_is_a_content_filter_answer():
    r = parse_generate(fixture_bytes("gemini/response_prompt_blocked.json"), target("gemini"))
    assert r.choices[0].finish_reason == "content_filter" and r.choices[0].message.content is None
    assert r.usage.prompt_tokens == 27


def test_bedrock_text_with_cache_read():
    r = parse_converse(fixture_bytes("bedrock/response_text.json"), target("bedrock"))
    assert r.choices[0].message.content == "Tomorrow Paris should be sunny at about 21°C."
    assert r.usage == Usage(prompt_tokens=32 + 2048, completion_tokens=16, cached_tokens=2048)


def test_bedrock_tool_use():
    r = parse_converse(fixture_bytes("bedrock/response_tool_use.json"), target("bedrock"))
    m = r.choices[0].message
    assert m.content == "I'll look up tomorrow's forecast."
    assert m.tool_calls[0].id == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
    assert r.choices[0].finish_reason == "tool_calls"


def test_embeddings_come_back_in_input_order():
    r = parse_embeddings(fixture_bytes("openai/embeddings_response.json"), target("openai", "text-embedding-3-small"))
    assert r.data[0][0] == 0.0023 and r.data[1][0] == -0.0069 and r.usage.prompt_tokens == 8
    r = parse_embeddings(fixture_bytes("mistral/embeddings_response.json"), target("mistral", "mistral-embed"))
    assert len(r.data) == 2 and r.usage.prompt_tokens == 15
    gemini = make_adapter("gemini", None, base_url="https://x")
    req = EmbeddingRequest(model="e", input=["first text", "second"])
    r = gemini.parse_embed_response(fixture_bytes("gemini/embed_response.json"), req, target("gemini"))
    assert r.data[1] == [-0.0215, 0.0012, 0.0339, -0.0106]
    assert r.usage.prompt_tokens > 0  # Gemini reports none; an estimate is billed rather than nothing


# ---- streams ----------------------------------------------------------------------------------

def test_openai_stream_with_parallel_tool_calls_and_usage():
    chunks = decode_all(ChatCompletionsDecoder("openai", chat()), sse_fixture("openai/stream_tool_calls.sse"))
    calls = tool_calls_of(chunks)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Lyon"})]
    assert calls[1].id == "call_7mQ2kF0Zr1a9bXcW4tYv8nLp"
    assert finish_of(chunks) == ["tool_calls"]
    assert chunks[-1].usage == Usage(prompt_tokens=82, completion_tokens=46) and not chunks[-1].choices


def test_a_server_without_usage_chunks_gets_an_estimate_not_zero():
    request = chat("Say hello to me please")
    chunks = decode_all(ChatCompletionsDecoder("ollama", request), sse_fixture("openai/stream_no_usage.sse"))
    assert text_of(chunks) == "Hello there, friend."
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0


def test_azure_stream_skips_the_filter_preamble():
    chunks = decode_all(ChatCompletionsDecoder("azure", chat()), sse_fixture("azure/stream_text.sse"))
    assert text_of(chunks) == "Sunny and 21°C." and finish_of(chunks) == ["stop"]
    assert chunks[-1].usage == Usage(prompt_tokens=31, completion_tokens=6)


def test_mistral_stream_usage_rides_on_the_last_chunk():
    decoder = ChatCompletionsDecoder("mistral", chat(), FINISH_MISTRAL)
    chunks = decode_all(decoder, sse_fixture("mistral/stream_text.sse"))
    assert text_of(chunks) == "Tomorrow will be sunny." and finish_of(chunks) == ["stop"]
    assert chunks[-1].usage == Usage(prompt_tokens=23, completion_tokens=7)


def test_anthropic_stream_text_with_cache_usage():
    chunks = decode_all(MessagesStreamDecoder("anthropic"), sse_fixture("anthropic/stream_text.sse"))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text_of(chunks) == "Hello!" and finish_of(chunks) == ["stop"]
    assert chunks[-1].usage == Usage(prompt_tokens=25 + 1024, completion_tokens=15, cached_tokens=1024)


def test_anthropic_stream_tool_use_skips_thinking_and_streams_arguments():
    chunks = decode_all(MessagesStreamDecoder("anthropic"), sse_fixture("anthropic/stream_tool_use.sse"))
    assert text_of(chunks) == "Okay, let me check."
    [call] = tool_calls_of(chunks)
    assert call.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days_ahead": 1}
    assert finish_of(chunks) == ["tool_calls"]
    assert chunks[-1].usage == Usage(prompt_tokens=472, completion_tokens=89)


def test_anthropic_in_stream_overload_is_retryable_unavailability():
    decoder = MessagesStreamDecoder("anthropic")
    events = sse_fixture("anthropic/stream_overloaded.sse")
    seen = []
    with pytest.raises(UpstreamUnavailable, match="overloaded_error"):
        for e in events:
            seen.extend(decoder.feed(e))
    assert text_of(seen) == "Tomorrow"  # what came before the error was delivered


def test_gemini_stream_over_crlf_sse():
    chunks = decode_all(GenerateStreamDecoder("gemini"), sse_fixture("gemini/stream_text.sse"))
    assert text_of(chunks) == "Tomorrow in Paris: sunny, around 21°C." and finish_of(chunks) == ["stop"]
    assert chunks[-1].usage == Usage(prompt_tokens=31, completion_tokens=12 + 48, reasoning_tokens=48)


def test_gemini_stream_safety_stop_is_content_filter():
    chunks = decode_all(GenerateStreamDecoder("gemini"), sse_fixture("gemini/stream_safety.sse"))
    assert text_of(chunks) == "Here is how to" and finish_of(chunks) == ["content_filter"]


def test_bedrock_stream_frames_decode_to_text_tool_call_and_usage():
    frames = b"".join(bedrock_event(e["event"], e["payload"]) for e in fixture_json("bedrock/stream_tool_use.json"))
    buffer = EventStreamBuffer()
    buffer.add_data(frames)
    chunks = decode_all(ConverseStreamDecoder("bedrock", "m"), list(buffer))
    assert text_of(chunks) == "Checking now."
    [call] = tool_calls_of(chunks)
    assert call.id == "tooluse_Gs0nN8lRSiKzbEq4Nd9gLg"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days_ahead": 1}
    assert finish_of(chunks) == ["tool_calls"] and chunks[-1].usage == Usage(prompt_tokens=412, completion_tokens=64)


@pytest.mark.parametrize("decoder,fixture,marker", [
    (lambda: ChatCompletionsDecoder("openai", chat()), "openai/stream_tool_calls.sse", "[DONE]"),
    (lambda: MessagesStreamDecoder("anthropic"), "anthropic/stream_text.sse", "message_stop"),
    (lambda: GenerateStreamDecoder("gemini"), "gemini/stream_text.sse", "finishReason"),
])
def test_a_stream_without_its_end_marker_is_cut(decoder, fixture, marker):
    events = sse_fixture(fixture)[:-1]
    with pytest.raises(UpstreamBadResponse, match=f"stream cut.*{marker}" if marker != "[DONE]" else "stream cut"):
        decode_all(decoder(), events)


def test_bedrock_stream_without_metadata_is_cut():
    events = fixture_json("bedrock/stream_tool_use.json")[:-1]
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(bedrock_event(e["event"], e["payload"]) for e in events))
    with pytest.raises(UpstreamBadResponse, match="stream cut: bedrock ended without the metadata event"):
        decode_all(ConverseStreamDecoder("bedrock", "m"), list(buffer))


def test_openai_in_stream_error_object_is_mapped():
    with pytest.raises(UpstreamUnavailable, match="server_error"):
        ChatCompletionsDecoder("openai", chat()).feed(SSEEvent(data=json.dumps(
            {"error": {"message": "The server had an error", "type": "server_error"}})))


# ---- errors -----------------------------------------------------------------------------------

def error_of(kind: str, status: int, fixture: str, headers: dict | None = None):
    adapter = make_adapter(kind, None, base_url="https://x")
    return adapter.map_error(status, fixture_bytes(fixture), headers or {})


def test_openai_errors():
    e = error_of("openai", 429, "openai/error_rate_limit.json", {"retry-after-ms": "315"})
    assert isinstance(e, UpstreamRateLimited) and e.retry_after == pytest.approx(0.315) and e.retryable
    e = error_of("openai", 400, "openai/error_context_length.json")
    assert isinstance(e, ContextLengthExceeded) and "maximum context length is 128000" in e.message
    e = error_of("openai", 401, "openai/error_invalid_key.json")
    assert isinstance(e, UpstreamAuthFailed) and "sk-proj-AbCdEf1234567890xyz" not in e.message
    assert "[redacted]" in e.message


def test_azure_errors():
    e = error_of("azure", 429, "azure/error_rate_limit.json", {"retry-after": "6"})
    assert isinstance(e, UpstreamRateLimited) and e.retry_after == 6
    assert isinstance(error_of("azure", 404, "azure/error_deployment_not_found.json"), UpstreamAuthFailed)
    e = error_of("azure", 400, "azure/error_content_filter.json")
    assert isinstance(e, UpstreamRejected) and "content management policy" in e.message and not e.retryable


def test_mistral_errors():
    e = error_of("mistral", 422, "mistral/error_validation.json")
    assert isinstance(e, UpstreamRejected) and "body.logit_bias: Extra inputs are not permitted" in e.message
    assert isinstance(error_of("mistral", 400, "mistral/error_context_length.json"), ContextLengthExceeded)
    assert isinstance(error_of("mistral", 401, "mistral/error_unauthorized.json"), UpstreamAuthFailed)


def test_anthropic_errors():
    e = error_of("anthropic", 529, "anthropic/error_overloaded.json")
    assert isinstance(e, UpstreamUnavailable) and "Overloaded" in e.message
    assert isinstance(error_of("anthropic", 400, "anthropic/error_prompt_too_long.json"), ContextLengthExceeded)
    e = error_of("anthropic", 429, "anthropic/error_rate_limit.json", {"retry-after": "12"})
    assert isinstance(e, UpstreamRateLimited) and e.retry_after == 12
    assert isinstance(error_of("anthropic", 401, "anthropic/error_authentication.json"), UpstreamAuthFailed)


def test_gemini_errors():
    e = error_of("gemini", 429, "gemini/error_quota.json")
    assert isinstance(e, UpstreamRateLimited) and e.retry_after == 37  # from google.rpc.RetryInfo
    e = error_of("gemini", 400, "gemini/error_api_key.json")
    assert isinstance(e, UpstreamAuthFailed)  # a 400, but it is our key that is wrong
    assert isinstance(error_of("gemini", 400, "gemini/error_context_length.json"), ContextLengthExceeded)
    e = error_of("gemini", 503, "gemini/error_overloaded.json")
    assert isinstance(e, UpstreamUnavailable) and "The model is overloaded" in e.message


def test_bedrock_errors_read_the_error_type_header():
    header = lambda t: {"x-amzn-errortype": f"{t}:http://internal.amazon.com/coral/com.amazon.bedrock/"}  # noqa
    assert isinstance(error_of("bedrock", 400, "bedrock/error_validation_too_long.json",
                               header("ValidationException")), ContextLengthExceeded)
    assert isinstance(error_of("bedrock", 429, "bedrock/error_throttling.json", header("ThrottlingException")),
                      UpstreamRateLimited)
    e = error_of("bedrock", 403, "bedrock/error_access_denied.json", header("AccessDeniedException"))
    assert isinstance(e, UpstreamAuthFailed) and "don't have access" in e.message
    e = error_of("bedrock", 400, "bedrock/error_quota.json", header("ServiceQuotaExceededException"))
    assert isinstance(e, UpstreamRateLimited)  # a 400 that means "too much", not "bad request"


def test_retry_after_forms_and_cap():
    assert retry_after({"retry-after": "30"}) == 30
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "100000"}) == 120
    assert 0 < retry_after({"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}) <= 120
    assert retry_after({"retry-after": "soon"}) is None


def test_scrub_removes_every_kind_of_credential():
    text = ("key sk-proj-abcdefghij1234, AKIAIOSFODNN7EXAMPLE, AIzaSyA-1234567890abcdefghijklmnop, "
            "Bearer eyJhbGciOi.J9, ?key=abcdefghijklmnop")
    out = scrub(text)
    for secret in ("sk-proj-abcdefghij1234", "AKIAIOSFODNN7EXAMPLE", "AIzaSyA-1234567890abcdefghijklmnop",
                   "eyJhbGciOi.J9", "abcdefghijklmnop"):
        assert secret not in out


def test_classify_table():
    assert isinstance(classify("p", 500, "boom", {}), UpstreamUnavailable)
    assert isinstance(classify("p", 529, "Overloaded", {}), UpstreamUnavailable)
    assert isinstance(classify("p", 403, "nope", {}), UpstreamAuthFailed)
    e = classify("p", 503, "busy", {"retry-after": "4"})
    assert e.retry_after == 4 and e.retryable
