"""Request translation: canonical → each provider's body, and what each provider refuses (400 naming it)."""

from __future__ import annotations

import json

import msgspec
import pytest

from services.workers.adapters.anthropic import messages_body
from services.workers.adapters.base import JSON_TOOL
from services.workers.adapters.bedrock import converse_body
from services.workers.adapters.gemini import generate_body
from services.workers.adapters.mistral import mistral_body, mistral_tool_id
from shared.canonical import ContentPart, FunctionCall, Message, ToolCall
from shared.errors import InvalidRequest

from tests.support.adapters import canonical_request, chat, fixture_json, make_adapter, target

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": {
    "type": "object", "properties": {"temp_c": {"type": "number"}}, "required": ["temp_c"]}}}

BUILDERS = {
    "anthropic": lambda r: messages_body("anthropic", r, "claude-sonnet-4-5-20250929"),
    "gemini": lambda r: generate_body("gemini", r),
    "mistral": lambda r: mistral_body("mistral", r, "mistral-small-2506", False),
    "bedrock": lambda r: converse_body("bedrock", r),
}


def body_of(kind: str, request, **kw) -> dict:
    up = make_adapter(kind, None, base_url="https://upstream.example", **kw).build_request(request, target(kind))
    return json.loads(up.body)


@pytest.mark.parametrize("provider", sorted(BUILDERS))
def test_full_request_translates_to_the_documented_body(provider):
    """System + developer + image + tool call + tool result + tools + sampling, against a reviewed golden body."""
    assert BUILDERS[provider](canonical_request()) == fixture_json(f"{provider}/request_expected.json")


def test_openai_passes_through_but_moves_the_cap_and_strips_our_fields():
    req = canonical_request()
    req.switchyard = {"route": "cheap"}
    body = body_of("openai", req)
    assert "switchyard" not in body and body["model"] == "gpt-4o-mini" and body["stream"] is False
    assert body["max_completion_tokens"] == 256 and "max_tokens" not in body  # reasoning models refuse max_tokens
    assert [m["role"] for m in body["messages"]][:2] == ["system", "developer"]
    assert body["messages"][3]["tool_calls"][0]["id"] == "call_Qx7bTf3nWz9Lk2Vd"


def test_openai_compatible_servers_get_system_not_developer_and_keep_max_tokens():
    req = canonical_request()
    req.metadata = {"ticket": "T-1"}
    body = body_of("openai-compatible", req)
    assert [m["role"] for m in body["messages"]][:2] == ["system", "system"]
    assert body["max_tokens"] == 256 and "max_completion_tokens" not in body
    assert "metadata" not in body and body["user"] == "user-8431"


@pytest.mark.parametrize("kind", ["openai", "openai-compatible", "azure"])
def test_logprobs_pass_through_to_chat_completions_servers(kind):
    body = body_of(kind, chat(logprobs=True, top_logprobs=2))
    assert body["logprobs"] is True and body["top_logprobs"] == 2


def test_logprobs_are_refused_where_they_are_not_translated():
    with pytest.raises(InvalidRequest) as exc:
        body_of("gemini", chat(logprobs=True, top_logprobs=2))
    assert exc.value.param == "logprobs"


def test_openai_streams_always_ask_for_the_usage_chunk_unless_the_server_cannot():
    req = chat(stream=True, stream_options={"include_usage": False})
    up = make_adapter("openai", None, base_url="https://x").build_stream_request(req, target("openai"))
    body = json.loads(up.body)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    up = make_adapter("openai-compatible", None, base_url="https://x", options={"stream_usage": False}) \
        .build_stream_request(req, target("openai-compatible"))
    assert "stream_options" not in json.loads(up.body)


def test_azure_addresses_the_deployment_with_api_key_and_version():
    adapter = make_adapter("azure", None, base_url="https://contoso.openai.azure.com/",
                           options={"api_version": "2024-10-21"})
    up = adapter.build_request(canonical_request(), target("azure", "gpt4o mini/prod"))
    assert up.url == "https://contoso.openai.azure.com/openai/deployments/gpt4o%20mini%2Fprod/chat/completions"
    assert up.params == {"api-version": "2024-10-21"}
    assert up.headers["api-key"] == "test-key" and "authorization" not in up.headers
    assert "model" not in json.loads(up.body)


def test_azure_without_an_endpoint_fails_over_instead_of_calling_nowhere():
    from shared.errors import UpstreamAuthFailed
    adapter = make_adapter("azure", None, base_url=None, options={"endpoint_env": "SY_TEST_NO_SUCH_ENDPOINT"})
    with pytest.raises(UpstreamAuthFailed, match="SY_TEST_NO_SUCH_ENDPOINT"):
        adapter.build_request(chat(), target("azure"))


def test_anthropic_headers_and_default_max_tokens():
    adapter = make_adapter("anthropic", None, base_url="https://api.anthropic.com",
                           options={"default_max_tokens": 1024, "beta": ["prompt-caching-2024-07-31"]})
    up = adapter.build_request(chat(), target("anthropic"))
    assert up.url == "https://api.anthropic.com/v1/messages"
    assert up.headers["x-api-key"] == "test-key" and up.headers["anthropic-version"] == "2023-06-01"
    assert up.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert json.loads(up.body)["max_tokens"] == 1024  # required by Anthropic: defaulted, never omitted
    assert json.loads(adapter.build_request(chat(max_completion_tokens=77), target("anthropic")).body)[
        "max_tokens"] == 77


def test_gemini_key_goes_in_a_header_and_streams_use_alt_sse():
    adapter = make_adapter("gemini", None, base_url="https://generativelanguage.googleapis.com/v1beta")
    up = adapter.build_request(chat(), target("gemini"))
    assert up.url.endswith("/v1beta/models/gemini-2.5-flash:generateContent")
    assert up.headers["x-goog-api-key"] == "test-key" and "key=" not in up.url
    up = adapter.build_stream_request(chat(), target("gemini"))
    assert up.url.endswith(":streamGenerateContent") and up.params == {"alt": "sse"}


def test_bedrock_signs_with_sigv4_and_encodes_the_model_id():
    adapter = make_adapter("bedrock", None, base_url=None)
    up = adapter.build_request(chat(), target("bedrock"))
    assert up.url == ("https://bedrock-runtime.us-east-1.amazonaws.com/model/"
                      "us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse")
    auth = up.headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDFAKE00000000/")
    assert "/us-east-1/bedrock/aws4_request" in auth and "X-Amz-Date" in up.headers
    stream = adapter.build_stream_request(chat(), target("bedrock"))
    assert stream.url.endswith("/converse-stream") and stream.headers["accept"] == "application/vnd.amazon.eventstream"


def test_bedrock_session_token_is_signed_in():
    adapter = make_adapter("bedrock", None, base_url=None, options={"session_token": "FwoGZXIvYXdzEXAMPLE"})
    up = adapter.build_request(chat(), target("bedrock"))
    assert up.headers["X-Amz-Security-Token"] == "FwoGZXIvYXdzEXAMPLE"
    assert "x-amz-security-token" in up.headers["Authorization"]


# ---- refusals: a feature the provider lacks is a 400 naming provider and parameter -----------------

USER_IMAGE_URL = Message(role="user", content=[ContentPart(type="image_url",
                                                           image_url={"url": "https://example.com/a.png"})])
USER_AUDIO = Message(role="user", content=[ContentPart(type="input_audio",
                                                       input_audio={"data": "UklGR", "format": "wav"})])
NAMED = Message(role="user", content="hi", name="alice")
FUNCTION_ROLE = Message(role="function", content="{}", name="f")

REFUSALS = [
    ("anthropic", chat(n=2), "n"),
    ("anthropic", chat(seed=0), "seed"),  # a seed of 0 is still a seed
    ("anthropic", chat(temperature=1.5), "temperature"),
    ("anthropic", chat(presence_penalty=0.5), "presence_penalty"),
    ("anthropic", chat(logit_bias={"50256": -100}), "logit_bias"),
    ("anthropic", chat(logprobs=True), "logprobs"),
    ("anthropic", chat(USER_AUDIO), "messages[0].content[0]"),
    ("anthropic", chat(response_format={"type": "json_object"}, tools=[WEATHER_TOOL]), "response_format"),
    ("anthropic", chat(tools=[{"type": "web_search_preview"}]), "tools[0]"),
    ("gemini", chat(logit_bias={"1": 1}), "logit_bias"),
    ("gemini", chat(tools=[WEATHER_TOOL], parallel_tool_calls=False), "parallel_tool_calls"),
    ("gemini", chat(Message(role="tool", tool_call_id="call_unknown", content="{}")), "messages[0].tool_call_id"),
    ("mistral", chat(logprobs=True), "logprobs"),
    ("mistral", chat(USER_AUDIO), "messages[0].content[0]"),
    ("bedrock", chat(seed=7), "seed"),
    ("bedrock", chat(n=3), "n"),
    ("bedrock", chat(frequency_penalty=1.0), "frequency_penalty"),
    ("bedrock", chat(temperature=1.2), "temperature"),
    ("bedrock", chat(USER_IMAGE_URL), "messages[0].content[0]"),
    ("bedrock", chat(tools=[WEATHER_TOOL], parallel_tool_calls=False), "parallel_tool_calls"),
]


@pytest.mark.parametrize("provider,request_,param", REFUSALS, ids=[f"{p}-{x}" for p, _, x in REFUSALS])
def test_unsupported_features_are_refused_not_dropped(provider, request_, param):
    with pytest.raises(InvalidRequest) as exc:
        body_of(provider, request_)
    assert exc.value.param == param
    assert exc.value.status == 400 and provider in exc.value.message
    assert exc.value.info().body()["error"]["param"] == param


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "mistral", "bedrock"])
def test_names_and_the_legacy_function_role_are_refused_outside_openai(provider):
    with pytest.raises(InvalidRequest) as exc:
        body_of(provider, chat(NAMED))
    assert exc.value.param == "messages[0].name"
    with pytest.raises(InvalidRequest) as exc:
        body_of(provider, chat("hi", FUNCTION_ROLE))
    assert exc.value.param == "messages[1].role"


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "mistral", "bedrock"])
def test_no_op_values_are_not_refused(provider):
    body = body_of(provider, chat(n=1, presence_penalty=0.0, frequency_penalty=0, logprobs=False,
                                  parallel_tool_calls=True, tools=[WEATHER_TOOL]))
    assert "get_weather" in json.dumps(body)  # built in full, with the tool, rather than refused


def test_refusal_names_the_provider_as_configured():
    adapter = make_adapter("anthropic", None, base_url="https://x", name="claude-eu")
    with pytest.raises(InvalidRequest, match=r"claude-eu \(anthropic\) does not support seed"):
        adapter.build_request(chat(seed=1), target("anthropic"))


def test_malformed_tool_arguments_in_history_are_a_client_error():
    bad = Message(role="assistant", tool_calls=[ToolCall(id="c1", function=FunctionCall(name="f", arguments="{oops"))])
    for provider in ("anthropic", "gemini", "bedrock"):
        with pytest.raises(InvalidRequest) as exc:
            body_of(provider, chat("hi", bad))
        assert exc.value.param == "messages[1].tool_calls[0].function.arguments"


# ---- translations ------------------------------------------------------------------------------

def test_tool_choice_translations():
    named = {"type": "function", "function": {"name": "get_weather"}}
    a = body_of("anthropic", chat(tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False))
    assert a["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body_of("anthropic", chat(tools=[WEATHER_TOOL], tool_choice=named))["tool_choice"] == \
        {"type": "tool", "name": "get_weather"}
    assert body_of("anthropic", chat(tools=[WEATHER_TOOL], tool_choice="none"))["tool_choice"] == {"type": "none"}
    g = body_of("gemini", chat(tools=[WEATHER_TOOL], tool_choice=named))
    assert g["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body_of("gemini", chat(tools=[WEATHER_TOOL], tool_choice="none"))["toolConfig"] == \
        {"functionCallingConfig": {"mode": "NONE"}}
    b = body_of("bedrock", chat(tools=[WEATHER_TOOL], tool_choice="required"))
    assert b["toolConfig"]["toolChoice"] == {"any": {}}
    assert body_of("bedrock", chat(tools=[WEATHER_TOOL], tool_choice=named))["toolConfig"]["toolChoice"] == \
        {"tool": {"name": "get_weather"}}
    assert body_of("mistral", chat(tools=[WEATHER_TOOL], tool_choice="required"))["tool_choice"] == "required"


def test_bedrock_tool_choice_none_leaves_tools_out_until_tools_were_used():
    assert "toolConfig" not in body_of("bedrock", chat(tools=[WEATHER_TOOL], tool_choice="none"))
    history = canonical_request()
    history.tool_choice = "none"
    with pytest.raises(InvalidRequest) as exc:
        body_of("bedrock", history)
    assert exc.value.param == "tool_choice"


def test_json_mode_and_schema():
    a = body_of("anthropic", chat(response_format=SCHEMA))
    assert a["tools"] == [{"name": JSON_TOOL, "description": "Reply with the requested JSON output.",
                           "input_schema": SCHEMA["json_schema"]["schema"]}]
    assert a["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    b = body_of("bedrock", chat(response_format={"type": "json_object"}))
    assert b["toolConfig"]["toolChoice"] == {"tool": {"name": JSON_TOOL}}
    assert b["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"] == "object"
    g = body_of("gemini", chat(response_format=SCHEMA))
    assert g["generationConfig"] == {"responseMimeType": "application/json",
                                     "responseJsonSchema": SCHEMA["json_schema"]["schema"]}
    assert body_of("gemini", chat(response_format={"type": "json_object"}))["generationConfig"] == \
        {"responseMimeType": "application/json"}
    assert body_of("mistral", chat(response_format=SCHEMA))["response_format"] == SCHEMA
    with pytest.raises(InvalidRequest, match="top level must be an object"):
        body_of("anthropic", chat(response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "array"}}}))


def test_gemini_sampling_and_candidates():
    g = body_of("gemini", chat(n=2, seed=11, presence_penalty=0.5, frequency_penalty=0.25, stop="END",
                               max_completion_tokens=64))
    assert g["generationConfig"] == {"maxOutputTokens": 64, "candidateCount": 2, "seed": 11,
                                     "presencePenalty": 0.5, "frequencyPenalty": 0.25, "stopSequences": ["END"]}


def test_gemini_media_parts_and_wrapped_tool_results():
    req = chat(Message(role="user", content=[
        ContentPart(type="image_url", image_url={"url": "https://example.com/cat.webp?x=1"}),
        ContentPart(type="input_audio", input_audio={"data": "SUQzBA", "format": "mp3"}),
        ContentPart(type="file", file={"file_data": "data:application/pdf;base64,JVBERi0x"})]),
        Message(role="assistant", tool_calls=[ToolCall(id="c9", function=FunctionCall(name="lookup",
                                                                                      arguments="{}"))]),
        Message(role="tool", tool_call_id="c9", content="plain text result"))
    g = body_of("gemini", req)
    assert g["contents"][0]["parts"] == [
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?x=1"}},
        {"inlineData": {"mimeType": "audio/mp3", "data": "SUQzBA"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0x"}}]
    assert g["contents"][2]["parts"] == [{"functionResponse": {"name": "lookup",
                                                               "response": {"result": "plain text result"}}}]


def test_anthropic_merges_parallel_tool_results_into_one_user_turn_first():
    req = chat("weather in Paris and Lyon?",
               Message(role="assistant", tool_calls=[
                   ToolCall(id="toolu_a", function=FunctionCall(name="get_weather", arguments='{"city":"Paris"}')),
                   ToolCall(id="toolu_b", function=FunctionCall(name="get_weather", arguments='{"city":"Lyon"}'))]),
               Message(role="tool", tool_call_id="toolu_a", content="18C"),
               Message(role="tool", tool_call_id="toolu_b", content="20C"),
               "thanks, and tomorrow?")
    turns = body_of("anthropic", req)["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert [b["type"] for b in turns[2]["content"]] == ["tool_result", "tool_result", "text"]
    assert turns[1]["content"][1] == {"type": "tool_use", "id": "toolu_b", "name": "get_weather",
                                      "input": {"city": "Lyon"}}


def test_anthropic_images_by_url_and_pdf_documents():
    req = chat(Message(role="user", content=[
        ContentPart(type="image_url", image_url={"url": "https://example.com/a.jpg"}),
        ContentPart(type="file", file={"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "a.pdf"})]))
    blocks = body_of("anthropic", req)["messages"][0]["content"]
    assert blocks == [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                      {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                      "data": "JVBERi0x"}}]


def test_mistral_maps_foreign_tool_ids_to_nine_alphanumerics_consistently():
    body = body_of("mistral", canonical_request())
    call_id = body["messages"][3]["tool_calls"][0]["id"]
    assert call_id == body["messages"][4]["tool_call_id"] == mistral_tool_id("call_Qx7bTf3nWz9Lk2Vd")
    assert len(call_id) == 9 and call_id.isalnum()
    assert mistral_tool_id("D681PevKs") == "D681PevKs"  # Mistral's own ids are kept


def test_mistral_dialect_names():
    body = body_of("mistral", chat(seed=5, max_completion_tokens=40, stream=True, stream_options={"x": 1}))
    assert body["random_seed"] == 5 and "seed" not in body
    assert body["max_tokens"] == 40 and "stream_options" not in body


def test_bedrock_passes_operator_model_fields_through():
    b = body_of("bedrock", chat(), options={"additional_model_request_fields": {"top_k": 40}})
    assert b["additionalModelRequestFields"] == {"top_k": 40}


def test_canonical_request_fixture_is_valid_openai():
    # the fixture is an OpenAI request as a client would send it: it must decode as the gateway decodes it
    req = canonical_request()
    assert len(req.messages) == 7 and msgspec.to_builtins(req)["tools"][0]["function"]["name"] == "get_weather"
