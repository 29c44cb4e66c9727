"""Fake provider upstreams: one local HTTP server speaking every provider's real wire format.

``FakeProviders`` serves, on a random ``127.0.0.1`` port (uvicorn in a
background thread):

    /openai/v1/chat/completions, /openai/v1/embeddings           OpenAI (and OpenAI-compatible)
    /mistral/v1/chat/completions, /mistral/v1/embeddings         Mistral
    /azure/openai/deployments/{deployment}/chat/completions      Azure OpenAI (…/embeddings too; needs api-version)
    /anthropic/v1/messages                                       Anthropic Messages (SSE event types)
    /gemini/v1beta/models/{model}:generateContent                Gemini (:streamGenerateContent?alt=sse,
                                                                 :batchEmbedContents)
    /bedrock/model/{modelId}/converse, /converse-stream          Bedrock (SigV4 verified; event-stream frames)

Each checks its provider's credentials (``api_key``; Bedrock re-derives the
SigV4 signature with botocore from the raw request), records every request in
``requests``, answers with ``replies[provider]`` (a ``Reply``) in the
provider's own shapes, and streams the way the provider does: OpenAI-family
``data:`` chunks and ``[DONE]``, Anthropic's named events, Gemini's
``\\r\\n``-terminated SSE without an end marker, Bedrock's binary
event-stream frames with CRC32s.

Faults are queued per provider from the test (``fail("anthropic",
Fault(status=529))``, consumed one per request, or ``always`` for every
request until cleared), or sent by the caller in an ``x-fake-fault`` header
holding a ``Fault`` as JSON (handy when the system under test runs in another
process: put it in the catalog's provider ``headers``). Faults cover latency,
HTTP errors with the provider's error body and ``Retry-After``, hangs,
malformed bodies, streams cut cleanly or by a dropped connection, and the
provider's in-stream error event.

    with FakeProviders() as fake:
        fake.fail("openai", Fault(status=429, retry_after=3))
        ... OpenAIAdapter(spec(base_url=fake.base_url("openai")), client) ...
"""

from __future__ import annotations

import asyncio
import binascii
import json
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.wait import eventually_sync

PROVIDERS = ("openai", "mistral", "azure", "anthropic", "gemini", "bedrock")
# A request header carrying a Fault as JSON ({"status": 503}); catalog ``headers`` can set it per provider.
FAULT_HEADER = "x-fake-fault"


@dataclass(frozen=True)
class Fault:
    """What to do wrong with one request (every field optional; combine freely)."""

    status: int | None = None  # answer with this HTTP status and the provider's error body
    kind: str | None = None  # which canned error body: rate_limit, overloaded, context_length, auth, server, invalid
    message: str | None = None  # override the canned error message
    retry_after: float | None = None  # Retry-After header on an error answer
    latency_s: float = 0.0  # wait before answering
    chunk_delay_s: float = 0.0  # wait between stream chunks
    hang: bool = False  # never answer; the client has to give up
    malformed: bool = False  # 200 with a body (or stream) that is not the wire format
    cut_after: int | None = None  # streams: stop after this many chunks, without the end marker
    abort: bool = False  # with cut_after: drop the connection mid-body instead of ending it cleanly
    error_after: int | None = None  # streams: the provider's in-stream error event after this many chunks
    raw: bytes | None = None  # answer with exactly these bytes (fixtures replayed over HTTP)
    content_type: str = "application/json"  # of ``raw``


@dataclass(frozen=True)
class Reply:
    """The answer a fake gives: text and/or tool calls, a canonical finish reason, token counts."""

    text: str = "Hello! How can I help you today?"
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    finish: str = "stop"  # stop, length, tool_calls, content_filter (mapped to each provider's word)
    prompt_tokens: int = 12
    completion_tokens: int = 9
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass
class Recorded:
    """One request as the fake received it."""

    provider: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def words(text: str) -> list[str]:
    """Text split into stream-sized pieces that join back exactly."""
    parts = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts)] if text else []


def arg_pieces(args: dict[str, Any]) -> list[str]:
    """A tool call's JSON arguments in a few pieces, the way providers stream them."""
    text = json.dumps(args)
    step = max(1, len(text) // 3)
    return [text[i:i + step] for i in range(0, len(text), step)]


def _sse(data: Any, event: str | None = None, newline: str = "\n") -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}{newline}" if event else ""
    return f"{head}data: {payload}{newline}{newline}".encode()


# ---- AWS event-stream framing -----------------------------------------------------------------

def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total, header length, CRC32), string headers, payload, CRC32."""
    hbytes = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hbytes += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(hbytes) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hbytes))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + hbytes + payload
    return message + struct.pack(">I", binascii.crc32(message))


def bedrock_event(event_type: str, payload: dict[str, Any]) -> bytes:
    # Bedrock pads every event payload with a "p" field of random length against size side channels
    body = json.dumps({**payload, "p": "abcdefghijklmnopqrstuvwxyzABCDEF"[: 4 + len(event_type) % 20]})
    return event_frame({":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
                       body.encode())


def bedrock_exception(exception_type: str, message: str) -> bytes:
    return event_frame({":exception-type": exception_type, ":content-type": "application/json",
                        ":message-type": "exception"}, json.dumps({"message": message}).encode())


# ---- the wire formats -------------------------------------------------------------------------

_CANNED = {  # (status, message) per canned error kind, in the words providers use
    "rate_limit": (429, "Rate limit reached. Please try again in 2s."),
    "overloaded": (503, "The server is overloaded. Please try again later."),
    "server": (500, "The server had an error while processing your request."),
    "auth": (401, "Incorrect API key provided."),
    "context_length": (400, "This model's maximum context length is 128000 tokens. However, your messages "
                            "resulted in 130532 tokens. Please reduce the length of the messages."),
    "invalid": (400, "Invalid value for 'temperature': must be a number."),
}


class Wire:
    """One provider's shapes: response, stream chunks, error bodies. Subclasses per format."""

    provider = ""
    media_type = "text/event-stream"
    malformed_body = b'{"id": "x", "choices": [{"message": {"content": "cut'

    def response(self, r: Reply, model: str, body: Any) -> Any:
        raise NotImplementedError

    def stream(self, r: Reply, model: str, body: Any) -> list[bytes]:
        raise NotImplementedError

    def error(self, status: int, kind: str, message: str) -> tuple[Any, dict[str, str]]:
        raise NotImplementedError

    def stream_error(self) -> bytes:
        raise NotImplementedError

    def malformed_chunk(self) -> bytes:
        return _sse("{not json")

    def embeddings(self, body: Any, model: str) -> Any:
        raise NotImplementedError


class ChatCompletionsWire(Wire):
    """OpenAI's Chat Completions (also OpenAI-compatible servers)."""

    provider = "openai"
    finish = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}

    def _usage(self, r: Reply) -> dict[str, Any]:
        return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": r.cached_tokens, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": r.reasoning_tokens, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

    def _call_id(self, i: int) -> str:
        return f"call_{uuid.uuid5(uuid.NAMESPACE_OID, str(i)).hex[:24]}"

    def _extra_choice(self) -> dict[str, Any]:
        return {"logprobs": None}

    def _extra_response(self) -> dict[str, Any]:
        return {"service_tier": "default", "system_fingerprint": "fp_fake0001"}

    def response(self, r: Reply, model: str, body: Any) -> Any:
        message: dict[str, Any] = {"role": "assistant", "content": r.text or None, "refusal": None,
                                   "annotations": []}
        if r.tool_calls:
            message["tool_calls"] = [{"id": self._call_id(i), "type": "function",
                                      "function": {"name": n, "arguments": json.dumps(a)}}
                                     for i, (n, a) in enumerate(r.tool_calls)]
        return {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "message": message, **self._extra_choice(),
                                             "finish_reason": self.finish[r.finish]}],
                "usage": self._usage(r), **self._extra_response()}

    def _chunk(self, cid: str, model: str, delta: dict | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, **self._extra_choice(),
                                             "finish_reason": finish}]
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                     **self._extra_response(), "choices": choices, **extra})

    def _wants_usage(self, body: Any) -> bool:
        return bool((body.get("stream_options") or {}).get("include_usage"))

    def stream(self, r: Reply, model: str, body: Any) -> list[bytes]:
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        want_usage = self._wants_usage(body)
        out = [self._chunk(cid, model, {"role": "assistant", "content": "", "refusal": None},
                           **({"usage": None} if want_usage else {}))]
        for piece in words(r.text):
            out.append(self._chunk(cid, model, {"content": piece}, **({"usage": None} if want_usage else {})))
        for i, (name, args) in enumerate(r.tool_calls):
            out.append(self._chunk(cid, model, {"tool_calls": [{"index": i, "id": self._call_id(i), "type": "function",
                                                                "function": {"name": name, "arguments": ""}}]}))
            for piece in arg_pieces(args):
                out.append(self._chunk(cid, model, {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        out.append(self._chunk(cid, model, {}, self.finish[r.finish], **({"usage": None} if want_usage else {})))
        if want_usage:
            out.append(self._chunk(cid, model, None, usage=self._usage(r)))
        out.append(b"data: [DONE]\n\n")
        return out

    def error(self, status: int, kind: str, message: str) -> tuple[Any, dict[str, str]]:
        types = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}
        codes = {"rate_limit": "rate_limit_exceeded", "auth": "invalid_api_key",
                 "context_length": "context_length_exceeded"}
        return {"error": {"message": message, "type": types.get(status, "server_error"),
                          "param": "messages" if kind == "context_length" else None,
                          "code": codes.get(kind)}}, {}

    def stream_error(self) -> bytes:
        return _sse({"error": {"message": "The server had an error while processing your request.",
                               "type": "server_error", "param": None, "code": None}})

    def embeddings(self, body: Any, model: str) -> Any:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions") or 8
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [round(0.01 * (i + 1) * (k + 1), 4)
                                                                          for k in range(dims)]}
                         for i in range(len(inputs))],
                "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}}


class AzureWire(ChatCompletionsWire):
    """Azure OpenAI: Chat Completions plus content-filter annotations and its own error bodies."""

    provider = "azure"
    _filters = {"hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}

    def _extra_choice(self) -> dict[str, Any]:
        return {"logprobs": None, "content_filter_results": self._filters}

    def _extra_response(self) -> dict[str, Any]:
        return {"system_fingerprint": "fp_fakeazure"}

    def response(self, r: Reply, model: str, body: Any) -> Any:
        out = super().response(r, model, body)
        out["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": self._filters}]
        return out

    def stream(self, r: Reply, model: str, body: Any) -> list[bytes]:
        # Azure opens every stream with a chunk that has no choices, only the prompt's filter results.
        first = _sse({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                      "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": self._filters}]})
        return [first, *super().stream(r, model, body)]

    def error(self, status: int, kind: str, message: str) -> tuple[Any, dict[str, str]]:
        if kind == "context_length":
            return {"error": {"message": message, "type": "invalid_request_error", "param": "messages",
                              "code": "context_length_exceeded"}}, {}
        code = {"rate_limit": "429", "auth": "401", "deployment": "DeploymentNotFound"}.get(kind, "InternalServerError")
        return {"error": {"code": code, "message": message}}, {}


class MistralWire(ChatCompletionsWire):
    """Mistral: Chat Completions shapes, usage always on the last chunk, nine-character tool ids."""

    provider = "mistral"
    finish = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "stop"}

    def _usage(self, r: Reply) -> dict[str, Any]:
        return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens}

    def _call_id(self, i: int) -> str:
        return f"D681Pev{i:02d}"

    def _extra_choice(self) -> dict[str, Any]:
        return {}

    def _extra_response(self) -> dict[str, Any]:
        return {}

    def response(self, r: Reply, model: str, body: Any) -> Any:
        out = super().response(r, model, body)
        msg = out["choices"][0]["message"]
        for key in ("refusal", "annotations"):
            msg.pop(key, None)
        msg["prefix"] = False
        for i, call in enumerate(msg.get("tool_calls") or ()):
            call["index"] = i
        return out

    def stream(self, r: Reply, model: str, body: Any) -> list[bytes]:
        cid = uuid.uuid4().hex
        out = [self._chunk(cid, model, {"role": "assistant", "content": ""})]
        for piece in words(r.text):
            out.append(self._chunk(cid, model, {"content": piece}))
        if r.tool_calls:  # Mistral sends whole tool calls in one chunk
            out.append(self._chunk(cid, model, {"tool_calls": [
                {"id": self._call_id(i), "function": {"name": n, "arguments": json.dumps(a)}, "index": i}
                for i, (n, a) in enumerate(r.tool_calls)]}))
        out.append(self._chunk(cid, model, {"content": ""}, self.finish[r.finish], usage=self._usage(r)))
        out.append(b"data: [DONE]\n\n")
        return out

    def embeddings(self, body: Any, model: str) -> Any:
        if "dimensions" in body or "encoding_format" in body:
            raise ValueError("Mistral names these output_dimension / output_dtype")
        out = super().embeddings({**body, "dimensions": body.get("output_dimension")}, model)
        out["id"] = uuid.uuid4().hex
        out["usage"]["completion_tokens"] = 0
        return out

    def error(self, status: int, kind: str, message: str) -> tuple[Any, dict[str, str]]:
        if kind == "auth":
            return {"message": "Unauthorized", "request_id": uuid.uuid4().hex}, {}
        if kind == "rate_limit":
            return {"message": "Requests rate limit exceeded"}, {}
        if kind == "context_length":
            return {"object": "error", "message": "Prompt contains 40101 tokens and 0 draft tokens, too large for "
                                                  "model with 32768 maximum context length",
                    "type": "invalid_request_message_error", "param": None, "code": "3051"}, {}
        if status == 422 or kind == "invalid":
            return {"object": "error", "message": {"detail": [{"type": "missing", "loc": ["body", "messages"],
                                                               "msg": "Field required", "input": {}}]},
                    "type": "invalid_request_error", "param": None, "code": None}, {}
        return {"object": "error", "message": message, "type": "internal_server_error", "param": None,
                "code": "1000"}, {}


class AnthropicWire(Wire):
    """Anthropic Messages: content blocks, named SSE events, error envelopes."""

    provider = "anthropic"
    finish = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
    malformed_body = b'{"id": "msg_x", "type": "message", "content": [{"type": "text", "text": "cut'

    def _usage(self, r: Reply) -> dict[str, Any]:
        return {"input_tokens": r.prompt_tokens - r.cached_tokens - r.cache_creation_tokens,
                "cache_creation_input_tokens": r.cache_creation_tokens,
                "cache_read_input_tokens": r.cached_tokens, "output_tokens": r.completion_tokens,
                "service_tier": "standard"}

    def _blocks(self, r: Reply) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": r.text}] if r.text else []
        blocks += [{"type": "tool_use", "id": f"toolu_01{i:02d}" + "A" * 20, "name": n, "input": a}
                   for i, (n, a) in enumerate(r.tool_calls)]
        return blocks

    def _forced(self, r: Reply, body: Any) -> Reply:
        # A forced tool (how JSON mode is carried) is answered with a call of that tool.
        choice = body.get("tool_choice") or {}
        if choice.get("type") == "tool":
            return Reply(text="", tool_calls=((choice["name"], {"answer": 42}),), finish="tool_calls",
                         prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens)
        return r

    def response(self, r: Reply, model: str, body: Any) -> Any:
        r = self._forced(r, body)
        return {"id": "msg_01" + uuid.uuid4().hex[:22], "type": "message", "role": "assistant", "model": model,
                "content": self._blocks(r), "stop_reason": self.finish[r.finish], "stop_sequence": None,
                "usage": self._usage(r)}

    def stream(self, r: Reply, model: str, body: Any) -> list[bytes]:
        r = self._forced(r, body)
        start_usage = {**self._usage(r), "output_tokens": 1}
        out = [_sse({"type": "message_start", "message": {
            "id": "msg_01" + uuid.uuid4().hex[:22], "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}}, "message_start")]
        index = 0
        if r.text:
            out.append(_sse({"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}, "content_block_start"))
            out.append(_sse({"type": "ping"}, "ping"))
            for piece in words(r.text):
                out.append(_sse({"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": piece}}, "content_block_delta"))
            out.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
            index = 1
        for i, (name, args) in enumerate(r.tool_calls):
            out.append(_sse({"type": "content_block_start", "index": index,
                             "content_block": {"type": "tool_use", "id": f"toolu_01{i:02d}" + "A" * 20,
                                               "name": name, "input": {}}}, "content_block_start"))
            out.append(_sse({"type": "content_block_delta", "index": index,
                             "delta": {"type": "input_json_delta", "partial_json": ""}}, "content_block_delta"))
            for piece in arg_pieces(args):
                out.append(_sse({"type": "content_block_delta", "index": index,
                                 "delta": {"type": "input_json_delta", "partial_json": piece}},
                                "content_block_delta"))
            out.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
            index += 1
        out.append(_sse({"type": "message_delta", "delta": {"stop_reason": self.finish[r.finish],
                                                            "stop_sequence": None},
                         "usage": {"output_tokens": r.completion_tokens}}, "message_delta"))
        out.append(_sse({"type": "message_stop"}, "message_stop"))
        return out

    def error(self, status: int, kind: str, message: str) -> tuple[Any, dict[str, str]]:
        types = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                 529: "overloaded_error"}
        if kind == "context_length":
            message = "prompt is too long: 208310 tokens > 200000 maximum"
        return {"type": "error", "error": {"type": types.get(status, "api_error"), "message": message},
                "request_id": "req_011" + uuid.uuid4().hex[:21]}, {"request-id": "req_011fake"}

    def stream_error(self) -> bytes:
        return _sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")

    def malformed_chunk(self) -> bytes:
        return _sse("{not json", "content_block_delta")


class GeminiWire(Wire):
    """Gemini generateContent: candidates/parts, usageMetadata, google.rpc error envelopes."""

    provider = "gemini"
    finish = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}
    malformed_body = b'{"candidates": [{"content": {"parts": [{"text": "cut'

    def _usage(self, r: Reply, final: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"promptTokenCount": r.prompt_tokens,
                               "promptTokensDetails": [{"modality": "TEXT", "tokenCount": r.prompt_tokens}]}
        if final:
            visible = r.completion_tokens - r.reasoning_tokens
            out.update(candidatesTokenCount=visible, totalTokenCount=r.prompt_tokens + r.completion_tokens)
            if r.reasoning_tokens:
                out["thoughtsTokenCount"] = r.reasoning_tokens
            if r.cached_tokens:
                out["cachedContentTokenCount"] = r.cached_tokens
        else:
            out["totalTokenCount"] = r.prompt_tokens
        return out

    def response(self, r: Reply, model: str, body: Any) -> Any:
        parts: list[dict[str, Any]] = [{"text": r.text}] if r.text else []
        parts += [{"functionCall": {"name": n, "args": a}} for n, a in r.tool_calls]
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"},
                                     "finishReason": self.finish[r.finish], "index": 0}
        if r.finish == "content_filter":
            candidate["safetyRatings"] = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH",
                                           "blocked": True}]
        return {"candidates": [candidate], "usageMetadata": self._usage(r), "modelVersion": model,
                "responseId": uuid.uuid4().hex[:22]}

    def stream(self, r: Reply, model: str, body: Any) -> list[bytes]:
        rid = uuid.uuid4().hex[:22]
        pieces = words(r.text)
        out = []
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1 and not r.tool_calls
            cand: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
            if last:
                cand["finishReason"] = self.finish[r.finish]
            out.append(_sse({"candidates": [cand], "usageMetadata": self._usage(r, last), "modelVersion": model,
                             "responseId": rid}, newline="\r\n"))
        if r.tool_calls:
            cand = {"content": {"parts": [{"functionCall": {"name": n, "args": a}} for n, a in r.tool_calls],
                                "role": "model"}, "finishReason": self.finish[r.finish], "index": 0}
            out.append(_sse({"candidates": [cand], "usageMetadata": self._usage(r), "modelVersion": model,
                             "responseId": rid}, newline="\r\n"))
        return out

    def error(self, status: int, kind: str, message: str) -> tuple[Any, dict[str, str]]:
        statuses = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
        err: dict[str, Any] = {"code": status, "message": message, "status": statuses.get(status, "UNKNOWN")}
        if kind == "auth":
            err.update(code=400, status="INVALID_ARGUMENT", message="API key not valid. Please pass a valid API key.",
                       details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                 "domain": "googleapis.com",
                                 "metadata": {"service": "generativelanguage.googleapis.com"}}])
        elif kind == "context_length":
            err["message"] = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
        elif status == 429:
            err["message"] = "You exceeded your current quota, please check your plan and billing details."
            err["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]
        elif status == 503:
            err["message"] = "The model is overloaded. Please try again later."
        return {"error": err}, {}

    def stream_error(self) -> bytes:
        return _sse({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}},
                    newline="\r\n")

    def embeddings(self, body: Any, model: str) -> Any:
        reqs = body["requests"]
        return {"embeddings": [{"values": [round(0.02 * (i + 1) * (k + 1), 4)
                                           for k in range(r.get("outputDimensionality") or 8)]}
                               for i, r in enumerate(reqs)]}


class BedrockWire(Wire):
    """Bedrock Converse: output.message.content blocks; ConverseStream as event-stream frames."""

    provider = "bedrock"
    media_type = "application/vnd.amazon.eventstream"
    finish = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
              "content_filter": "content_filtered"}
    malformed_body = b'{"output": {"message": {"content": [{"text": "cut'

    def _usage(self, r: Reply) -> dict[str, Any]:
        fresh = r.prompt_tokens - r.cached_tokens - r.cache_creation_tokens
        out = {"inputTokens": fresh, "outputTokens": r.completion_tokens,
               "totalTokens": r.prompt_tokens + r.completion_tokens}
        if r.cached_tokens or r.cache_creation_tokens:
            out.update(cacheReadInputTokens=r.cached_tokens, cacheWriteInputTokens=r.cache_creation_tokens)
        return out

    def _forced(self, r: Reply, body: Any) -> Reply:
        choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
        if "tool" in choice:
            return Reply(text="", tool_calls=((choice["tool"]["name"], {"answer": 42}),), finish="tool_calls",
                         prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens)
        return r

    def response(self, r: Reply, model: str, body: Any) -> Any:
        r = self._forced(r, body)
        content: list[dict[str, Any]] = [{"text": r.text}] if r.text else []
        content += [{"toolUse": {"toolUseId": f"tooluse_{i:02d}" + "B" * 20, "name": n, "input": a}}
                    for i, (n, a) in enumerate(r.tool_calls)]
        return {"output": {"message": {"role": "assistant", "content": content}},
                "stopReason": self.finish[r.finish], "usage": self._usage(r), "metrics": {"latencyMs": 321}}

    def stream(self, r: Reply, model: str, body: Any) -> list[bytes]:
        r = self._forced(r, body)
        out = [bedrock_event("messageStart", {"role": "assistant"})]
        index = 0
        if r.text:
            for piece in words(r.text):
                out.append(bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}}))
            out.append(bedrock_event("contentBlockStop", {"contentBlockIndex": 0}))
            index = 1
        for i, (name, args) in enumerate(r.tool_calls):
            out.append(bedrock_event("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": f"tooluse_{i:02d}" + "B" * 20, "name": name}}}))
            for piece in arg_pieces(args):
                out.append(bedrock_event("contentBlockDelta", {"contentBlockIndex": index,
                                                               "delta": {"toolUse": {"input": piece}}}))
            out.append(bedrock_event("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        out.append(bedrock_event("messageStop", {"stopReason": self.finish[r.finish]}))
        out.append(bedrock_event("metadata", {"usage": self._usage(r), "metrics": {"latencyMs": 321}}))
        return out

    def error(self, status: int, kind: str, message: str) -> tuple[Any, dict[str, str]]:
        types = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                 408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
                 500: "InternalServerException", 503: "ServiceUnavailableException"}
        error_type = types.get(status, "InternalServerException")
        if kind == "context_length":
            message = "Input is too long for requested model."
        elif kind == "rate_limit" or status == 429:
            message = "Too many requests, please wait before trying again."
        elif kind == "auth" and "signature" in message:
            error_type = "InvalidSignatureException"
            message = ("The request signature we calculated does not match the signature you provided. "
                       "Check your AWS Secret Access Key and signing method. Consult the service documentation "
                       "for details.")
        elif kind == "auth":
            error_type = "UnrecognizedClientException"
            message = "The security token included in the request is invalid."
        return {"message": message}, {"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon"
                                                          f".bedrock/", "x-amzn-RequestId": str(uuid.uuid4())}

    def stream_error(self) -> bytes:
        return bedrock_exception("throttlingException", "Too many requests, please wait before trying again.")

    def malformed_chunk(self) -> bytes:
        frame = bytearray(bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}))
        frame[-1] ^= 0xFF  # a wrong message CRC
        return bytes(frame)


# ---- SigV4 check ------------------------------------------------------------------------------

def sigv4_problem(method: str, url: str, headers: dict[str, str], body: bytes, access_key: str, secret: str,
                  region: str, service: str = "bedrock") -> str | None:
    """Why a request's SigV4 signature is wrong (None when it verifies), recomputed with botocore."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "missing SigV4 Authorization header"
    fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    akid, date, sig_region, sig_service, _ = fields["Credential"].split("/")
    if akid != access_key:
        return f"unknown access key {akid}"
    if (sig_region, sig_service) != (region, service):
        return f"signed for {sig_region}/{sig_service}, expected {region}/{service}"
    signed = fields["SignedHeaders"].split(";")
    aws = AWSRequest(method=method, url=url, data=body, headers={h: headers[h] for h in signed if h in headers})
    aws.context["timestamp"] = headers.get("x-amz-date", "")
    signer = SigV4Auth(Credentials(access_key, secret, headers.get("x-amz-security-token")), service, region)
    expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    return None if expected == fields["Signature"] else "signature mismatch"


# ---- the server -------------------------------------------------------------------------------

class LoopbackServer:
    """Any ASGI app on a random ``127.0.0.1`` port, served by uvicorn in a background thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LoopbackServer":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="critical", lifespan="off",
                                loop="asyncio", http="h11", timeout_graceful_shutdown=1, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="loopback-server", daemon=True)
        self._thread.start()

        def started() -> bool:
            if not self._thread.is_alive():
                raise RuntimeError("loopback server did not start")
            return self._server.started

        eventually_sync(started, timeout=10, message="loopback server did not start")
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()



class FakeProviders:
    """Every provider's fake on one loopback server; faults and replies are set per provider from tests."""

    def __init__(self, *, api_key: str = "test-key", aws_access_key: str = "AKIDFAKE00000000",
                 aws_secret: str = "fake-secret", aws_region: str = "us-east-1") -> None:
        self.api_key = api_key
        self.aws_access_key = aws_access_key
        self.aws_secret = aws_secret
        self.aws_region = aws_region
        self.requests: list[Recorded] = []
        self.replies: dict[str, Reply] = {}
        self._queued: dict[str, list[Fault]] = {}
        self._always: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: LoopbackServer | None = None
        self.port = 0
        self.app = Starlette(routes=[
            Route("/openai/v1/chat/completions", self._openai, methods=["POST"]),
            Route("/openai/v1/embeddings", self._openai_embed, methods=["POST"]),
            Route("/mistral/v1/chat/completions", self._mistral, methods=["POST"]),
            Route("/mistral/v1/embeddings", self._mistral_embed, methods=["POST"]),
            Route("/azure/openai/deployments/{deployment}/chat/completions", self._azure, methods=["POST"]),
            Route("/azure/openai/deployments/{deployment}/embeddings", self._azure_embed, methods=["POST"]),
            Route("/anthropic/v1/messages", self._anthropic, methods=["POST"]),
            Route("/gemini/v1beta/models/{rest:path}", self._gemini, methods=["POST"]),
            Route("/bedrock/model/{rest:path}", self._bedrock, methods=["POST"]),
        ])

    # -- control from tests --
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def base_url(self, provider: str) -> str:
        """The ``base_url`` an adapter of ``provider`` should be configured with."""
        return {"openai": f"{self.url}/openai/v1", "mistral": f"{self.url}/mistral/v1",
                "azure": f"{self.url}/azure", "anthropic": f"{self.url}/anthropic",
                "gemini": f"{self.url}/gemini/v1beta", "bedrock": f"{self.url}/bedrock"}[provider]

    def fail(self, provider: str, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` requests to ``provider``."""
        with self._lock:
            self._queued.setdefault(provider, []).extend([fault] * times)

    def always(self, provider: str, fault: Fault | None) -> None:
        """Apply ``fault`` to every request to ``provider`` until cleared with None."""
        with self._lock:
            if fault is None:
                self._always.pop(provider, None)
            else:
                self._always[provider] = fault

    def reply(self, provider: str, reply: Reply) -> None:
        with self._lock:
            self.replies[provider] = reply

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.replies.clear()
            self._queued.clear()
            self._always.clear()

    def requests_to(self, provider: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.provider == provider]

    def last(self, provider: str) -> Recorded:
        return self.requests_to(provider)[-1]

    # -- lifecycle --
    def start(self) -> "FakeProviders":
        self._stopping.clear()
        self._server = LoopbackServer(self.app).start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging requests so the server can shut down
        if self._server is not None:
            self._server.stop()
        self._server = None

    def __enter__(self) -> "FakeProviders":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling --
    def _take_fault(self, provider: str, headers: dict[str, str]) -> Fault:
        header = headers.get(FAULT_HEADER)
        if header:  # a fault chosen by the caller itself wins over queued ones
            return Fault(**json.loads(header))
        with self._lock:
            queue = self._queued.get(provider)
            if queue:
                return queue.pop(0)
            return self._always.get(provider, Fault())

    async def _record(self, provider: str, request: Request) -> Recorded:
        body = await request.body()
        rec = Recorded(provider=provider, method=request.method, path=request.url.path,
                       query=dict(request.query_params), headers={k.lower(): v for k, v in request.headers.items()},
                       body=body)
        with self._lock:
            self.requests.append(rec)
        return rec

    def _error(self, wire: Wire, status: int, kind: str | None, message: str | None,
               retry_after: float | None = None) -> Response:
        if kind is None:
            kind = {400: "invalid", 401: "auth", 403: "auth", 429: "rate_limit", 503: "overloaded",
                    529: "overloaded"}.get(status, "server")
        body, headers = wire.error(status, kind, message or _CANNED.get(kind, (status, "error"))[1])
        if retry_after is not None:
            headers = {**headers, "retry-after": f"{retry_after:g}"}
        return JSONResponse(body, status_code=status, headers=headers)

    async def _hang(self, request: Request) -> Response:
        # The fault itself: an upstream that never answers, until the client goes away or the server stops.
        while not self._stopping.is_set() and not await request.is_disconnected():
            await asyncio.sleep(0.05)
        return Response(status_code=499)

    async def _serve(self, provider: str, request: Request, rec: Recorded, wire: Wire, *, stream: bool, model: str,
                     auth_problem: str | None, embed: bool = False) -> Response:
        fault = self._take_fault(provider, rec.headers)
        if fault.latency_s:
            await asyncio.sleep(fault.latency_s)
        if fault.hang:
            return await self._hang(request)
        if auth_problem is not None:
            status = {"gemini": 400, "bedrock": 403}.get(provider, 401)
            return self._error(wire, status, "auth", auth_problem if provider == "bedrock" else None)
        if fault.status is not None:
            return self._error(wire, fault.status, fault.kind, fault.message, fault.retry_after)
        if fault.raw is not None:
            return Response(fault.raw, media_type=fault.content_type)
        body = rec.json or {}
        reply = self.replies.get(provider, Reply())
        if embed:
            return JSONResponse(wire.embeddings(body, model))
        if not stream:
            if fault.malformed:
                return Response(wire.malformed_body, media_type="application/json")
            return JSONResponse(wire.response(reply, model, body))
        chunks = wire.stream(reply, model, body)
        if fault.malformed:
            chunks = chunks[:1] + [wire.malformed_chunk()] + chunks[1:]
        return StreamingResponse(self._emit(chunks, fault, wire), media_type=wire.media_type)

    async def _emit(self, chunks: list[bytes], fault: Fault, wire: Wire) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(chunks):
            if fault.error_after is not None and i == fault.error_after:
                yield wire.stream_error()
                return
            if fault.cut_after is not None and i >= fault.cut_after:
                if fault.abort:
                    raise ConnectionAbortedError("fake provider drops the connection mid-stream")
                return
            if fault.chunk_delay_s and i:
                await asyncio.sleep(fault.chunk_delay_s)
            yield chunk

    def _bearer(self, rec: Recorded) -> str | None:
        return None if rec.headers.get("authorization") == f"Bearer {self.api_key}" else "bad bearer key"

    async def _openai(self, request: Request) -> Response:
        rec = await self._record("openai", request)
        body = rec.json or {}
        return await self._serve("openai", request, rec, ChatCompletionsWire(), stream=bool(body.get("stream")),
                                 model=body.get("model", ""), auth_problem=self._bearer(rec))

    async def _openai_embed(self, request: Request) -> Response:
        rec = await self._record("openai", request)
        return await self._serve("openai", request, rec, ChatCompletionsWire(), stream=False,
                                 model=(rec.json or {}).get("model", ""), auth_problem=self._bearer(rec), embed=True)

    async def _mistral(self, request: Request) -> Response:
        rec = await self._record("mistral", request)
        body = rec.json or {}
        return await self._serve("mistral", request, rec, MistralWire(), stream=bool(body.get("stream")),
                                 model=body.get("model", ""), auth_problem=self._bearer(rec))

    async def _mistral_embed(self, request: Request) -> Response:
        rec = await self._record("mistral", request)
        return await self._serve("mistral", request, rec, MistralWire(), stream=False,
                                 model=(rec.json or {}).get("model", ""), auth_problem=self._bearer(rec), embed=True)

    def _azure_auth(self, rec: Recorded) -> str | None:
        ok = rec.headers.get("api-key") == self.api_key and "api-version" in rec.query
        return None if ok else "bad api-key or missing api-version"

    async def _azure(self, request: Request) -> Response:
        rec = await self._record("azure", request)
        body = rec.json or {}
        deployment = request.path_params["deployment"]
        if deployment == "missing":
            return self._error(AzureWire(), 404, "deployment",
                               "The API deployment for this resource does not exist. If you created the deployment "
                               "within the last 5 minutes, please wait a moment and try again.")
        return await self._serve("azure", request, rec, AzureWire(), stream=bool(body.get("stream")),
                                 model=deployment, auth_problem=self._azure_auth(rec))

    async def _azure_embed(self, request: Request) -> Response:
        rec = await self._record("azure", request)
        return await self._serve("azure", request, rec, AzureWire(), stream=False,
                                 model=request.path_params["deployment"], auth_problem=self._azure_auth(rec),
                                 embed=True)

    async def _anthropic(self, request: Request) -> Response:
        rec = await self._record("anthropic", request)
        body = rec.json or {}
        if "anthropic-version" not in rec.headers:
            return self._error(AnthropicWire(), 400, "invalid", "anthropic-version: header is required")
        if "max_tokens" not in body:
            return self._error(AnthropicWire(), 400, "invalid", "max_tokens: Field required")
        auth = None if rec.headers.get("x-api-key") == self.api_key else "bad key"
        return await self._serve("anthropic", request, rec, AnthropicWire(), stream=bool(body.get("stream")),
                                 model=body.get("model", ""), auth_problem=auth)

    async def _gemini(self, request: Request) -> Response:
        rec = await self._record("gemini", request)
        model, _, method = request.path_params["rest"].rpartition(":")
        auth = None if rec.headers.get("x-goog-api-key") == self.api_key else "bad key"
        if method == "streamGenerateContent" and rec.query.get("alt") != "sse":
            return self._error(GeminiWire(), 400, "invalid", "this fake streams only with alt=sse")
        if method not in ("generateContent", "streamGenerateContent", "batchEmbedContents"):
            return self._error(GeminiWire(), 404, "invalid", f"method {method} not found")
        return await self._serve("gemini", request, rec, GeminiWire(), stream=method == "streamGenerateContent",
                                 model=model, auth_problem=auth, embed=method == "batchEmbedContents")

    async def _bedrock(self, request: Request) -> Response:
        rec = await self._record("bedrock", request)
        raw_path = request.scope.get("raw_path", b"").decode()
        model, _, action = request.path_params["rest"].rpartition("/")
        url = f"http://{rec.headers.get('host')}{raw_path}"
        problem = sigv4_problem("POST", url, rec.headers, rec.body, self.aws_access_key, self.aws_secret,
                                self.aws_region)
        if action not in ("converse", "converse-stream"):
            return self._error(BedrockWire(), 404, "invalid", f"unknown operation {action}")
        return await self._serve("bedrock", request, rec, BedrockWire(), stream=action == "converse-stream",
                                 model=model, auth_problem=problem)
