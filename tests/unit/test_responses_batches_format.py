"""The pure parts of the Responses and Batch APIs: Responses requests to canonical chat requests (items, tools,
formats, the truncation policy), output items, and batch input lines and output lines."""

from __future__ import annotations

import json

import httpx
import msgspec
import pytest

from services.gateway import responses_format as rf
from services.gateway.batches import _input_gone, output_line
from services.gateway.files import batch_lines, parse_form
from services.gateway.responses import _from_job
from shared.canonical import FunctionCall, Message, ToolCall
from shared.errors import ErrorInfo, InvalidRequest
from shared.events import JobRecord
from shared.state.batches import BatchRecord, job_id, merge_outcomes
from shared.state.conversations import StoredResponse


def req(**fields) -> rf.ResponsesRequest:
    return rf.parse_request(json.dumps({"model": "m", "input": "hi", **fields}).encode(), 1 << 20)


def test_items_map_to_chat_messages():
    items = [{"role": "developer", "content": "be terse"},
             {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
             {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
             {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c1", "output": "one"},
             {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
             {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}]}]
    msgs = rf.input_messages(items)
    assert [m.role for m in msgs] == ["developer", "user", "assistant", "tool", "tool", "user"]
    assert msgs[1].content == "ab"
    assert msgs[2].content == "calling" and [c.id for c in msgs[2].tool_calls] == ["c1", "c2"]
    assert (msgs[3].tool_call_id, msgs[3].content, msgs[4].content) == ("c1", "one", "two")
    assert msgs[5].content[0].image_url == {"url": "data:image/png;base64,AA", "detail": "auto"}


def test_tools_choice_and_format_map_to_chat():
    r = req(tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
            tool_choice={"type": "function", "name": "f"},
            text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            instructions="sys", max_output_tokens=5)
    chat, conversation, dropped = rf.build_chat(r, [], 1000, 5)
    assert chat.tools == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                              "strict": True}}]
    assert chat.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert chat.response_format == {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert chat.messages[0] == Message(role="system", content="sys") and chat.max_completion_tokens == 5
    assert conversation == [Message(role="user", content="hi")] and dropped == 0


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "file_search"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"text": {"format": "json"}}, "text.format"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].image_url"),
    ({"prompt": {"id": "p"}}, "prompt"),
    ({"service_tier": "flex"}, "service_tier"),
])
def test_unsupported_is_refused_by_name(fields, param):
    with pytest.raises(InvalidRequest) as exc:
        rf.build_chat(req(**fields), [], None, None)
    assert exc.value.param == param


def test_truncation_drops_the_oldest_earlier_turns_whole_and_keeps_instructions_and_input():
    turn = lambda n: [Message(role="user", content=f"u{n} " + "x" * 400),  # noqa: E731
                      Message(role="assistant", tool_calls=[ToolCall(id=f"c{n}", function=FunctionCall(
                          name="f", arguments="{}"))]),
                      Message(role="tool", tool_call_id=f"c{n}", content="r"),
                      Message(role="assistant", content="a" * 400)]
    history = turn(1) + turn(2) + turn(3)
    r = req(instructions="keep", input="new " + "y" * 400)
    chat, conversation, dropped = rf.build_chat(r, history, 700, 100)
    assert chat.messages[0].content == "keep" and conversation[-1].content.startswith("new")
    assert dropped % 4 == 0 and dropped > 0  # whole turns: a tool call never loses its output
    assert conversation[0].role == "user" and chat.messages[1:] == conversation
    assert rf.measure_prompt(chat).tokens + 100 <= 700
    _, kept, none = rf.build_chat(req(input="new", truncation="disabled"), history, 700, 100)
    assert none == 0 and kept == history + [Message(role="user", content="new")]


def test_output_items_and_input_items_round_trip():
    answer = Message(role="assistant", content="hello",
                     tool_calls=[ToolCall(id="call_9", function=FunctionCall(name="f", arguments='{"a":1}'))])
    items = rf.output_items("resp_abc", answer)
    assert [(i["type"], i["id"]) for i in items] == [("message", "msg_abc_0"), ("function_call", "fc_abc_1")]
    assert items[1]["call_id"] == "call_9"
    back = rf.input_messages([{"role": "user", "content": "q"}] + [
        {k: v for k, v in i.items() if k != "id"} for i in items])
    assert back[1].content == "hello" and back[1].tool_calls[0].function.arguments == '{"a":1}'


def test_batch_lines_name_the_bad_line():
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}
    ok = batch_lines((json.dumps(good) + "\r\n" + json.dumps({**good, "custom_id": "b"})).encode(), 10, 1 << 20)
    assert [(x.number, x.custom_id) for x in ok] == [(1, "a"), (2, "b")]
    bad = json.dumps(good) + "\n" + json.dumps({**good, "custom_id": "c", "body": {"model": "m", "messages": []}})
    with pytest.raises(InvalidRequest) as exc:
        batch_lines(bad.encode(), 10, 1 << 20)
    assert exc.value.message.startswith("line 2:") and "body.messages" in exc.value.message
    with pytest.raises(InvalidRequest) as exc:
        batch_lines(b"\xff\xfe", 10, 1 << 20)
    assert exc.value.param == "file"


def test_multipart_form_is_read_byte_exact():
    content = b'{"a": 1}\r\n' + bytes(range(256))
    request = httpx.Request("POST", "http://x/", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    fields, file = parse_form(request.read(), request.headers["content-type"])
    assert fields == {"purpose": "batch"} and file == ("in.jsonl", content)
    with pytest.raises(InvalidRequest):
        parse_form(b"{}", "application/json")


def test_output_lines_follow_openai_batch_format():
    batch = BatchRecord(id="batch_x", tenant="t", team="a", endpoint="/v1/chat/completions", input_file_id="f",
                        created_at=0, expires_at=1, custom_ids=["a", "b", "c", "d"], outcomes="cf.f", submitted=3,
                        refused={"1": ErrorInfo(status=404, type="invalid_request_error", code="model_not_found",
                                                message="no")})
    done = JobRecord(id=job_id("batch_x", 0), tenant="t", team="a", model="m", status="completed", created_at=0,
                     result={"object": "chat.completion"})
    cancelled = msgspec.structs.replace(done, id=job_id("batch_x", 2), status="cancelled", result=None)
    assert output_line(batch, 0, done) == (True, {"id": "batch_req_x_0", "custom_id": "a", "error": None, "response": {
        "status_code": 200, "request_id": "job_x_0", "body": {"object": "chat.completion"}}})
    ok, refused = output_line(batch, 1, None)
    assert not ok and refused["response"]["status_code"] == 404 and refused["response"]["body"]["error"]["code"] == \
        "model_not_found"
    assert output_line(batch, 2, cancelled)[1]["error"]["code"] == "batch_cancelled"
    assert output_line(batch, 3, None)[1]["error"]["code"] == "batch_cancelled"  # never submitted
    assert merge_outcomes("c..f", "fcf.") == "ccff"


def test_a_batch_whose_input_file_is_gone_fails_only_its_unsubmitted_lines():
    batch = BatchRecord(id="batch_x", tenant="t", team="a", endpoint="/v1/chat/completions", input_file_id="f",
                        created_at=0, expires_at=1, custom_ids=["a", "b", "c"], outcomes="c..", submitted=1)
    after = _input_gone(batch, 5.0)
    assert (after.status, after.submitted, after.outcomes) == ("in_progress", 3, "cff")
    assert output_line(after, 2, None)[1]["response"]["body"]["error"]["code"] == "input_file_missing"
    assert _input_gone(after, 6.0) is None  # only a batch still being submitted


def test_a_background_response_follows_its_job():
    queued = StoredResponse(id="resp_h", tenant="t", team="a", created_at=1, status="queued", model="m",
                            messages=[Message(role="user", content="q")], job_id="job_h")
    job = JobRecord(id="job_h", tenant="t", team="a", model="m", status="queued", created_at=1)
    assert _from_job(queued, job) is None
    assert _from_job(queued, msgspec.structs.replace(job, status="in_progress")).status == "in_progress"
    done = _from_job(queued, msgspec.structs.replace(job, status="completed", completed_at=2, result={
        "model": "m-1", "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}]}))
    assert (done.status, done.incomplete_details, done.served_model) == ("incomplete", {"reason": "max_output_tokens"},
                                                                       "m-1")
    assert done.answer == Message(role="assistant", content="hi") and done.output[0]["id"] == "msg_h_0"
    assert done.usage["total_tokens"] == 7
    failed = _from_job(queued, msgspec.structs.replace(job, status="expired"))
    assert failed.status == "failed" and failed.error["code"] == "expired"
    assert _from_job(queued, msgspec.structs.replace(job, status="cancelled")).status == "cancelled"
