"""OpenAI's Responses API wire format, translated to and from the canonical chat model (no clients here).

A Responses request becomes one canonical ``ChatRequest``: ``instructions``
become the first (system) message, the stored conversation of
``previous_response_id`` follows, then this request's ``input`` items
(messages, ``function_call`` and ``function_call_output`` items map to chat
assistant tool calls and tool messages); function tools, ``tool_choice`` and
``text.format`` map to their chat equivalents. Anything the gateway cannot
honour is refused with a 400 naming the parameter, never dropped.

Context policy (``truncation``, default ``auto``): when the conversation does
not fit the model's context window (estimated prompt tokens plus the output
cap asked for, ``max_output_tokens`` or else the model's own output limit), the
oldest turns of the *earlier* conversation are dropped whole — a turn is a user
message and everything after it up to the next one, so a tool call never loses
its output — until it fits. ``instructions`` and this request's own input are
always sent. ``truncation: "disabled"`` sends everything, and a request too
long for the window is refused (400 ``context_length_exceeded``) by admission.

The answer renders as a ``response`` object; a stream renders as the typed
events (``response.created`` … ``response.completed``) with a
``sequence_number`` each.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from services.gateway import handlers as h
from services.gateway import schemas as S
from shared.canonical import ChatRequest, ContentPart, FunctionCall, Message, ToolCall, Usage, measure_prompt
from shared.errors import ErrorInfo, InvalidRequest
from shared.openai_format import message_text


class ResponsesRequest(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """``POST /v1/responses`` as the gateway takes it (every other field is refused by name)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    background: bool = False
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] = "auto"
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    service_tier: str | None = None
    switchyard: dict[str, Any] | None = None  # Switchyard's extension object (routing hints), as on chat


_decoder = msgspec.json.Decoder(ResponsesRequest)
# The answers' shapes, for the OpenAPI document.
RESPONSE = S.obj({"id": S.STR, "object": {"const": "response"}, "created_at": S.INT, "status": S.STR,
                  "model": S.STR, "output": {"type": "array", "items": S.obj({"type": S.STR})}},
                 {"usage": {"type": ["object", "null"]}, "error": {"type": ["object", "null"]},
                  "output_text": S.STR, "previous_response_id": S.NULL_STR})
RESPONSE_DELETED = S.obj({"id": S.STR, "object": {"const": "response"}, "deleted": {"type": "boolean"}})
INPUT_ITEM_LIST = S.list_of(S.obj({"id": S.STR, "type": S.STR}))
# Parameters of OpenAI's Responses API this gateway does not implement: named in the 400.
UNSUPPORTED = {
    "conversation": "use previous_response_id to continue a conversation",
    "prompt": "reusable prompts are not supported on /v1/responses",
    "max_tool_calls": "built-in tools are not supported, so there is nothing to limit",
    "top_logprobs": "log probabilities are not supported on /v1/responses",
    "prompt_cache_key": "prompt caching hints are not supported",
    "prompt_cache_retention": "prompt caching hints are not supported",
}


def parse_request(body: bytes, max_bytes: int) -> ResponsesRequest:
    """Decode and check a Responses request; a parameter the gateway cannot honour is a 400 naming it."""
    raw = h.decode_body(body, msgspec.json.Decoder(dict), max_bytes, "Responses API request")
    for name, why in UNSUPPORTED.items():
        if raw.get(name) is not None:
            raise InvalidRequest(f"'{name}' is not supported: {why}", param=name)
    req: ResponsesRequest = h.decode_body(body, _decoder, max_bytes, "Responses API request")
    if req.reasoning:
        raise InvalidRequest("'reasoning' is not supported: the gateway routes to chat models", param="reasoning")
    if req.include:
        raise InvalidRequest("'include' is not supported (no reasoning or tool outputs to include)",
                             param="include")
    if req.service_tier not in (None, "auto", "default"):
        raise InvalidRequest("'service_tier' must be auto or default here", param="service_tier")
    if req.background and req.stream:
        raise InvalidRequest("background responses cannot stream here; poll GET /v1/responses/{id}",
                             param="stream")
    if req.background and not req.store:
        raise InvalidRequest("a background response must be stored (store: true)", param="store")
    if req.stream_options and not req.stream:
        raise InvalidRequest("stream_options needs stream: true", param="stream_options")
    if set(req.stream_options or {}) - {"include_obfuscation"}:  # no obfuscation padding is ever added
        raise InvalidRequest("stream_options takes include_obfuscation only", param="stream_options")
    if isinstance(req.input, list) and not req.input and not req.previous_response_id:
        raise InvalidRequest("input must not be empty", param="input")
    return req


# ---- request → canonical -----------------------------------------------------------------------

def _part(part: Any, where: str) -> ContentPart:
    if not isinstance(part, dict):
        raise InvalidRequest("a content part must be an object", param=where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        if not isinstance(part.get("text"), str):
            raise InvalidRequest("a text part needs 'text'", param=f"{where}.text")
        return ContentPart(type="text", text=part["text"])
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise InvalidRequest("images are taken as image_url (a URL or data: URL); file_id is not supported",
                                 param=f"{where}.image_url")
        return ContentPart(type="image_url", image_url={"url": url, "detail": part.get("detail") or "auto"})
    if kind == "input_file":
        if not isinstance(part.get("file_data"), str):
            raise InvalidRequest("files are taken as file_data (base64); file_id and file_url are not supported",
                                 param=f"{where}.file_data")
        file = {"file_data": part["file_data"]}
        if part.get("filename"):
            file["filename"] = part["filename"]
        return ContentPart(type="file", file=file)
    raise InvalidRequest(f"content part type {kind!r} is not supported (input_text, input_image, input_file, "
                         f"output_text)", param=f"{where}.type")


def _content(content: Any, where: str) -> str | list[ContentPart]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or a list of parts", param=where)
    parts = [_part(p, f"{where}[{i}]") for i, p in enumerate(content)]
    if all(p.type == "text" for p in parts):  # plain text travels as a string, as chat clients send it
        return "".join(p.text or "" for p in parts)
    return parts


def input_messages(items: str | list[dict[str, Any]]) -> list[Message]:
    """This request's ``input`` as chat messages (400 naming the item that cannot be one)."""
    if isinstance(items, str):
        return [Message(role="user", content=items)]
    out: list[Message] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest("an input item must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest("role must be user, assistant, system or developer", param=f"{where}.role")
            content = item.get("content")
            if role == "assistant" and isinstance(content, list) and any(
                    isinstance(p, dict) and p.get("type") == "refusal" for p in content):
                refusal = "".join(p.get("refusal") or "" for p in content if p.get("type") == "refusal")
                rest = [p for p in content if not (isinstance(p, dict) and p.get("type") == "refusal")]
                out.append(Message(role="assistant", content=_content(rest, f"{where}.content") or None,
                                   refusal=refusal))
            else:
                out.append(Message(role=role, content=_content(content, f"{where}.content")))
        elif kind == "function_call":
            for field in ("call_id", "name", "arguments"):
                if not isinstance(item.get(field), str):
                    raise InvalidRequest(f"a function_call item needs '{field}'", param=f"{where}.{field}")
            call = ToolCall(id=item["call_id"], type="function",
                            function=FunctionCall(name=item["name"], arguments=item["arguments"]))
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":  # one assistant turn: its text and its calls
                out[-1] = msgspec.structs.replace(last, tool_calls=[*(last.tool_calls or []), call])
            else:
                out.append(Message(role="assistant", content=None, tool_calls=[call]))
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequest("a function_call_output item needs 'call_id'", param=f"{where}.call_id")
            output = item.get("output")
            if isinstance(output, list):
                output = "".join(p.get("text") or "" for p in output if isinstance(p, dict))
            if not isinstance(output, str):
                raise InvalidRequest("output must be a string or a list of text parts", param=f"{where}.output")
            out.append(Message(role="tool", tool_call_id=item["call_id"], content=output))
        else:
            raise InvalidRequest(f"input item type {kind!r} is not supported (message, function_call, "
                                 f"function_call_output)", param=f"{where}.type")
    return out


def chat_tools(req: ResponsesRequest) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any] | None]:
    """Function tools and ``tool_choice`` in chat form; built-in tools are refused."""
    tools = None
    if req.tools:
        tools = []
        for i, tool in enumerate(req.tools):
            if tool.get("type") != "function":
                raise InvalidRequest(f"tool type {tool.get('type')!r} is not supported: only function tools",
                                     param=f"tools[{i}].type")
            if not isinstance(tool.get("name"), str):
                raise InvalidRequest("a function tool needs 'name'", param=f"tools[{i}].name")
            fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
            tools.append({"type": "function", "function": fn})
    choice = req.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise InvalidRequest("tool_choice must be auto, none, required or {type: function, name}",
                                 param="tool_choice")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None and choice not in ("auto", "none", "required"):
        raise InvalidRequest("tool_choice must be auto, none, required or {type: function, name}",
                             param="tool_choice")
    return tools, choice


def response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format``."""
    fmt = (text or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise InvalidRequest("text.format must be an object", param="text.format")
    if text and set(text) - {"format", "verbosity"}:
        raise InvalidRequest("text takes 'format' only", param="text")
    if text and text.get("verbosity") not in (None, "medium"):
        raise InvalidRequest("text.verbosity is not supported", param="text.verbosity")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise InvalidRequest("a json_schema format needs 'name' and 'schema'", param="text.format")
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": spec}
    raise InvalidRequest("text.format.type must be text, json_object or json_schema", param="text.format.type")


def turns(messages: list[Message]) -> list[list[Message]]:
    """Messages grouped into turns: each starts at a user message (what comes before the first is one turn)."""
    out: list[list[Message]] = []
    for m in messages:
        if m.role == "user" or not out:
            out.append([m])
        else:
            out[-1].append(m)
    return out


def build_chat(req: ResponsesRequest, history: list[Message], context_window: int | None,
               output_cap: int | None) -> tuple[ChatRequest, list[Message], int]:
    """The canonical request, the conversation it sends (instructions excluded) and how many earlier messages
    were dropped to fit the context window (the policy in the module docstring)."""
    tools, choice = chat_tools(req)
    new = input_messages(req.input)
    head = [Message(role="system", content=req.instructions)] if req.instructions else []
    chat = ChatRequest(model=req.model, messages=head + history + new or [Message(role="user", content="")],
                       temperature=req.temperature, top_p=req.top_p, max_completion_tokens=req.max_output_tokens,
                       tools=tools, tool_choice=choice, parallel_tool_calls=req.parallel_tool_calls,
                       response_format=response_format(req.text), stream=req.stream,
                       stream_options={"include_usage": True} if req.stream else None,
                       user=req.safety_identifier or req.user, metadata=req.metadata, switchyard=req.switchyard)
    earlier = turns(history)
    dropped = 0
    if req.truncation == "auto" and context_window:
        reserve = output_cap or 0
        while earlier and measure_prompt(chat).tokens + reserve > context_window:
            dropped += len(earlier.pop(0))
            kept = [m for t in earlier for m in t]
            chat = msgspec.structs.replace(chat, messages=head + kept + new)
    conversation = [m for t in earlier for m in t] + new
    return chat, conversation, dropped


# ---- canonical → response ----------------------------------------------------------------------

def item_id(response_id: str, kind: str, index: int) -> str:
    """A stable id for output item ``index`` of a response (the same in its stream and its stored copy)."""
    return f"{kind}_{response_id.removeprefix('resp_')}_{index}"


def output_items(response_id: str, message: Message, status: str = "completed") -> list[dict[str, Any]]:
    """An assistant message as Responses output items: its text as a ``message``, each tool call a
    ``function_call``."""
    items: list[dict[str, Any]] = []
    text = message_text(message)
    if text or message.refusal is not None or not message.tool_calls:
        content: list[dict[str, Any]] = []
        if text or message.refusal is None:
            content.append({"type": "output_text", "text": text or "", "annotations": [], "logprobs": []})
        if message.refusal is not None:
            content.append({"type": "refusal", "refusal": message.refusal})
        items.append({"id": item_id(response_id, "msg", 0), "type": "message", "role": "assistant",
                      "status": status, "content": content})
    for i, call in enumerate(message.tool_calls or []):
        fn = call.function or FunctionCall()
        items.append({"id": item_id(response_id, "fc", len(items)), "type": "function_call", "status": "completed",
                      "call_id": call.id or item_id(response_id, "call", i), "name": fn.name or "",
                      "arguments": fn.arguments or ""})
    return items


def usage(u: Usage) -> dict[str, Any]:
    """Responses' usage object."""
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_creation_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total_tokens}


def finish_status(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """A response's status and ``incomplete_details`` from the chat finish reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def echoed(req: ResponsesRequest) -> dict[str, Any]:
    """The request's parameters a response object repeats."""
    return {"instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "metadata": req.metadata or {}, "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": req.previous_response_id, "temperature": req.temperature,
            "top_p": req.top_p, "tools": req.tools or [], "tool_choice": req.tool_choice or "auto",
            "text": req.text or {"format": {"type": "text"}}, "truncation": req.truncation, "store": req.store,
            "background": req.background, "user": req.user, "safety_identifier": req.safety_identifier}


def response_object(response_id: str, *, created_at: float, status: str, model: str, params: dict[str, Any],
                    output: list[dict[str, Any]], usage_body: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None, incomplete: dict[str, Any] | None = None,
                    completed_at: float | None = None) -> dict[str, Any]:
    """OpenAI's ``response`` object."""
    body = {"id": response_id, "object": "response", "created_at": int(created_at), "status": status,
            "error": error, "incomplete_details": incomplete, "model": model, "output": output,
            "usage": usage_body, "completed_at": int(completed_at) if completed_at else None}
    body.update(params)
    text = "".join(c.get("text", "") for item in output if item.get("type") == "message"
                   for c in item.get("content", []) if c.get("type") == "output_text")
    body["output_text"] = text  # the SDKs compute it themselves; plain HTTP clients get it here
    return body


def error_object(info: ErrorInfo) -> dict[str, Any]:
    """A failed response's ``error``: a code and a message."""
    return {"code": info.code, "message": info.message}


def input_items(response_id: str, messages: list[Message]) -> list[dict[str, Any]]:
    """A stored conversation as Responses items (``GET /v1/responses/{id}/input_items``), oldest first."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m.role == "tool":
            out.append({"id": item_id(response_id, "fco", i), "type": "function_call_output",
                        "call_id": m.tool_call_id, "output": message_text(m) or "", "status": "completed"})
        elif m.role == "assistant":
            for n, item in enumerate(output_items(f"resp_{response_id.removeprefix('resp_')}_{i}", m)):
                out.append({**item, "id": item_id(response_id, "in", i * 100 + n)})
        else:
            parts = [m.content] if isinstance(m.content, str) else m.content or []
            content = []
            for p in parts:
                if isinstance(p, str):
                    content.append({"type": "input_text", "text": p})
                elif p.type == "text":
                    content.append({"type": "input_text", "text": p.text or ""})
                elif p.type == "image_url":
                    content.append({"type": "input_image", "image_url": (p.image_url or {}).get("url"),
                                    "detail": (p.image_url or {}).get("detail", "auto")})
                elif p.type == "file":
                    content.append({"type": "input_file", **(p.file or {})})
            out.append({"id": item_id(response_id, "in", i * 100), "type": "message", "role": m.role,
                        "status": "completed", "content": content})
    return out
