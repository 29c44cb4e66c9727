"""Stream framing: the SSE line grammar and AWS event-stream frames (built by the fake, parsed by botocore)."""

from __future__ import annotations

import json

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from services.workers.adapters.base import SSEEvent, SSEParser
from tests.fakes.providers import bedrock_event, bedrock_exception, event_frame


def test_sse_fields_comments_and_multiline_data():
    text = (": keep-alive comment\n"
            "event: content_block_delta\n"
            "data: {\"a\":\n"
            "data: 1}\n"
            "id: 7\n"
            "\n"
            "data:no-space\r\n"
            "\r\n"
            "data: [DONE]\n\n")
    assert SSEParser().feed_text(text) == [
        SSEEvent(data='{"a":\n1}', event="content_block_delta"),
        SSEEvent(data="no-space"),
        SSEEvent(data="[DONE]")]


def test_sse_event_name_does_not_leak_into_the_next_event():
    events = SSEParser().feed_text("event: ping\ndata: {}\n\ndata: x\n\n")
    assert events[1] == SSEEvent(data="x", event=None)


def test_sse_unterminated_last_event_is_dropped_like_a_live_stream():
    assert SSEParser().feed_text("data: complete\n\ndata: {\"partial\": tr") == [SSEEvent(data="complete")]


def test_event_stream_frames_round_trip_through_botocore():
    frame = bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}})
    buffer = EventStreamBuffer()
    buffer.add_data(frame)
    [message] = list(buffer)
    assert message.headers == {":event-type": "contentBlockDelta", ":content-type": "application/json",
                               ":message-type": "event"}
    assert json.loads(message.payload)["delta"] == {"text": "Hi"}
    assert message.prelude.total_length == len(frame)


def test_event_stream_frames_split_anywhere_parse_once_complete():
    frames = bedrock_event("messageStart", {"role": "assistant"}) + bedrock_exception("throttlingException", "slow")
    buffer = EventStreamBuffer()
    got = []
    for i in range(len(frames)):  # one byte at a time, as a slow network might deliver them
        buffer.add_data(frames[i:i + 1])
        got.extend(buffer)
    assert [m.headers[":message-type"] for m in got] == ["event", "exception"]
    assert got[1].headers[":exception-type"] == "throttlingException"


def test_event_stream_crc_is_checked():
    frame = bytearray(event_frame({":event-type": "x"}, b"{}"))
    frame[-6] ^= 0x01  # flip a payload bit
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(frame))
    with pytest.raises(ChecksumMismatch):
        list(buffer)
