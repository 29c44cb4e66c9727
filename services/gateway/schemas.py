"""The response bodies of the gateway's endpoints as JSON Schema, for the OpenAPI document (``openapi.py``).

Request bodies are published from the msgspec structs the endpoints decode
with, so the document and the validator cannot disagree. Responses are built
by hand-written renderers, so their shapes are stated here: the fields a
client relies on are required and typed; objects stay open
(``additionalProperties``), as OpenAI's own specification leaves them, so an
added field is never a schema violation.
"""

from __future__ import annotations

from typing import Any

STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
NUM: dict[str, Any] = {"type": "number"}
OBJ: dict[str, Any] = {"type": "object"}
NULL_STR: dict[str, Any] = {"type": ["string", "null"]}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An open object with ``required`` properties (and ``optional`` ones typed when present)."""
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def list_of(item: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``{"object": "list", "data": [...]}``."""
    return obj({"object": {"const": "list"}, "data": {"type": "array", "items": item}})


ERROR = obj({"error": obj({"message": STR, "type": STR}, {"param": NULL_STR, "code": NULL_STR})})
ANTHROPIC_ERROR = obj({"type": {"const": "error"}, "error": obj({"type": STR, "message": STR})},
                      {"request_id": STR})
# /v1/messages answers errors in Anthropic's envelope; what fails before the endpoint runs (an unknown method,
# an unexpected fault) leaves in OpenAI's.
MESSAGES_ERROR = {"anyOf": [ANTHROPIC_ERROR, ERROR]}

USAGE = obj({"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT})
TOOL_CALL = obj({"id": STR, "type": STR, "function": obj({"name": STR, "arguments": STR})})
ASSISTANT_MESSAGE = obj({"role": STR, "content": NULL_STR},
                        {"tool_calls": {"type": "array", "items": TOOL_CALL}, "refusal": NULL_STR})
LOGPROBS = {"type": ["object", "null"]}
SWITCHYARD = obj({"request_id": STR, "provider": STR, "model": STR})

CHAT_COMPLETION = obj({
    "id": STR, "object": {"const": "chat.completion"}, "created": INT, "model": STR,
    "choices": {"type": "array", "items": obj({"index": INT, "message": ASSISTANT_MESSAGE,
                                               "finish_reason": NULL_STR, "logprobs": LOGPROBS})},
    "usage": USAGE,
}, {"switchyard": SWITCHYARD, "system_fingerprint": STR})

TEXT_COMPLETION = obj({
    "id": STR, "object": {"const": "text_completion"}, "created": INT, "model": STR,
    "choices": {"type": "array", "items": obj({"text": STR, "index": INT, "finish_reason": NULL_STR,
                                               "logprobs": LOGPROBS})},
    "usage": USAGE,
}, {"switchyard": SWITCHYARD})

CONTENT_BLOCK = obj({"type": STR}, {"text": STR, "id": STR, "name": STR, "input": OBJ})
MESSAGE = obj({
    "id": STR, "type": {"const": "message"}, "role": {"const": "assistant"}, "model": STR,
    "content": {"type": "array", "items": CONTENT_BLOCK}, "stop_reason": NULL_STR, "stop_sequence": NULL_STR,
    "usage": obj({"input_tokens": INT, "output_tokens": INT}),
})
COUNT_TOKENS = obj({"input_tokens": INT})

EMBEDDINGS = obj({
    "object": {"const": "list"}, "model": STR,
    "data": {"type": "array", "items": obj({"object": {"const": "embedding"}, "index": INT,
                                            "embedding": {"anyOf": [{"type": "array", "items": NUM}, STR]}})},
    "usage": obj({"prompt_tokens": INT, "total_tokens": INT}),
}, {"switchyard": SWITCHYARD})

MODEL = obj({"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR})
MODEL_LIST = list_of(MODEL)

JOB = obj({"id": STR, "object": {"const": "job"}, "model": STR,
           "status": {"enum": ["queued", "in_progress", "completed", "failed", "cancelled", "expired"]},
           "created_at": INT},
          {"result": {"type": ["object", "null"]}, "error": {"type": ["object", "null"]}})

TRACE = obj({"id": STR, "object": {"const": "request.trace"}, "status": STR, "model": NULL_STR})
LEDGER = OBJ
KEY = obj({"object": {"const": "api_key"}, "id": STR, "status": STR})
NEW_KEY = obj({"object": {"const": "api_key"}, "id": STR, "key": STR})
KEY_LIST = list_of(KEY)
TEAM = obj({"name": STR})
TEAM_LIST = list_of(TEAM)
BUDGET = OBJ
PURGE = obj({"object": {"const": "cache.purge"}, "tenant": STR, "team": STR, "purged": {"type": "boolean"}})
PROMPT = obj({"id": STR})
PROMPT_LIST = list_of(PROMPT)
PROMPT_VERSION = obj({"version": INT})
PROVIDER_STATUS = list_of(OBJ)
BREAKER = list_of(OBJ)
