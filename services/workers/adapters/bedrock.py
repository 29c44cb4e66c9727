"""AWS Bedrock Converse and ConverseStream, signed with SigV4 by botocore.

``POST https://bedrock-runtime.{region}.amazonaws.com/model/{modelId}/converse``
(or ``/converse-stream``); the model id (or inference-profile id/ARN) is the
catalog's ``upstream_model``, percent-encoded into one path segment as
botocore itself does. ``base_url`` overrides the endpoint (tests, VPC
endpoints, FIPS).

Credentials, resolved once when the worker starts: ``options.access_key_id`` /
``secret_access_key`` / ``session_token``, else the environment variables
those options' ``*_env`` variants name (default ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), else -- unless
``options.credential_chain`` is false -- botocore's default chain (shared
config, container and instance roles, IRSA). Region: ``options.region``,
``AWS_REGION``, ``AWS_DEFAULT_REGION``, then ``us-east-1``.

Translations: system/developer → ``system``; tool calls → ``toolUse``
blocks, tool messages → ``toolResult`` blocks in a user turn; consecutive
turns of one role merged; ``max_tokens``/``temperature``/``top_p``/``stop`` →
``inferenceConfig``; ``tool_choice`` ``auto``/``required``/named →
``auto``/``any``/``tool`` (``none`` → tools left out, which only works before
any tool was used); images and PDFs from base64 data URLs; JSON mode and JSON
schema → a forced tool whose input is returned as text;
``options.additional_model_request_fields`` is passed through.

Refused: ``n`` > 1, ``seed``, penalties, ``logit_bias``, ``logprobs``,
``temperature`` above 1, ``parallel_tool_calls: false``, image URLs (Bedrock
takes bytes or S3 only), audio, ``name`` on non-tool messages, the legacy
``function`` role, and embeddings (those are InvokeModel, not Converse).

Streams are AWS event-stream frames (prelude, headers, payload, CRC32s)
parsed with botocore's ``EventStreamBuffer``; the stream is complete at the
``metadata`` event that carries usage.
"""

from __future__ import annotations

import os
import re
from typing import Any, AsyncIterator, Mapping
from urllib.parse import quote

import botocore.session
import httpx
import msgspec
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from services.workers.adapters.base import (
    add_turn,
    JSON_TOOL,
    HttpAdapter,
    UpstreamRequest,
    classify,
    decode_arguments,
    json_mode,
    json_tool_schema,
    parse_data_url,
    refuse,
    refuse_function_role,
    refuse_unsupported,
    scrub,
    stream_cut,
    stream_error,
)
from services.workers.adapters.transport import Response, Transport
from shared.canonical import (
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    ContentPart,
    Delta,
    FunctionCall,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
)
from shared.catalog import ProviderSpec
from shared.errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from shared.events import Target

SIGNING_NAME = "bedrock"
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
_UNSUPPORTED = {
    "n": "more than one completion per request",
    "seed": "seeded sampling",
    "presence_penalty": "presence penalties",
    "frequency_penalty": "frequency penalties",
    "logit_bias": "token biasing",
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
}
_DOC_NAME = re.compile(r"[^A-Za-z0-9 ()\[\]-]+")
_encoder = msgspec.json.Encoder()


# ---- request --------------------------------------------------------------------------------

def _blocks(provider: str, content: str | list[ContentPart] | None, i: int) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    out = []
    for j, p in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        if p.type == "text":
            if p.text:
                out.append({"text": p.text})
        elif p.type == "image_url":
            inline = parse_data_url((p.image_url or {}).get("url") or "")
            if inline is None:
                raise refuse(provider, param, "image URLs; send the image as a base64 data URL")
            if inline[0] not in IMAGE_FORMATS:
                raise refuse(provider, param, f"images of type {inline[0]}")
            out.append({"image": {"format": IMAGE_FORMATS[inline[0]], "source": {"bytes": inline[1]}}})
        elif p.type == "file" and (inline := parse_data_url((p.file or {}).get("file_data") or "")) \
                and inline[0] == "application/pdf":
            name = _DOC_NAME.sub(" ", ((p.file or {}).get("filename") or "document").rsplit(".", 1)[0]).strip()
            out.append({"document": {"format": "pdf", "name": name or "document", "source": {"bytes": inline[1]}}})
        else:
            raise refuse(provider, param, f"content parts of type {p.type!r}"
                         + (" other than inline PDF data" if p.type == "file" else ""))
    return out


def _text(provider: str, content: str | list[ContentPart] | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if any(p.type != "text" for p in content):
        raise refuse(provider, param, "non-text content here")
    return "".join(p.text or "" for p in content)


def converse_body(provider: str, request: ChatRequest, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The canonical request as a Converse body (the model id goes in the URL)."""
    refuse_function_role(provider, request)
    refuse_unsupported(provider, request, _UNSUPPORTED)
    if request.temperature is not None and request.temperature > 1:
        raise refuse(provider, "temperature", "values above 1 (its range is 0 to 1)")
    if request.parallel_tool_calls is False and request.tools:
        raise refuse(provider, "parallel_tool_calls", "turning parallel tool calls off")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    used_tools = False

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        add_turn(turns, role, blocks, "content")

    for i, m in enumerate(request.messages):
        if m.name and m.role != "tool":
            raise refuse(provider, f"messages[{i}].name", "participant names")
        if m.role in ("system", "developer"):
            text = _text(provider, m.content, f"messages[{i}].content")
            if text:
                system.append({"text": text})
        elif m.role == "user":
            add("user", _blocks(provider, m.content, i))
        elif m.role == "assistant":
            blocks = _blocks(provider, m.content if m.content is not None else m.refusal, i)
            for k, call in enumerate(m.tool_calls or ()):
                used_tools = True
                fn = call.function or FunctionCall()
                blocks.append({"toolUse": {"toolUseId": call.id or f"tooluse_{i}_{k}", "name": fn.name or "",
                                           "input": decode_arguments(
                                               provider, fn.arguments,
                                               f"messages[{i}].tool_calls[{k}].function.arguments")}})
            add("assistant", blocks)
        elif m.role == "tool":
            used_tools = True
            text = _text(provider, m.content, f"messages[{i}].content")
            add("user", [{"toolResult": {"toolUseId": m.tool_call_id or "", "content": [{"text": text}]}}])
    body: dict[str, Any] = {"messages": turns}
    if system:
        body["system"] = system
    config: dict[str, Any] = {}
    for key, value in (("maxTokens", request.output_cap()), ("temperature", request.temperature),
                       ("topP", request.top_p)):
        if value is not None:
            config[key] = value
    if request.stop:
        config["stopSequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    if config:
        body["inferenceConfig"] = config
    schema = json_tool_schema(provider, request)
    if schema is not None:
        body["toolConfig"] = {"tools": [{"toolSpec": {"name": JSON_TOOL,
                                                      "description": "Reply with the requested JSON output.",
                                                      "inputSchema": {"json": schema}}}],
                              "toolChoice": {"tool": {"name": JSON_TOOL}}}
    elif request.tools:
        tools = []
        for k, tool in enumerate(request.tools):
            fn = tool.get("function") or {}
            if tool.get("type", "function") != "function" or not fn.get("name"):
                raise refuse(provider, f"tools[{k}]", f"tools of type {tool.get('type')!r}; only functions")
            spec: dict[str, Any] = {"name": fn["name"],
                                    "inputSchema": {"json": fn.get("parameters") or {"type": "object",
                                                                                     "properties": {}}}}
            if fn.get("description"):
                spec["description"] = fn["description"]
            tools.append({"toolSpec": spec})
        tc = request.tool_choice
        if tc == "none":
            if used_tools:
                raise refuse(provider, "tool_choice", "'none' once tools were used in the conversation")
        else:
            body["toolConfig"] = {"tools": tools}
            if tc == "auto":
                body["toolConfig"]["toolChoice"] = {"auto": {}}
            elif tc == "required":
                body["toolConfig"]["toolChoice"] = {"any": {}}
            elif isinstance(tc, dict) and (tc.get("function") or {}).get("name"):
                body["toolConfig"]["toolChoice"] = {"tool": {"name": tc["function"]["name"]}}
            elif tc is not None:
                raise refuse(provider, "tool_choice", f"the value {tc!r}")
    if extra:
        body["additionalModelRequestFields"] = dict(extra)
    return body


# ---- response -------------------------------------------------------------------------------

class _ToolUse(msgspec.Struct):
    toolUseId: str  # noqa: N815 (wire names)
    name: str
    input: Any = None


class _Block(msgspec.Struct):
    text: str | None = None
    toolUse: _ToolUse | None = None  # noqa: N815


class _OutMessage(msgspec.Struct):
    content: list[_Block] = []
    role: str = "assistant"


class _Output(msgspec.Struct):
    message: _OutMessage


class _Usage(msgspec.Struct):
    inputTokens: int = 0  # noqa: N815
    outputTokens: int = 0  # noqa: N815
    cacheReadInputTokens: int = 0  # noqa: N815
    cacheWriteInputTokens: int = 0  # noqa: N815

    def canonical(self) -> Usage:
        # inputTokens excludes cache reads and writes; the canonical prompt count includes them
        return Usage(prompt_tokens=self.inputTokens + self.cacheReadInputTokens + self.cacheWriteInputTokens,
                     completion_tokens=self.outputTokens, cached_tokens=self.cacheReadInputTokens,
                     cache_creation_tokens=self.cacheWriteInputTokens)


class _Response(msgspec.Struct):
    output: _Output
    stopReason: str | None = None  # noqa: N815
    usage: _Usage = msgspec.field(default_factory=_Usage)


_response = msgspec.json.Decoder(_Response)


def parse_converse(data: bytes, target: Target, json_output: bool = False) -> ChatResponse:
    """A Converse response in canonical form; with ``json_output`` our forced JSON tool becomes the text."""
    r = _response.decode(data)
    text: list[str] = []
    calls: list[ToolCall] = []
    finish = STOP_REASONS.get(r.stopReason or "end_turn", "stop")
    for block in r.output.message.content:
        if block.text is not None:
            text.append(block.text)
        elif block.toolUse is not None and json_output and block.toolUse.name == JSON_TOOL:
            text.append(_encoder.encode(block.toolUse.input).decode())
            finish = "stop" if finish == "tool_calls" else finish
        elif block.toolUse is not None:
            calls.append(ToolCall(id=block.toolUse.toolUseId, type="function",
                                  function=FunctionCall(name=block.toolUse.name,
                                                        arguments=_encoder.encode(block.toolUse.input or {}).decode())))
    message = Message(role="assistant", content="".join(text) if text or not calls else None,
                      tool_calls=calls or None)
    return ChatResponse(model=target.upstream_model, usage=r.usage.canonical(),
                        choices=[Choice(index=0, message=message, finish_reason=finish)])  # type: ignore[arg-type]


class ConverseStreamDecoder:
    """ConverseStream events (messageStart … messageStop, metadata) as canonical chunks."""

    def __init__(self, provider: str, model: str, json_output: bool = False) -> None:
        self.provider = provider
        self.model = model
        self.json_output = json_output
        self.done = False
        self._tools: dict[int, int] = {}
        self._json_blocks: set[int] = set()
        self._stopped = False

    def _chunk(self, delta: Delta, finish: str | None = None) -> StreamChunk:
        return StreamChunk(choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],  # type: ignore
                           model=self.model)

    def feed(self, message: EventStreamMessage) -> list[StreamChunk]:
        headers = message.headers
        payload = msgspec.json.decode(message.payload) if message.payload else {}
        kind = headers.get(":message-type", "event")
        if kind == "exception":
            raise stream_error(self.provider, str(headers.get(":exception-type", "exception")),
                               str(payload.get("message") or payload.get("Message") or payload))
        if kind == "error":
            raise stream_error(self.provider, str(headers.get(":error-code", "error")),
                               str(headers.get(":error-message", "")))
        event = headers.get(":event-type")
        if event == "messageStart":
            return [self._chunk(Delta(role="assistant", content=""))]
        if event == "contentBlockStart":
            index = payload.get("contentBlockIndex", 0)
            tool = (payload.get("start") or {}).get("toolUse")
            if tool and self.json_output and tool.get("name") == JSON_TOOL:
                self._json_blocks.add(index)
            elif tool:
                n = self._tools[index] = len(self._tools)
                return [self._chunk(Delta(tool_calls=[ToolCall(index=n, id=tool.get("toolUseId"), type="function",
                                                               function=FunctionCall(name=tool.get("name"),
                                                                                     arguments=""))]))]
            return []
        if event == "contentBlockDelta":
            index = payload.get("contentBlockIndex", 0)
            delta = payload.get("delta") or {}
            if "text" in delta:
                return [self._chunk(Delta(content=delta["text"]))]
            piece = (delta.get("toolUse") or {}).get("input")
            if piece is not None and index in self._json_blocks:
                return [self._chunk(Delta(content=piece))] if piece else []
            if piece and index in self._tools:
                return [self._chunk(Delta(tool_calls=[ToolCall(index=self._tools[index],
                                                               function=FunctionCall(arguments=piece))]))]
            return []  # reasoning content is not part of the answer
        if event == "messageStop":
            self._stopped = True
            finish = STOP_REASONS.get(payload.get("stopReason") or "end_turn", "stop")
            if finish == "tool_calls" and self._json_blocks and not self._tools:
                finish = "stop"
            return [self._chunk(Delta(), finish)]
        if event == "metadata":
            if not self._stopped:
                raise UpstreamBadResponse(f"{self.provider} sent stream metadata before messageStop")
            self.done = True
            usage = msgspec.convert(payload.get("usage") or {}, _Usage)
            return [StreamChunk(usage=usage.canonical(), model=self.model)]
        return []  # contentBlockStop and event types added later

    def finish(self) -> list[StreamChunk]:
        if not self.done:
            raise stream_cut(self.provider, "ended without the metadata event")
        return []


# ---- the adapter ----------------------------------------------------------------------------

def resolve_credentials(spec: ProviderSpec, env: Mapping[str, str] | None = None) -> Credentials | None:
    """Explicit keys from options or the environment; else botocore's default chain when allowed."""
    env = os.environ if env is None else env
    o = spec.options

    def pick(name: str, default_env: str) -> str | None:
        return o.get(name) or env.get(o.get(f"{name}_env", default_env)) or None

    access = pick("access_key_id", "AWS_ACCESS_KEY_ID")
    secret = pick("secret_access_key", "AWS_SECRET_ACCESS_KEY")
    if access and secret:
        return Credentials(access, secret, pick("session_token", "AWS_SESSION_TOKEN"))
    if o.get("credential_chain", True):
        return botocore.session.Session().get_credentials()
    return None


class BedrockAdapter(HttpAdapter):
    """Bedrock's Converse API, SigV4-signed."""

    def __init__(self, spec: ProviderSpec, client: Transport | httpx.AsyncClient,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(spec, client)
        env = os.environ if env is None else env
        self.region = str(spec.options.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
                          or "us-east-1")
        self.credentials = resolve_credentials(spec, env)

    def _url(self, model: str, action: str) -> str:
        base = (self.spec.base_url or f"https://bedrock-runtime.{self.region}.amazonaws.com").rstrip("/")
        return f"{base}/model/{quote(model, safe='')}/{action}"

    def sign(self, url: str, body: bytes, accept: str) -> UpstreamRequest:
        """SigV4 over exactly the bytes and headers that will be sent."""
        if self.credentials is None:
            raise UpstreamAuthFailed(f"{self.spec.name}: no AWS credentials configured")
        # Refreshable (role) credentials renew themselves here when they are about to expire.
        frozen = self.credentials.get_frozen_credentials()
        aws = AWSRequest(method="POST", url=url, data=body,
                         headers={**self.spec.headers, "content-type": "application/json", "accept": accept})
        SigV4Auth(frozen, SIGNING_NAME, self.region).add_auth(aws)
        return UpstreamRequest("POST", url, dict(aws.headers.items()), body)

    def _body(self, request: ChatRequest) -> bytes:
        return _encoder.encode(converse_body(self.label, request,
                                             self.spec.options.get("additional_model_request_fields")))

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        return self.sign(self._url(target.upstream_model, "converse"), self._body(request), "application/json")

    def build_stream_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        return self.sign(self._url(target.upstream_model, "converse-stream"), self._body(request),
                         "application/vnd.amazon.eventstream")

    def parse_response(self, data: bytes, request: ChatRequest, target: Target) -> ChatResponse:
        return parse_converse(data, target, json_mode(request))

    def stream_decoder(self, request: ChatRequest, target: Target) -> ConverseStreamDecoder:
        return ConverseStreamDecoder(self.spec.name, target.upstream_model, json_mode(request))

    async def stream_events(self, resp: Response) -> AsyncIterator[EventStreamMessage]:
        buffer = EventStreamBuffer()
        fed = consumed = 0
        async for data in resp.aiter_bytes():
            buffer.add_data(data)
            fed += len(data)
            try:
                for message in buffer:
                    consumed += message.prelude.total_length
                    yield message
            except ParserError as exc:
                raise UpstreamBadResponse(f"{self.spec.name} sent a malformed event-stream frame: {exc}") from None
        if fed != consumed:
            raise stream_cut(self.spec.name, f"ended inside an event-stream frame ({fed - consumed} bytes left)")

    def map_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> UpstreamError:
        kind = (headers.get("x-amzn-errortype") or "").split(":", 1)[0]
        message = self.error_message(data)
        detail = f"{kind}: {message}" if kind else message
        if kind == "ServiceQuotaExceededException":  # a 400, but it means "too much", not "bad request"
            return UpstreamRateLimited(f"{self.spec.name} returned {status}: {scrub(detail)}")
        if kind == "ModelNotReadyException":  # a 429, but the model is loading, not us sending too much
            return UpstreamUnavailable(f"{self.spec.name} returned {status}: {scrub(detail)}")
        return classify(self.spec.name, status, detail, headers)
