"""The client libraries users put in front of the gateway, against ``make run``'s default catalog (the mock).

Each library is used as its documentation shows, unchanged, through its async
API (the system runs in this test process, on the same event loop): the
official ``openai`` and ``anthropic`` SDKs, LangChain's ``ChatOpenAI``,
Instructor and LiteLLM. What they need of a model -- tool calls whose
arguments fit the tool's schema, structured output that fits the given
schema, ``n`` choices, streamed tool-call deltas, token counts, OpenAI's
error wording -- the built-in mock provides deterministically.
"""

from __future__ import annotations

import json
import os
from typing import Literal

import anthropic
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from shared.natsd import NatsServer
from tests.support.system import ADMIN_KEY, make_settings, start_system

MODEL = "mock-1"


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    """A person, as an extraction would return one."""

    name: str
    age: int = Field(ge=0, le=150)
    role: Literal["engineer", "manager"]
    address: Address
    skills: list[str]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 2}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit", "days"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                       "required": ["zone"]}}}


@pytest.fixture(scope="module")
async def system(tmp_path_factory):
    """Switchyard with the built-in catalog, as ``make run`` starts it with no provider key configured, on a bus of
    its own (on the session's, the session system's consumers would take its requests, with another catalog)."""
    root = tmp_path_factory.mktemp("clients")
    nats = NatsServer(root / "nats").start()
    running = await start_system(make_settings(nats, root / "data", catalog_path=None))
    configured = {t.provider for name in running.deps.catalog.models for t in running.deps.catalog.targets(name)}
    if configured != {"mock"}:
        await running.close()
        nats.stop()
        pytest.skip(f"provider keys in the environment configure {sorted(configured - {'mock'})}: not the default")
    yield running
    await running.close()
    nats.stop()


def oai(system, key: str = ADMIN_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=system.base_url + "/v1", api_key=key, max_retries=0)


def claude(system) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=system.base_url, api_key=ADMIN_KEY, max_retries=0)


# ---- openai ---------------------------------------------------------------------------------------

async def test_openai_parse_with_a_pydantic_model(system):
    done = await oai(system).chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Extract: Ada, 36, engineer in London"}],
        response_format=Person)
    person = done.choices[0].message.parsed
    assert isinstance(person, Person) and person.address.city and person.role in ("engineer", "manager")


async def test_openai_tool_choice_required_named_and_the_tool_result_round_trip(system):
    client = oai(system)
    messages = [{"role": "user", "content": "What time is it in Tokyo and the weather there?"}]
    required = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME],
                                                    tool_choice="required")
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    named = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = named.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # the tool answered: the model answers in text
    messages += [named.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    final = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME])
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    assert not final.choices[0].message.tool_calls
    none = await client.chat.completions.create(model=MODEL, messages=messages[:1], tools=[WEATHER],
                                                tool_choice="none")
    assert none.choices[0].message.content and not none.choices[0].message.tool_calls
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model=MODEL, messages=messages[:1], tools=[WEATHER],
                                             tool_choice={"type": "function", "function": {"name": "nope"}})
    assert exc.value.body["param"] == "tool_choice"


async def test_openai_streams_tool_call_deltas(system):
    stream = await oai(system).chat.completions.create(model=MODEL, stream=True, tools=[WEATHER],
                                                       messages=[{"role": "user", "content": "weather?"}])
    first, args, finish = None, "", None
    async for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or ():
                first = first or tc
                args += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert first.id and first.type == "function" and first.function.name == "get_weather"
    assert finish == "tool_calls"
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True, "parameters": {
        **WEATHER["function"]["parameters"], "additionalProperties": False}}}
    async with oai(system).chat.completions.stream(model=MODEL, tools=[strict],
                                                   messages=[{"role": "user", "content": "weather?"}]) as s:
        final = await s.get_final_completion()
    parsed = final.choices[0].message.tool_calls[0].function.parsed_arguments
    assert parsed == json.loads(args)


async def test_openai_n_stop_max_tokens_logprobs_and_json_object(system):
    client = oai(system)
    msgs = [{"role": "user", "content": "Tell me about rail yards"}]
    two = await client.chat.completions.create(model=MODEL, messages=msgs, n=2)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].message.content != two.choices[1].message.content
    full = two.choices[0].message.content
    word = full.split()[3]
    stopped = await client.chat.completions.create(model=MODEL, messages=msgs, stop=[word])
    assert stopped.choices[0].message.content == full[:full.index(word)]
    pieces = [c.choices[0].delta.content async for c in await client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=3, stream=True) if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 3 and "".join(pieces) == " ".join(full.split()[:3])
    lp = await client.chat.completions.create(model=MODEL, messages=msgs, logprobs=True, top_logprobs=2)
    tokens = lp.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == full and all(len(t.top_logprobs) == 2 for t in tokens)
    js = await client.chat.completions.create(model=MODEL, messages=msgs, response_format={"type": "json_object"})
    assert isinstance(json.loads(js.choices[0].message.content), dict)


async def test_openai_models_legacy_completions_and_errors(system):
    client = oai(system)
    assert (await client.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")
    text = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, n=2, echo=True)
    assert text.object == "text_completion" and len(text.choices) == 2
    assert text.choices[0].text.startswith("Once upon a time") and text.usage.completion_tokens <= 10
    streamed = "".join([c.choices[0].text async for c in await client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True) if c.choices])
    assert streamed == text.choices[0].text.removeprefix("Once upon a time")
    with pytest.raises(openai.AuthenticationError) as exc:
        await oai(system, key="sk-not-a-real-key-1234").models.list()
    assert exc.value.body["message"] == ("Incorrect API key provided: sk-...1234. You can find your API key at "
                                         "https://platform.openai.com/account/api-keys.")
    with pytest.raises(openai.BadRequestError) as exc:  # mock-1 does not advertise vision: refused, not ignored
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is on this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert "vision" in exc.value.message
    async with system.http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as streamed_response:
        assert streamed_response.headers["x-switchyard-provider"] == "mock"  # as on a whole answer
        assert streamed_response.headers["x-request-id"].startswith("req_")
    job = await system.http.post("/v1/jobs", json={"model": "no-such-model",
                                                   "messages": [{"role": "user", "content": "x"}]})
    assert job.status_code == 404 and job.json()["error"]["code"] == "model_not_found"


# ---- anthropic ------------------------------------------------------------------------------------

ANTHROPIC_TOOL = {"name": "get_weather", "description": "The weather in a city",
                  "input_schema": WEATHER["function"]["parameters"]}


async def test_anthropic_tool_use_count_tokens_and_stream_helpers(system):
    client = claude(system)
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = await client.messages.create(model=MODEL, max_tokens=256, messages=msgs, tools=[ANTHROPIC_TOOL],
                                       tool_choice={"type": "any"})
    use = next(b for b in msg.content if b.type == "tool_use")
    assert msg.stop_reason == "tool_use" and use.name == "get_weather"
    jsonschema.validate(use.input, ANTHROPIC_TOOL["input_schema"])
    answered = await client.messages.create(model=MODEL, max_tokens=256, tools=[ANTHROPIC_TOOL], messages=[
        *msgs, {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"
    counted = await client.messages.count_tokens(model=MODEL, messages=msgs, tools=[ANTHROPIC_TOOL],
                                                 tool_choice={"type": "any"})
    assert counted.input_tokens == msg.usage.input_tokens > 0  # what is counted is what is billed
    named = {"type": "tool", "name": "get_weather"}
    counted = await client.messages.count_tokens(model=MODEL, messages=msgs, tools=[ANTHROPIC_TOOL],
                                                 tool_choice=named)
    async with client.messages.stream(model=MODEL, max_tokens=256, messages=msgs, tools=[ANTHROPIC_TOOL],
                                      tool_choice=named) as stream:
        events = [e async for e in stream]
        final = await stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    assert start.message.model == MODEL and start.message.usage.input_tokens == counted.input_tokens
    assert any(e.type == "input_json" for e in events)
    streamed_use = next(b for b in final.content if b.type == "tool_use")
    assert streamed_use.input == use.input and final.stop_reason == "tool_use"
    async with client.messages.stream(model="auto", max_tokens=32, messages=msgs) as stream:
        start = [e async for e in stream if e.type == "message_start"][0]
    assert start.message.model == MODEL  # the model that serves, not the name asked for
    with pytest.raises(anthropic.AuthenticationError) as exc:
        await anthropic.AsyncAnthropic(base_url=system.base_url, api_key="sk-wrong-key-000", max_retries=0
                                       ).messages.create(model=MODEL, max_tokens=8, messages=msgs)
    assert "x-api-key" in exc.value.message


# ---- LangChain ------------------------------------------------------------------------------------

def chat_model(system):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=system.base_url + "/v1", api_key=ADMIN_KEY, max_retries=0)


async def test_langchain_bind_tools_and_structured_output_in_its_three_methods(system):
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str, days: int) -> str:
        """The weather in a city for some days."""
        return "sunny"

    reply = await chat_model(system).bind_tools([get_weather]).ainvoke("Weather in Oslo for 3 days?")
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    assert isinstance(reply.tool_calls[0]["args"]["city"], str) and isinstance(reply.tool_calls[0]["args"]["days"], int)
    for method in ("function_calling", "json_schema"):
        person = await chat_model(system).with_structured_output(Person, method=method).ainvoke("Ada, engineer")
        assert isinstance(person, Person), method
    # JSON mode promises a JSON object, not a schema (the prompt would describe one): the mock answers one.
    loose = await chat_model(system).with_structured_output(None, method="json_mode").ainvoke("Answer in JSON")
    assert isinstance(loose, dict) and loose


# ---- Instructor -----------------------------------------------------------------------------------

async def test_instructor_response_model(system):
    import instructor

    client = instructor.from_openai(oai(system))
    person = await client.chat.completions.create(model=MODEL, response_model=Person, max_retries=0,
                                                  messages=[{"role": "user", "content": "Ada, 36, engineer"}])
    assert isinstance(person, Person)


# ---- LiteLLM --------------------------------------------------------------------------------------

async def test_litellm_tools_and_its_authentication_error(system):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of a price list from the internet
    import litellm

    reply = await litellm.acompletion(model=f"openai/{MODEL}", api_base=system.base_url + "/v1", api_key=ADMIN_KEY,
                                      messages=[{"role": "user", "content": "weather in Rome?"}], tools=[WEATHER],
                                      tool_choice="required", num_retries=0)
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    with pytest.raises(litellm.AuthenticationError):
        await litellm.acompletion(model=f"openai/{MODEL}", api_base=system.base_url + "/v1",
                                  api_key="sk-not-a-valid-key-9999", num_retries=0,
                                  messages=[{"role": "user", "content": "hi"}])
