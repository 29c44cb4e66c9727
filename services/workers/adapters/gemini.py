"""Google Gemini API: ``models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``.

The key travels in the ``x-goog-api-key`` header (never in the URL, where it
would end up in access logs). Translations: roles ``user``/``model``; system
and developer messages → ``systemInstruction``; sampling and limits →
``generationConfig`` (``n`` → ``candidateCount``, ``seed``, penalties, ``stop``
→ ``stopSequences``); JSON mode → ``responseMimeType: application/json`` and a
JSON schema → ``responseJsonSchema``; tools → ``functionDeclarations`` with
``parametersJsonSchema``; ``tool_choice`` → ``functionCallingConfig`` modes
``AUTO``/``NONE``/``ANY`` (+ ``allowedFunctionNames``); tool results →
``functionResponse`` parts, matched to their call by the name recorded on the
earlier assistant turn; images, audio and files as ``inlineData`` (data URLs)
or ``fileData`` (URLs).

Refused: ``logit_bias``, ``logprobs`` (Gemini has them, but the canonical
response cannot carry them), ``parallel_tool_calls: false``, ``name`` on non-tool messages, the
legacy ``function`` role, token-id embedding inputs.

Gemini does not send call ids, so each function call gets one here. Safety
blocks (prompt or candidate) become ``content_filter``. Thought tokens are
billed as output, so ``completion_tokens`` = candidates + thoughts and
``reasoning_tokens`` = thoughts. A stream has no end marker other than a
``finishReason``: one that ends without it was cut.
"""

from __future__ import annotations

import mimetypes
import re
import uuid
from typing import Any, Mapping
from urllib.parse import quote

import msgspec

from services.workers.adapters.base import (
    add_turn,
    MAX_RETRY_AFTER_S,
    HttpAdapter,
    SSEEvent,
    UpstreamRequest,
    classify,
    decode_arguments,
    embedding_inputs,
    parse_data_url,
    refuse,
    refuse_function_role,
    refuse_logprobs,
    refuse_unsupported,
    scrub,
    stream_cut,
    stream_error,
)
from shared.canonical import (
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    ContentPart,
    Delta,
    EmbeddingRequest,
    EmbeddingResponse,
    FunctionCall,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
    estimate_tokens,
)
from shared.errors import UpstreamAuthFailed, UpstreamError, UpstreamRateLimited
from shared.events import Target

FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                      "IMAGE_PROHIBITED_CONTENT"})
_UNSUPPORTED = {"logit_bias": "token biasing"}
_AUDIO = {"wav": "audio/wav", "mp3": "audio/mp3", "flac": "audio/flac", "aac": "audio/aac", "ogg": "audio/ogg",
          "aiff": "audio/aiff"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s\Z")
_encoder = msgspec.json.Encoder()


def finish_reason(reason: str | None, has_calls: bool) -> str | None:
    if reason is None:
        return None
    if reason in FILTERED:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if has_calls else "stop"


# ---- request --------------------------------------------------------------------------------

def _part(provider: str, part: ContentPart, param: str) -> dict[str, Any]:
    if part.type == "text":
        return {"text": part.text or ""}
    if part.type == "image_url":
        url = (part.image_url or {}).get("url") or ""
        inline = parse_data_url(url)
        if inline:
            return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
        if url.startswith(("https://", "http://", "gs://")):
            mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
            return {"fileData": {"mimeType": mime, "fileUri": url}}
        raise refuse(provider, param, "image URLs other than http(s), gs:// and base64 data URLs")
    if part.type == "input_audio" and part.input_audio:
        fmt = str(part.input_audio.get("format", "wav"))
        return {"inlineData": {"mimeType": _AUDIO.get(fmt, f"audio/{fmt}"), "data": part.input_audio.get("data")}}
    if part.type == "file" and part.file and (inline := parse_data_url(part.file.get("file_data") or "")):
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    raise refuse(provider, param, f"content parts of type {part.type!r}"
                 + (" other than inline data" if part.type == "file" else ""))


def _parts(provider: str, content: str | list[ContentPart] | None, i: int) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    return [_part(provider, p, f"messages[{i}].content[{j}]") for j, p in enumerate(content)]


def _tool_response(content: str | list[ContentPart] | None) -> dict[str, Any]:
    text = content if isinstance(content, str) or content is None else "".join(p.text or "" for p in content)
    try:
        value = msgspec.json.decode(text or "null")
    except msgspec.DecodeError:
        value = text
    # functionResponse.response must be an object; anything else is wrapped
    return value if isinstance(value, dict) else {"result": value}


def _tool_config(provider: str, request: ChatRequest) -> dict[str, Any] | None:
    tc = request.tool_choice
    if tc is None:
        return None
    if tc in ("auto", "none", "required"):
        return {"functionCallingConfig": {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[tc]}}
    if isinstance(tc, dict) and (tc.get("function") or {}).get("name"):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [tc["function"]["name"]]}}
    raise refuse(provider, "tool_choice", f"the value {tc!r}")


def generate_body(provider: str, request: ChatRequest) -> dict[str, Any]:
    """The canonical request as a Gemini ``GenerateContentRequest``."""
    refuse_function_role(provider, request)
    refuse_unsupported(provider, request, _UNSUPPORTED)
    refuse_logprobs(provider, request)
    if request.parallel_tool_calls is False and request.tools:
        raise refuse(provider, "parallel_tool_calls", "turning parallel function calls off")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        add_turn(contents, role, parts, "parts")

    for i, m in enumerate(request.messages):
        if m.name and m.role != "tool":
            raise refuse(provider, f"messages[{i}].name", "participant names")
        if m.role in ("system", "developer"):
            system.extend(_parts(provider, m.content, i))
        elif m.role == "user":
            add("user", _parts(provider, m.content, i))
        elif m.role == "assistant":
            parts = _parts(provider, m.content if m.content is not None else m.refusal, i)
            for k, call in enumerate(m.tool_calls or ()):
                fn = call.function or FunctionCall()
                if call.id and fn.name:
                    call_names[call.id] = fn.name
                parts.append({"functionCall": {"name": fn.name or "", "args": decode_arguments(
                    provider, fn.arguments, f"messages[{i}].tool_calls[{k}].function.arguments")}})
            add("model", parts)
        elif m.role == "tool":
            name = call_names.get(m.tool_call_id or "") or m.name
            if not name:
                raise refuse(provider, f"messages[{i}].tool_call_id",
                             "tool results that do not answer a tool call earlier in the conversation")
            add("user", [{"functionResponse": {"name": name, "response": _tool_response(m.content)}}])
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    for key, value in (("temperature", request.temperature), ("topP", request.top_p),
                       ("maxOutputTokens", request.output_cap()), ("candidateCount", request.n),
                       ("seed", request.seed), ("presencePenalty", request.presence_penalty),
                       ("frequencyPenalty", request.frequency_penalty)):
        if value is not None:
            config[key] = value
    if request.stop:
        config["stopSequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    rf = request.response_format or {}
    if rf.get("type") == "json_object":
        config["responseMimeType"] = "application/json"
    elif rf.get("type") == "json_schema":
        config["responseMimeType"] = "application/json"
        schema = (rf.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    elif rf.get("type") not in (None, "text"):
        raise refuse(provider, "response_format", f"unknown type {rf.get('type')!r}")
    if config:
        body["generationConfig"] = config
    if request.tools:
        decls = []
        for k, tool in enumerate(request.tools):
            fn = tool.get("function") or {}
            if tool.get("type", "function") != "function" or not fn.get("name"):
                raise refuse(provider, f"tools[{k}]", f"tools of type {tool.get('type')!r}; only functions")
            decl = {"name": fn["name"]}
            if fn.get("description"):
                decl["description"] = fn["description"]
            if fn.get("parameters"):
                decl["parametersJsonSchema"] = fn["parameters"]
            decls.append(decl)
        body["tools"] = [{"functionDeclarations": decls}]
        tool_config = _tool_config(provider, request)
        if tool_config:
            body["toolConfig"] = tool_config
    return body


# ---- response -------------------------------------------------------------------------------

class _FunctionCall(msgspec.Struct):
    name: str
    args: dict[str, Any] | None = None
    id: str | None = None


class _Part(msgspec.Struct):
    text: str | None = None
    thought: bool | None = None
    functionCall: _FunctionCall | None = None  # noqa: N815 (wire name)


class _Content(msgspec.Struct):
    parts: list[_Part] = []
    role: str | None = None


class _Candidate(msgspec.Struct):
    content: _Content | None = None
    finishReason: str | None = None  # noqa: N815
    index: int = 0


class _Feedback(msgspec.Struct):
    blockReason: str | None = None  # noqa: N815


class _Usage(msgspec.Struct):
    promptTokenCount: int = 0  # noqa: N815
    candidatesTokenCount: int = 0  # noqa: N815
    cachedContentTokenCount: int = 0  # noqa: N815
    thoughtsTokenCount: int = 0  # noqa: N815
    toolUsePromptTokenCount: int = 0  # noqa: N815

    def canonical(self) -> Usage:
        return Usage(prompt_tokens=self.promptTokenCount + self.toolUsePromptTokenCount,
                     completion_tokens=self.candidatesTokenCount + self.thoughtsTokenCount,
                     cached_tokens=self.cachedContentTokenCount, reasoning_tokens=self.thoughtsTokenCount)


class _Response(msgspec.Struct):
    candidates: list[_Candidate] = []
    promptFeedback: _Feedback | None = None  # noqa: N815
    usageMetadata: _Usage | None = None  # noqa: N815
    modelVersion: str | None = None  # noqa: N815
    responseId: str | None = None  # noqa: N815


class _Embedding(msgspec.Struct):
    values: list[float]


class _Embeddings(msgspec.Struct):
    embeddings: list[_Embedding]


_response = msgspec.json.Decoder(_Response)
_embeddings = msgspec.json.Decoder(_Embeddings)


def _call_id(call: _FunctionCall) -> str:
    return call.id or "call_" + uuid.uuid4().hex[:24]


def _split(content: _Content | None) -> tuple[str, list[_FunctionCall]]:
    """Visible text and function calls of a candidate (thought summaries are not the answer)."""
    if content is None:
        return "", []
    text = "".join(p.text or "" for p in content.parts if p.text and not p.thought)
    return text, [p.functionCall for p in content.parts if p.functionCall is not None]


def parse_generate(data: bytes, target: Target) -> ChatResponse:
    """A ``GenerateContentResponse`` in canonical form."""
    r = _response.decode(data)
    usage = r.usageMetadata.canonical() if r.usageMetadata else Usage()
    model = r.modelVersion or target.upstream_model
    if not r.candidates:
        if r.promptFeedback and r.promptFeedback.blockReason:
            return ChatResponse(model=model, usage=usage, provider_id=r.responseId,
                                choices=[Choice(index=0, message=Message(role="assistant", content=None),
                                                finish_reason="content_filter")])
        raise ValueError("no candidates and no block reason")
    choices = []
    for c in r.candidates:
        text, calls = _split(c.content)
        tool_calls = [ToolCall(id=_call_id(fc), type="function",
                               function=FunctionCall(name=fc.name, arguments=_encoder.encode(fc.args or {}).decode()))
                      for fc in calls]
        choices.append(Choice(index=c.index, finish_reason=finish_reason(c.finishReason or "STOP", bool(calls)),  # type: ignore
                              message=Message(role="assistant", content=text if text or not calls else None,
                                              tool_calls=tool_calls or None)))
    return ChatResponse(model=model, choices=choices, usage=usage, provider_id=r.responseId)


class GenerateStreamDecoder:
    """``data: {GenerateContentResponse}`` events; the stream is complete once every candidate has finished."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False  # Gemini has no end marker after the last chunk, so the transport runs to EOF
        self._started = False
        self._open: set[int] = set()
        self._finished: set[int] = set()
        self._calls: dict[int, int] = {}
        self._usage = Usage()
        self._model: str | None = None

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        if not event.data.strip():
            return []
        raw = msgspec.json.decode(event.data)
        if isinstance(raw, dict) and "error" in raw:
            err = raw["error"] if isinstance(raw["error"], dict) else {"message": str(raw["error"])}
            raise stream_error(self.provider, str(err.get("status") or "error"), str(err.get("message", "")))
        r = msgspec.convert(raw, _Response)
        self._model = r.modelVersion or self._model
        if r.usageMetadata is not None:
            self._usage = r.usageMetadata.canonical()
        out: list[StreamChunk] = []
        if not r.candidates and r.promptFeedback and r.promptFeedback.blockReason:
            self._finished.add(0)
            return [StreamChunk(choices=[ChunkChoice(index=0, delta=Delta(role="assistant"),
                                                     finish_reason="content_filter")], model=self._model)]
        for c in r.candidates:
            first = c.index not in self._open
            self._open.add(c.index)
            text, calls = _split(c.content)
            delta_calls = []
            for fc in calls:
                n = self._calls[c.index] = self._calls.get(c.index, -1) + 1
                delta_calls.append(ToolCall(index=n, id=_call_id(fc), type="function",
                                            function=FunctionCall(name=fc.name,
                                                                  arguments=_encoder.encode(fc.args or {}).decode())))
            delta = Delta(role="assistant" if first else None, content=text or ("" if first else None),
                          tool_calls=delta_calls or None)
            if first or text or delta_calls:
                out.append(StreamChunk(choices=[ChunkChoice(index=c.index, delta=delta)], model=self._model))
            if c.finishReason:
                self._finished.add(c.index)
                out.append(StreamChunk(choices=[ChunkChoice(
                    index=c.index, delta=Delta(),
                    finish_reason=finish_reason(c.finishReason, c.index in self._calls))],  # type: ignore
                    model=self._model))
        return out

    def finish(self) -> list[StreamChunk]:
        if not self._finished or self._open - self._finished:
            raise stream_cut(self.provider, "ended before a finishReason")
        return [StreamChunk(usage=self._usage, model=self._model)]


def _error_object(data: bytes) -> dict[str, Any]:
    """The ``error`` object of a Google API error body (streaming endpoints wrap it in a list)."""
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return {}
    if isinstance(body, list) and body:
        body = body[0]
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else {}


def _retry_delay(details: Any) -> float | None:
    """Gemini's 429 puts the wait in a google.rpc.RetryInfo detail ("37s"), not in a header."""
    for d in details if isinstance(details, list) else ():
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("RetryInfo"):
            m = _DURATION.match(str(d.get("retryDelay", "")))
            if m:
                return min(MAX_RETRY_AFTER_S, float(m.group(1)))
    return None


class GeminiAdapter(HttpAdapter):
    """Gemini's ``generateContent`` family."""

    default_base = "https://generativelanguage.googleapis.com/v1beta"

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", **self.spec.headers}
        if self.api_key:
            h["x-goog-api-key"] = self.api_key
        return h

    def _model_url(self, model: str, method: str) -> str:
        name = model if "/" in model else f"models/{model}"
        return f"{(self.spec.base_url or self.default_base).rstrip('/')}/{quote(name, safe='/')}:{method}"

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        return UpstreamRequest("POST", self._model_url(target.upstream_model, "generateContent"), self.headers(),
                               _encoder.encode(generate_body(self.label, request)))

    def build_stream_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        return UpstreamRequest("POST", self._model_url(target.upstream_model, "streamGenerateContent"),
                               {**self.headers(), "accept": "text/event-stream"},
                               _encoder.encode(generate_body(self.label, request)), {"alt": "sse"})

    def parse_response(self, data: bytes, request: ChatRequest, target: Target) -> ChatResponse:
        return parse_generate(data, target)

    def stream_decoder(self, request: ChatRequest, target: Target) -> GenerateStreamDecoder:
        return GenerateStreamDecoder(self.spec.name)

    def build_embed_request(self, request: EmbeddingRequest, target: Target) -> UpstreamRequest:
        name = target.upstream_model if "/" in target.upstream_model else f"models/{target.upstream_model}"
        items = []
        for text in embedding_inputs(self.label, request):
            item: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
            if request.dimensions is not None:
                item["outputDimensionality"] = request.dimensions
            items.append(item)
        return UpstreamRequest("POST", self._model_url(target.upstream_model, "batchEmbedContents"),
                               self.headers(), _encoder.encode({"requests": items}))

    def parse_embed_response(self, data: bytes, request: EmbeddingRequest, target: Target) -> EmbeddingResponse:
        r = _embeddings.decode(data)
        # batchEmbedContents reports no usage: bill the estimate rather than nothing.
        tokens = sum(estimate_tokens(t) for t in embedding_inputs(self.label, request))
        return EmbeddingResponse(model=target.upstream_model, data=[e.values for e in r.embeddings],
                                 usage=Usage(prompt_tokens=tokens))

    def map_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> UpstreamError:
        message = self.error_message(data)
        err = _error_object(data)
        details = err.get("details")
        reasons = {d.get("reason") for d in details if isinstance(d, dict)} if isinstance(details, list) else set()
        if "API_KEY_INVALID" in reasons or err.get("status") in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return UpstreamAuthFailed(f"{self.spec.name} returned {status}: {scrub(message)}")
        error = classify(self.spec.name, status, message, headers)
        if isinstance(error, UpstreamRateLimited) and error.retry_after is None:
            error.retry_after = _retry_delay(details)
        return error
