"""What the mock provider answers a chat request, honouring every feature a client can ask of a chat model.

Pure and deterministic: the same request always gives the same answers. A
request is checked whole before anything is produced, and a parameter the
mock cannot honour is refused (``refuse``: a 400 naming the parameter),
never dropped:

- ``tools``/``tool_choice``: ``none`` answers text; ``required`` and a named
  function always call; ``auto`` calls unless the conversation ends with a
  tool result (the round trip: the tool answered, so the model answers). The
  function called is the named one, else the first whose name the last user
  message mentions, else the first; its arguments are a small instance of the
  function's JSON schema (``schema_instance``).
- ``response_format``: ``json_object`` gives ``{"reply": "<text>"}``,
  ``json_schema`` an instance of the schema. With ``strict`` the schema must
  follow OpenAI's strict rules (every property required, no additional
  properties), as OpenAI itself refuses otherwise.
- ``n`` choices (choice 0 is the ``n=1`` answer), ``stop`` (the text ends
  before the first stop sequence), the output cap (``max_tokens`` /
  ``max_completion_tokens``, counted in the pieces the stream sends: a word
  with its leading space, or a run of JSON), ``logprobs``/``top_logprobs``.
- Image and file parts are read as present (the router lets images reach
  only a model whose catalog entry says ``vision``); audio input and
  ``logit_bias`` are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from services.workers.adapters.base import refuse
from services.workers.adapters.schema_instance import Unsatisfiable, instance
from shared.canonical import ChatRequest, Choice, Delta, FunctionCall, Message, ToolCall
from shared.errors import InvalidRequest

MAX_TOP_LOGPROBS = 20  # OpenAI's limit
_PIECE = re.compile(r"\s*\S+")
_ALTERNATIVES = ("the", "a", "track", "route", "switch", "signal", "yard", "and", "of", "to", "with", "care",
                 "speed", "record", "cost", "clear", "right", "every", "request", "along")


@dataclass
class Answer:
    """One choice: text or a tool call, the pieces it streams as, how it finished, its log probabilities."""

    index: int
    content: str | None
    call: ToolCall | None
    finish: str
    tokens: list[str]
    logprobs: list[dict[str, Any]] | None  # one entry per token of text content, when asked for

    def choice(self) -> Choice:
        message = Message(role="assistant", content=self.content, tool_calls=[self.call] if self.call else None)
        lp = None
        if self.logprobs is not None:
            lp = {"content": self.logprobs if self.call is None else None, "refusal": None}
        return Choice(index=self.index, message=message, finish_reason=self.finish, logprobs=lp)  # type: ignore

    def deltas(self) -> Iterator[tuple[Delta, dict[str, Any] | None]]:
        """The stream increments of this choice (without its finish), in OpenAI's shape."""
        if self.call is not None:
            fn = self.call.function or FunctionCall()
            head = ToolCall(index=0, id=self.call.id, type="function",
                            function=FunctionCall(name=fn.name, arguments=""))
            yield Delta(role="assistant", tool_calls=[head]), None
            for piece in self.tokens:
                yield Delta(tool_calls=[ToolCall(index=0, function=FunctionCall(arguments=piece))]), None
            return
        if not self.tokens:
            yield Delta(role="assistant", content=""), ({"content": [], "refusal": None} if self.logprobs is not None
                                                        else None)
            return
        for i, piece in enumerate(self.tokens):
            lp = {"content": [self.logprobs[i]], "refusal": None} if self.logprobs is not None else None
            yield (Delta(role="assistant", content=piece) if i == 0 else Delta(content=piece)), lp


def pieces(text: str) -> list[str]:
    """Text in the pieces the mock counts as tokens: each run of non-space with the spaces before it."""
    return _PIECE.findall(text)


def answer(provider: str, request: ChatRequest, reply: Callable[[ChatRequest, int], str],
           content: str | None = None) -> list[Answer]:
    """Every choice the request asks for; refused (400) if the mock cannot honour the request."""
    check(provider, request)
    tool = _tool_to_call(provider, request)
    schema = _json_schema(provider, request)
    cap = request.output_cap()
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    digest = hashlib.sha256(repr(request.messages).encode() + request.model.encode()).hexdigest()
    out = []
    for k in range(request.n or 1):
        seed = f"{digest}:{k}"
        call = None
        if tool is not None:
            args = _instance(provider, tool.get("parameters") or {"type": "object", "properties": {}}, seed,
                             f"tools[{tool['name']}].parameters")
            text = json.dumps(args)
            call_id = "call_" + hashlib.sha256(f"call|{seed}".encode()).hexdigest()[:24]
        elif schema is not None:
            text = json.dumps(_instance(provider, schema, seed, "response_format"))
        else:
            text = content if content is not None and k == 0 else reply(request, k)
            if (request.response_format or {}).get("type") == "json_object":
                text = json.dumps({"reply": text})
        finish = "tool_calls" if tool is not None else "stop"
        if tool is None:
            cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
        tokens = pieces(text)
        trailing = text[len("".join(tokens)):]  # spaces a stop sequence left at the end stay with the last piece
        if trailing:
            tokens = tokens[:-1] + [tokens[-1] + trailing] if tokens else [trailing]
        if cap is not None and len(tokens) > cap:
            tokens, finish = tokens[:cap], "length"
        produced = "".join(tokens)
        if tool is not None:
            call = ToolCall(id=call_id, type="function", function=FunctionCall(name=tool["name"], arguments=produced))
        logprobs = _logprobs(tokens, seed, request.top_logprobs or 0) if request.logprobs else None
        out.append(Answer(index=k, content=None if call else produced, call=call, finish=finish, tokens=tokens,
                          logprobs=logprobs))
    return out


def check(provider: str, request: ChatRequest) -> None:
    """Refuse what the mock cannot honour, and what OpenAI itself refuses, before producing anything."""
    if request.logit_bias:
        raise refuse(provider, "logit_bias", "its answers are not sampled from token probabilities")
    if request.top_logprobs is not None:
        if not request.logprobs:
            raise InvalidRequest("logprobs must be true when top_logprobs is set", param="top_logprobs")
        if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs")
    for i, m in enumerate(request.messages):
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if part.type == "input_audio" or part.input_audio is not None:
                    raise refuse(provider, f"messages[{i}].content[{j}]", "audio input")
                if part.type not in ("text", "image_url", "file", "refusal"):
                    raise refuse(provider, f"messages[{i}].content[{j}]", f"content parts of type {part.type!r}")
    rf = request.response_format or {}
    if rf.get("type") not in (None, "text", "json_object", "json_schema"):
        raise InvalidRequest(f"response_format type {rf.get('type')!r} is not one of text, json_object, "
                             f"json_schema", param="response_format.type")


def _tools(provider: str, request: ChatRequest) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(request.tools or ()):
        if tool.get("type", "function") != "function":
            raise refuse(provider, f"tools[{i}].type", f"tools of type {tool.get('type')!r}")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequest("a function tool needs function.name", param=f"tools[{i}].function.name")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequest("function.parameters must be a JSON schema object",
                                 param=f"tools[{i}].function.parameters")
        if fn.get("strict") and params is not None:
            _check_strict(params, f"tools[{i}].function.parameters")
        out[fn["name"]] = fn
    return out


def _tool_to_call(provider: str, request: ChatRequest) -> dict[str, Any] | None:
    """The function this request's answer calls, or None for a text answer."""
    tools = _tools(provider, request)
    tc = request.tool_choice
    if tc is not None and not tools and tc != "none":
        raise InvalidRequest("tool_choice is only allowed when tools are specified", param="tool_choice")
    if isinstance(tc, dict):
        name = (tc.get("function") or {}).get("name") if tc.get("type") == "function" else None
        if not name:
            raise InvalidRequest("tool_choice must name a function: {\"type\": \"function\", \"function\": "
                                 "{\"name\": ...}}", param="tool_choice")
        if name not in tools:
            raise InvalidRequest(f"tool_choice names '{name}', which is not among the tools", param="tool_choice")
        return tools[name]
    if tc not in (None, "auto", "none", "required"):
        raise InvalidRequest(f"tool_choice must be none, auto, required or a named function, not {tc!r}",
                             param="tool_choice")
    if not tools or tc == "none":
        return None
    if tc != "required" and request.messages[-1].role in ("tool", "function"):
        return None  # the tool answered: now the model answers
    last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
    said = _text(last_user).lower() if last_user is not None else ""
    return next((fn for name, fn in tools.items() if name.lower() in said), next(iter(tools.values())))


def _json_schema(provider: str, request: ChatRequest) -> dict[str, Any] | None:
    rf = request.response_format or {}
    if rf.get("type") != "json_schema":
        return None
    spec = rf.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest("response_format json_schema needs a json_schema object",
                             param="response_format.json_schema")
    schema = spec.get("schema")
    if schema is None:
        return {"type": "object"}
    if not isinstance(schema, dict):
        raise InvalidRequest("json_schema.schema must be a JSON schema object",
                             param="response_format.json_schema.schema")
    if spec.get("strict"):
        _check_strict(schema, "response_format.json_schema.schema")
    return schema


def _check_strict(schema: Any, param: str, path: str = "") -> None:
    """OpenAI's strict-mode rules: every object lists all its properties as required and allows no others."""
    if isinstance(schema, list):
        for i, s in enumerate(schema):
            _check_strict(s, param, f"{path}/{i}")
        return
    if not isinstance(schema, dict):
        return
    if "properties" in schema or schema.get("type") == "object":
        props = schema.get("properties") or {}
        missing = [p for p in props if p not in (schema.get("required") or [])]
        if missing:
            raise InvalidRequest(f"strict schema at '{path or '/'}': 'required' must list every property; "
                                 f"missing {missing}", param=param)
        if schema.get("additionalProperties", True) is not False:
            raise InvalidRequest(f"strict schema at '{path or '/'}': 'additionalProperties' must be false",
                                 param=param)
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            _check_strict(sub, param, f"{path}/{key}/{name}")
    for key in ("items", "anyOf", "allOf", "oneOf", "prefixItems"):
        if key in schema:
            _check_strict(schema[key], param, f"{path}/{key}")


def _instance(provider: str, schema: dict[str, Any], seed: str, param: str) -> Any:
    try:
        return instance(schema, seed)
    except Unsatisfiable as exc:
        raise refuse(provider, param, f"it cannot produce a value for this schema ({exc})") from None


def _text(message: Message) -> str:
    if isinstance(message.content, str):
        return message.content
    return " ".join(p.text or "" for p in message.content or ())


def _logprob(seed: str, i: int, alt: int = 0) -> float:
    h = int.from_bytes(hashlib.sha256(f"{seed}|lp|{i}".encode()).digest()[:4], "big")
    return -round((h % 2000) / 1000 + alt * 0.75, 4)


def _logprobs(tokens: list[str], seed: str, top: int) -> list[dict[str, Any]]:
    """OpenAI's per-token entries: the token, its log probability, its bytes and the ``top`` likeliest tokens."""
    out = []
    for i, token in enumerate(tokens):
        lp = _logprob(seed, i)
        alts = [token] + [w for w in _ALTERNATIVES if w != token.strip()][: max(0, top - 1)]
        out.append({"token": token, "logprob": lp, "bytes": list(token.encode()),
                    "top_logprobs": [{"token": t, "logprob": lp if j == 0 else _logprob(seed, i, j),
                                      "bytes": list(t.encode())} for j, t in enumerate(alts[:top])]})
    return out
