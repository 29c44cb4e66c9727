"""The mock provider honours what a client asks of a chat model, deterministically, or refuses it (400)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from services.workers.adapters.mock import MockAdapter
from services.workers.adapters.schema_instance import Unsatisfiable, instance
from shared.canonical import ContentPart, Message
from shared.errors import InvalidRequest
from tests.support.adapters import chat, collect, spec, target

MOCK = target("openai", "mock-1")
SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "string", "minLength": 5, "maxLength": 6},
                                      "b": {"type": "integer", "exclusiveMinimum": 10, "multipleOf": 3},
                                      "c": {"type": ["null", "number"], "maximum": -2.5},
                                      "d": {"enum": ["x", "y"]}, "e": {"const": 7}},
     "required": ["a", "b", "c", "d", "e"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "minItems": 2, "uniqueItems": True,
                                                "items": {"$ref": "#/$defs/Item"}}},
     "required": ["items"], "$defs": {"Item": {"type": "object", "properties": {"id": {"type": "string",
                                                                                       "format": "uuid"}},
                                               "required": ["id"]}}},
    {"anyOf": [{"type": "string", "pattern": "^[0-9]+$"}, {"type": "null"}]},
    {"allOf": [{"type": "object", "properties": {"x": {"type": "string", "format": "date-time"}},
                "required": ["x"]}, {"properties": {"y": {"type": "boolean"}}, "required": ["y"]}]},
    {"type": "object", "properties": {"email": {"type": "string", "format": "email"},
                                      "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 0}},
     "required": ["email", "tags"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_instances_are_valid_and_deterministic(schema):
    value = instance(schema, "seed")
    jsonschema.validate(value, schema)
    assert instance(schema, "seed") == value


def test_an_unsatisfiable_schema_says_where():
    with pytest.raises(Unsatisfiable) as exc:
        instance({"type": "object", "properties": {"p": {"type": "string", "pattern": "^zz[0-9]{9}$"}},
                  "required": ["p"]})
    assert exc.value.path == "/p"


async def test_tool_choice_auto_calls_then_answers_after_the_tool_result():
    adapter = MockAdapter(spec("mock"))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": SCHEMAS[0]}}]
    called = await adapter.complete(chat("look it up", tools=tools), MOCK, 5)
    call = called.choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[0])
    history = [Message(role="user", content="look it up"), called.choices[0].message,
               Message(role="tool", tool_call_id=call.id, content="found")]
    answered = await adapter.complete(chat(*history, tools=tools), MOCK, 5)
    assert answered.choices[0].finish_reason == "stop" and answered.choices[0].message.content


async def test_streamed_pieces_respect_the_cap_and_join_to_the_sync_answer():
    adapter = MockAdapter(spec("mock"))
    for request in (chat("x", max_tokens=3), chat("x", n=2, stop=["track"]),
                    chat("x", response_format={"type": "json_schema", "json_schema": {"schema": SCHEMAS[1]}})):
        sync = await adapter.complete(request, MOCK, 5)
        chunks = await collect(adapter.stream(request, MOCK, 5))
        for c in sync.choices:
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks
                           if ch.choices and ch.choices[0].index == c.index)
            assert text == c.message.content
        assert chunks[-1].usage == sync.usage
    capped = await adapter.complete(chat("x", max_tokens=3), MOCK, 5)
    assert capped.usage.completion_tokens == 3 and capped.choices[0].finish_reason == "length"


@pytest.mark.parametrize("fields, param", [
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "string"}}}}}}, "response_format.json_schema.schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"p": {"type": "string", "pattern": "^zz[0-9]{9}$"}},
        "required": ["p"]}}}]}, "tools[f].parameters"),
])
async def test_what_it_cannot_honour_is_refused(fields, param):
    with pytest.raises(InvalidRequest) as exc:
        await MockAdapter(spec("mock")).complete(chat("x", **fields), MOCK, 5)
    assert exc.value.param == param


async def test_image_and_file_parts_are_read_audio_is_refused():
    adapter = MockAdapter(spec("mock"))
    image = Message(role="user", content=[ContentPart(type="text", text="what is this?"), ContentPart(
        type="image_url", image_url={"url": "data:image/png;base64,iVBORw0KGgo="})])
    assert (await adapter.complete(chat(image), MOCK, 5)).choices[0].message.content
    audio = Message(role="user", content=[ContentPart(type="input_audio", input_audio={"data": "AAAA",
                                                                                      "format": "wav"})])
    with pytest.raises(InvalidRequest) as exc:
        await adapter.complete(chat(audio), MOCK, 5)
    assert exc.value.param == "messages[0].content[0]"


async def test_streamed_log_probabilities_fold_into_the_answer_and_survive_a_replay():
    from services.workers.streaming import StreamAssembler, replay_chunks

    adapter = MockAdapter(spec("mock"))
    request = chat("x", logprobs=True, top_logprobs=2, n=2)
    sync = await adapter.complete(request, MOCK, 5)
    folded = StreamAssembler(request, "mock-1")
    for chunk in await collect(adapter.stream(request, MOCK, 5)):
        folded.add(chunk)
    assert [c.logprobs for c in folded.response().choices] == [c.logprobs for c in sync.choices]
    replayed = StreamAssembler(request, "mock-1")
    for chunk in replay_chunks(sync):
        replayed.add(chunk)
    assert replayed.response().choices == sync.choices
