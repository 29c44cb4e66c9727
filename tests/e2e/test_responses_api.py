"""The Responses API with the official ``openai`` SDK against ``make run``'s default catalog (the mock provider):
sync, streamed (typed events), background (a job), ``previous_response_id`` over stored conversations, delete,
cancel, tenant isolation, function tools, the truncation policy and what is refused with a 400.

The mock answers deterministically from the messages it is sent, so what a turn was sent can be checked by
asking ``/v1/chat/completions`` the same conversation: the same words come back.
"""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from shared.natsd import NatsServer
from tests.support.api import sdk
from tests.support.system import OTHER_TENANT_KEY, make_settings, start_system
from tests.support.wait import eventually

MODEL = "mock-1"


@pytest.fixture(scope="module")
async def gw(tmp_path_factory):
    """Switchyard with the built-in catalog, as ``make run`` starts it with no provider key configured, on a bus of
    its own (another system on the same bus, with another catalog, would take part of its work)."""
    root = tmp_path_factory.mktemp("responses")
    nats = NatsServer(root / "nats").start()
    running = await start_system(make_settings(nats, root / "data", catalog_path=None))
    yield running
    await running.close()
    nats.stop()


async def chat_says(client: openai.AsyncOpenAI, messages: list[dict]) -> str:
    """What the mock answers to exactly these chat messages."""
    r = await client.chat.completions.create(model=MODEL, messages=messages)
    return r.choices[0].message.content


async def test_sync_response_is_a_stored_response_object(gw):
    client = sdk(gw)
    r = await client.responses.create(model=MODEL, input="Say hello", instructions="Be brief.")
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.model == MODEL and r.instructions == "Be brief."
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    # Routed like a chat completion with the instructions as the system message.
    assert r.output_text == await chat_says(client, [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Say hello"}])
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    again = await client.responses.retrieve(r.id)
    assert again.id == r.id and again.output_text == r.output_text and again.status == "completed"
    # Its trace is the request's: the response id is the request id with another prefix.
    async def traced():  # audit records it from the stream, a moment after the answer
        trace = await gw.http.get(f"/v1/requests/req_{r.id.removeprefix('resp_')}")
        return trace.json() if trace.status_code == 200 else None

    assert (await eventually(traced, timeout=10, message="the response's request has no trace"))["status"] == "succeeded"


async def test_stream_sends_the_typed_events_in_order(gw):
    client = sdk(gw)
    stream = await client.responses.create(model=MODEL, input="Stream a few words", stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response
    assert deltas == done.text == final.output_text
    assert final.status == "completed" and final.usage.output_tokens > 0
    assert deltas == await chat_says(client, [{"role": "user", "content": "Stream a few words"}])
    # The streamed response was stored too, with the same item ids.
    stored = await client.responses.retrieve(final.id)
    assert stored.output[0].id == events[2].item.id == final.output[0].id


async def test_previous_response_id_continues_the_stored_conversation(gw):
    client = sdk(gw)
    first = await client.responses.create(model=MODEL, input="My name is Ada.", instructions="Be kind.")
    second = await client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # The second turn was sent the first turn and its answer (instructions are not carried over, as at OpenAI).
    assert second.output_text == await chat_says(client, [
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert second.usage.input_tokens > first.usage.input_tokens
    items = await client.responses.input_items.list(second.id, order="asc")
    assert [(i.type, i.role) for i in items.data] == [("message", "user"), ("message", "assistant"),
                                                      ("message", "user")]
    assert items.data[1].content[0].text == first.output_text
    # A third turn continues the second.
    third = await client.responses.create(model=MODEL, input="And again?", previous_response_id=second.id)
    assert len((await client.responses.input_items.list(third.id)).data) == 5


async def test_store_false_is_not_kept(gw):
    client = sdk(gw)
    r = await client.responses.create(model=MODEL, input="forget me", store=False)
    assert r.status == "completed" and r.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=MODEL, input="x", previous_response_id=r.id)


async def test_background_response_runs_as_a_job(gw):
    client = sdk(gw)
    r = await client.responses.create(model=MODEL, input="Work on this in the background", background=True)
    assert r.status == "queued" and r.background is True

    async def finished():
        got = await client.responses.retrieve(r.id)
        return got if got.status == "completed" else None

    done = await eventually(finished, timeout=15, interval=0.05, message="background response did not complete")
    assert done.output_text == await chat_says(client, [{"role": "user",
                                                         "content": "Work on this in the background"}])
    job = await gw.http.get(f"/v1/jobs/job_{r.id.removeprefix('resp_')}")
    assert job.json()["status"] == "completed"
    follow = await client.responses.create(model=MODEL, input="next", previous_response_id=r.id)
    assert follow.status == "completed"


async def test_cancel_a_background_response(system):
    """On the test catalog, whose mock can be slowed per request: the job is still running when cancelled."""
    client = sdk(system)
    slow = {"switchyard": {"mock": {"latency_ms": 5000}}}
    r = await client.responses.create(model=MODEL, input="cancel me", background=True, extra_body=slow)
    cancelled = await client.responses.cancel(r.id)
    assert cancelled.status == "cancelled" and cancelled.output == []
    assert (await client.responses.retrieve(r.id)).status == "cancelled"
    job = await system.http.get(f"/v1/jobs/job_{r.id.removeprefix('resp_')}")
    assert job.json()["status"] == "cancelled"
    with pytest.raises(openai.BadRequestError) as exc:  # a cancelled response cannot be continued
        await client.responses.create(model=MODEL, input="go on", previous_response_id=r.id)
    assert exc.value.body["param"] == "previous_response_id"
    sync = await client.responses.create(model=MODEL, input="not background")
    with pytest.raises(openai.BadRequestError):
        await client.responses.cancel(sync.id)


async def test_delete_then_404_and_other_tenant_404(gw):
    client = sdk(gw)
    r = await client.responses.create(model=MODEL, input="tenant a's secret")
    other = sdk(gw, key=OTHER_TENANT_KEY)
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.create(model=MODEL, input="continue theirs", previous_response_id=r.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.delete(r.id)
    await client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(r.id)


async def test_items_input_and_function_tools_map_to_chat(gw):
    client = sdk(gw)
    tool = {"type": "function", "name": "get_weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    r = await client.responses.create(model=MODEL, input=items, tools=[tool])
    assert r.status == "completed" and r.tools[0].name == "get_weather"
    stored = await client.responses.input_items.list(r.id, order="asc")
    assert [i.type for i in stored.data] == ["message", "function_call", "function_call_output"]
    assert stored.data[1].call_id == "call_1" and stored.data[2].output == "sunny"


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"background": True, "stream": True}, "stream"),
    ({"no_such_field": 1}, None),
])
async def test_what_cannot_be_honoured_is_a_400_naming_it(gw, extra, param):
    body = {"model": MODEL, "input": "x", **extra}
    r = await gw.http.post("/v1/responses", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param, err


async def test_long_conversation_is_truncated_oldest_turns_first(gw):
    """mock-1's window is 32,768 tokens (~4 characters each): three turns of ~12k tokens do not fit together."""
    client = sdk(gw)
    big = "word " * 10_000  # about 12,500 tokens
    first = await client.responses.create(model=MODEL, input="first " + big, max_output_tokens=16)
    second = await client.responses.create(model=MODEL, input="second " + big, max_output_tokens=16,
                                           previous_response_id=first.id)
    third = await client.responses.create(model=MODEL, input="third " + big, max_output_tokens=16,
                                          previous_response_id=second.id, instructions="Keep me.")
    seen = [i.content[0].text.split()[0] for i in (await client.responses.input_items.list(third.id, order="asc")).data
            if i.role == "user"]
    assert seen == ["second", "third"]  # the oldest turn went; the instructions and the new input stayed
    with pytest.raises(openai.BadRequestError) as exc:
        await client.responses.create(model=MODEL, input="fourth " + big, previous_response_id=third.id,
                                      truncation="disabled", max_output_tokens=16)
    assert exc.value.body["code"] == "context_length_exceeded"


WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "minLength": 2},
                                                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                          "required": ["city", "days"]}}


async def test_function_tool_round_trip_and_streamed_call(gw):
    client = sdk(gw)
    r = await client.responses.create(model=MODEL, input="Weather in Paris for 3 days?", tools=[WEATHER],
                                      tool_choice="required")
    [call] = [i for i in r.output if i.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    args = json.loads(call.arguments)
    assert isinstance(args["city"], str) and len(args["city"]) >= 2 and 1 <= args["days"] <= 7
    # The tool result goes back as a function_call_output item on top of the stored conversation.
    answer = await client.responses.create(model=MODEL, tools=[WEATHER], previous_response_id=r.id,
                                           input=[{"type": "function_call_output", "call_id": call.call_id,
                                                   "output": "sunny, 21 C"}])
    assert answer.status == "completed" and answer.output_text
    assert not [i for i in answer.output if i.type == "function_call"]
    # Streamed, the call arrives as a function_call item with its argument deltas.
    stream = await client.responses.create(model=MODEL, input="Weather in Paris for 3 days?", tools=[WEATHER],
                                           tool_choice={"type": "function", "name": "get_weather"}, stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    added = next(e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    final = events[-1].response
    [final_call] = [i for i in final.output if i.type == "function_call"]
    assert added.item.id == done.item_id == final_call.id
    assert done.arguments == final_call.arguments and json.loads(done.arguments)["city"]


class Person(BaseModel):
    name: str
    age: int


async def test_sdk_parse_with_a_pydantic_model(gw):
    r = await sdk(gw).responses.parse(model=MODEL, input="Ada, 36", text_format=Person)
    assert isinstance(r.output_parsed, Person)


async def test_structured_output_through_text_format(gw):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = await sdk(gw).responses.create(model=MODEL, input="Extract: Ada, 36",
                                       text={"format": {"type": "json_schema", "name": "person", "schema": schema,
                                                        "strict": True}})
    value = json.loads(r.output_text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)


async def test_a_stream_broken_upstream_ends_with_response_failed(system):
    """On the test catalog (fault injection): the provider's stream breaks after two chunks."""
    stream = await sdk(system).responses.create(model=MODEL, input="break off", stream=True,
                                                extra_body={"switchyard": {"mock": {"cut_after": 2}}})
    events = [e async for e in stream]
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.failed" and events[-1].response.status == "failed"
    assert events[-1].response.error.message and "response.completed" not in [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
