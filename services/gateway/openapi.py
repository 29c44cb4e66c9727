"""The OpenAPI document, built from the route table: what each endpoint takes, answers and may fail with.

Each ``Route`` names its request body (the msgspec struct its handler decodes
with, so the document and the validator agree), its success body (a JSON
Schema from ``schemas``), whether it can stream (``text/event-stream``), and
the error statuses it returns (every one declared, with the error envelope of
its dialect). The document declares a bearer security scheme (the API key or
an OIDC token; ``x-api-key`` is accepted too) that applies to every endpoint
except the unauthenticated ops ones, and replaces FastAPI's own 422
validation schema, which this gateway never sends (it answers 400 in OpenAI's
shape).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import msgspec
from fastapi import FastAPI

from services.gateway import schemas

if TYPE_CHECKING:
    from services.gateway.app import Route

# What any authenticated endpoint may answer besides its success: bad input, no or a bad key, a key that may not,
# not found, too large, rate limited or over budget, and the gateway's own trouble.
ERRORS = (400, 401, 403, 404, 413, 429, 500, 503)
# ... and what an endpoint that runs a completion adds: a constraint no candidate meets, a provider failure,
# the deadline.
COMPLETION_ERRORS = (*ERRORS, 402, 409, 422, 502, 504)
REASONS = {400: "Bad request", 401: "Missing or invalid API key", 402: "Budget exhausted", 403: "Not permitted",
           404: "Not found", 405: "Method not allowed", 409: "Conflict", 413: "Body too large",
           422: "No candidate meets the request's constraints", 429: "Rate limited or quota exhausted",
           500: "Internal error", 502: "Provider failed", 503: "Unavailable; retry later", 504: "Deadline passed"}
UNAUTHENTICATED = frozenset({"/healthz", "/readyz", "/metrics", "/livez"})
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "A Switchyard API key (sk-...) or, where OIDC issuers are configured, a bearer JWT."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
               "description": "The same API key, as Anthropic's SDK sends it."},
}


def operation_extra(route: "Route") -> dict[str, Any] | None:
    """The OpenAPI operation fields a route states about itself (merged over FastAPI's own)."""
    out: dict[str, Any] = {}
    if route.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}}}
    error = schemas.MESSAGES_ERROR if route.anthropic else schemas.ERROR
    responses: dict[str, Any] = {}
    if route.returns is not None or route.streams:
        content: dict[str, Any] = {}
        if route.returns is not None:
            content["application/json"] = {"schema": route.returns}
        if route.streams:
            content["text/event-stream"] = {"schema": {"type": "string", "description": "server-sent events"}}
        ok = str(route.status_code or 200)
        responses[ok] = {"description": "OK" if ok == "200" else "Created" if ok == "201" else "Accepted",
                         "content": content}
    for status in route.errors:
        responses[str(status)] = {"description": REASONS.get(status, "Error"),
                                  "content": {"application/json": {"schema": error}}}
    if responses:
        out["responses"] = responses
    if route.openapi_extra:
        out = _merged(out, route.openapi_extra)
    return out or None


def install_openapi(app: FastAPI, routes: Iterable["Route"]) -> None:
    """Publish the request structs' schemas, the security schemes, and no schema the gateway does not send."""
    bodies = sorted({r.body for r in routes if r.body is not None}, key=lambda t: t.__name__)
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = original()
        _, components = msgspec.json.schema_components(bodies, ref_template="#/components/schemas/{name}")
        comp = doc.setdefault("components", {})
        comp.setdefault("schemas", {}).update(components)
        if "Message" in comp["schemas"]:
            comp["schemas"]["Message"] = message_by_role(comp["schemas"]["Message"])
        _state_refusals(comp["schemas"])
        for unused in ("HTTPValidationError", "ValidationError"):
            comp["schemas"].pop(unused, None)
        comp["securitySchemes"] = SECURITY_SCHEMES
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
        for path, item in doc.get("paths", {}).items():
            for operation in item.values():
                responses = operation.get("responses", {})
                if "422" in responses and "HTTPValidationError" in str(responses["422"]):
                    # FastAPI's validation errors are answered as 400 in OpenAI's shape (install_error_handlers)
                    responses["422"] = {"description": REASONS[422],
                                        "content": {"application/json": {"schema": schemas.ERROR}}}
                    responses.setdefault("400", {"description": REASONS[400],
                                                 "content": {"application/json": {"schema": schemas.ERROR}}})
                if path in UNAUTHENTICATED:
                    operation["security"] = []
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def message_by_role(schema: dict[str, Any]) -> dict[str, Any]:
    """A chat message as one variant per role, so the document states what the gateway checks: a ``tool`` message
    needs its ``tool_call_id`` (policy refuses one without), other roles do not."""
    props = schema.get("properties", {})
    variants = []
    for role in ("system", "developer", "user", "assistant", "tool", "function"):
        own = {**props, "role": {"type": "string", "const": role}}
        required = ["role"]
        if role == "tool":
            own["tool_call_id"] = {"type": "string", "minLength": 1}
            required.append("tool_call_id")
        variants.append({"type": "object", "title": f"{role} message", "properties": own, "required": required})
    return {"description": schema.get("description", "One chat message."), "oneOf": variants}


# Request fields whose accepted values a struct's type cannot say; the document says them, so a request valid by
# the document is not refused for them.
_EMBEDDING_INPUT = {"anyOf": [
    {"type": "string", "minLength": 1},
    {"type": "array", "minItems": 1, "items": {"type": "string"}},
    {"type": "array", "minItems": 1, "items": {"type": "integer"}},
    {"type": "array", "minItems": 1, "items": {"type": "array", "items": {"type": "integer"}}}],
    "description": "a text, texts, token ids, or lists of token ids (one kind per request)"}
_MESSAGES_REFUSED = ("top_k", "mcp_servers", "container", "inference_geo")


# Which content blocks each role's turn may hold on /v1/messages (anthropic_format refuses the others).
_TURN_BLOCKS = {"user": ("_Text", "_Image", "_Document", "_ToolResult", "_Thinking", "_RedactedThinking"),
                "assistant": ("_Text", "_ToolUse", "_Thinking", "_RedactedThinking")}


def _turns_by_role(message: dict[str, Any]) -> dict[str, Any]:
    variants = []
    for role, blocks in _TURN_BLOCKS.items():
        refs = [{"$ref": f"#/components/schemas/{b}"} for b in blocks]
        variants.append({"type": "object", "title": f"{role} turn", "required": ["role", "content"], "properties": {
            "role": {"type": "string", "const": role},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": refs}}]}}})
    return {"description": message.get("description", "One turn of the conversation."), "oneOf": variants}


def _state_refusals(found: dict[str, Any]) -> None:
    if "_Message" in found:
        found["_Message"] = _turns_by_role(found["_Message"])
    if "type" in found.get("_Tool", {}).get("properties", {}):  # server tools (web search ...) are refused
        found["_Tool"]["properties"]["type"] = {"anyOf": [{"const": "custom"}, {"type": "null"}]}
    if "_ToolChoice" in found:  # {"type": "tool"} names the tool
        found["_ToolChoice"].update({"if": {"properties": {"type": {"const": "tool"}}, "required": ["type"]},
                                     "then": {"required": ["type", "name"],
                                              "properties": {"name": {"type": "string", "minLength": 1}}}})
    if "effort" in found.get("_OutputConfig", {}).get("properties", {}):
        found["_OutputConfig"]["properties"]["effort"] = {"type": "null", "description": "not supported: refused"}
    if "EmbeddingRequest" in found:
        found["EmbeddingRequest"]["properties"]["input"] = _EMBEDDING_INPUT
    for name in ("MessagesRequest", "CountTokensRequest"):
        props = found.get(name, {}).get("properties", {})
        for field in _MESSAGES_REFUSED:  # refused with a 400 naming them (anthropic_format)
            if field in props:
                props[field] = {"type": "null", "description": "not supported by this gateway: refused when set"}
        if "speed" in props:
            props["speed"] = {"anyOf": [{"const": "standard"}, {"type": "null"}]}
        if "thinking" in props:
            props["thinking"] = {"anyOf": [{"type": "object", "properties": {"type": {"const": "disabled"}},
                                            "required": ["type"]}, {"type": "null"}],
                                 "description": "extended thinking is refused; only {\"type\": \"disabled\"}"}


def _merged(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merged(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out
