"""Prompt templates, pure: checked when an admin writes one, rendered into a request before it is published.

The language is logic-less and has one construct: ``{{name}}`` (spaces inside
the braces allowed) is replaced by the value of variable ``name``. There are
no sections, loops, partials, filters or expressions, so rendering cannot run
code, read files or loop; it is one pass, so a value that itself contains
``{{x}}`` is inserted as text and never rendered again. Every ``{{`` must open
a placeholder of a declared variable and every declared variable must be used
(both refused when the template is written).

Variables are typed (``string``, ``integer``, ``number``, ``boolean``); one
without a ``default`` is required. A request that misses a required variable,
gives one of the wrong type (or a string longer than its ``max_length``) or
names one the template does not declare gets a 400 naming it
(``param: switchyard.prompt.variables.<name>``).

A request references a template with ``"switchyard": {"prompt": {"id": ...,
"version": n, "variables": {...}}}`` (no version: the active one). The
rendered messages come first, then the request's own ``messages`` (a
conversation can go on after a templated system prompt); the template's
``model`` and ``parameters`` fill in what the request leaves out. The
reference is removed from the request, so the variables travel only as the
rendered text policy checks and redacts like any prompt.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from shared.canonical import ChatRequest
from shared.errors import InvalidRequest, NotFound
from shared.events import PromptRef
from shared.state.prompts import TemplateMessage, TemplateVersion, Variable

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
# What a template may set for the request: everything that shapes the answer, not the delivery or the bookkeeping.
PARAMETERS = frozenset(ChatRequest.__struct_fields__) - {"model", "messages", "stream", "stream_options",
                                                          "switchyard", "user", "metadata"}
VARIABLES_PARAM = "switchyard.prompt.variables"
MAX_MESSAGES = 64
MAX_VARIABLES = 64


class TemplateIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A template version as the admin API takes it (``id`` only when creating the template)."""

    messages: Annotated[list[TemplateMessage], Meta(min_length=1, max_length=MAX_MESSAGES)]
    variables: dict[str, Variable] = msgspec.field(default_factory=dict)
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    parameters: dict[str, Any] | None = None
    description: Annotated[str, Meta(max_length=1000)] = ""
    id: str | None = None
    tenant: str | None = None
    activate: bool = False  # a new version becomes the active one (a template's first version always does)


class PromptIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``switchyard.prompt`` object of a request."""

    id: str
    version: Annotated[int, Meta(ge=1)] | None = None
    variables: dict[str, Any] = msgspec.field(default_factory=dict)


def placeholders(content: str) -> list[str]:
    """The variable names ``content`` uses, in order; ValueError at a ``{{`` that opens no placeholder."""
    names, pos = [], 0
    while True:
        start = content.find("{{", pos)
        if start < 0:
            return names
        m = PLACEHOLDER.match(content, start)
        if m is None:
            raise ValueError(f"'{{{{' at character {start} opens no placeholder: write {{{{name}}}} with a "
                             f"variable name (letters, digits, _)")
        names.append(m.group(1))
        pos = m.end()


def _type_error(name: str, var: Variable, value: Any) -> str:
    """Why ``value`` does not fit ``var`` (empty when it does)."""
    kind = var.type
    ok = {"string": isinstance(value, str),
          "integer": isinstance(value, int) and not isinstance(value, bool),
          "number": isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value),
          "boolean": isinstance(value, bool)}[kind]
    if not ok:
        return f"variable '{name}' must be {'an' if kind == 'integer' else 'a'} {kind}, not {type(value).__name__}"
    if kind == "string" and var.max_length is not None and len(value) > var.max_length:
        return f"variable '{name}' is {len(value)} characters long; its limit is {var.max_length}"
    return ""


def check_template(t: TemplateIn) -> None:
    """Refuse a template that could not render (400 naming the field): stray ``{{``, undeclared or unused
    variables, defaults of the wrong type, parameters a request could not carry."""
    if len(t.variables) > MAX_VARIABLES:
        raise InvalidRequest(f"at most {MAX_VARIABLES} variables", param="variables")
    used: set[str] = set()
    for i, m in enumerate(t.messages):
        try:
            names = placeholders(m.content)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=f"messages[{i}].content") from None
        for name in names:
            if name not in t.variables:
                raise InvalidRequest(f"messages[{i}] uses {{{{{name}}}}}, which is not declared in variables",
                                     param=f"messages[{i}].content")
        used.update(names)
    for name, var in t.variables.items():
        if not PLACEHOLDER.fullmatch("{{" + name + "}}"):
            raise InvalidRequest(f"variable name '{name}' must be letters, digits and _ (not starting with a digit)",
                                 param=f"variables.{name}")
        if name not in used:
            raise InvalidRequest(f"variable '{name}' is declared but no message uses it", param=f"variables.{name}")
        if var.max_length is not None and var.type != "string":
            raise InvalidRequest(f"max_length applies to string variables only", param=f"variables.{name}")
        if var.default is not None:
            why = _type_error(name, var, var.default)
            if why:
                raise InvalidRequest(f"default of {why}", param=f"variables.{name}.default")
    if t.parameters:
        unknown = sorted(set(t.parameters) - PARAMETERS)
        if unknown:
            raise InvalidRequest(f"parameters may not set {', '.join(unknown)}; allowed: {', '.join(sorted(PARAMETERS))}",
                                 param="parameters")
        try:
            msgspec.convert({"model": "x", "messages": [{"role": "user", "content": "x"}], **t.parameters},
                            ChatRequest)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"parameters: {exc}", param="parameters") from None


def version_of(t: TemplateIn, tenant: str, template: str, created_by: str) -> TemplateVersion:
    """The version to store (its number is given by the store)."""
    return TemplateVersion(tenant=tenant, id=template, version=0, messages=t.messages, variables=t.variables,
                           model=t.model, parameters=t.parameters or None, description=t.description,
                           created_by=created_by)


def bind(version: TemplateVersion, given: dict[str, Any]) -> dict[str, str]:
    """Every variable's text for rendering: given values type-checked, defaults filled in (400 naming the one at
    fault)."""
    for name in given:
        if name not in version.variables:
            raise InvalidRequest(f"prompt '{version.id}' version {version.version} has no variable '{name}'; it takes "
                                 f"{', '.join(sorted(version.variables)) or 'none'}",
                                 param=f"{VARIABLES_PARAM}.{name}", code="template_variable_unknown")
    out: dict[str, str] = {}
    for name, var in version.variables.items():
        value = given.get(name, var.default)
        if value is None:
            raise InvalidRequest(f"prompt '{version.id}' version {version.version} needs variable '{name}' "
                                 f"({var.type})", param=f"{VARIABLES_PARAM}.{name}", code="template_variable_missing")
        why = _type_error(name, var, value)
        if why:
            raise InvalidRequest(why, param=f"{VARIABLES_PARAM}.{name}", code="template_variable_invalid")
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def render(version: TemplateVersion, given: dict[str, Any]) -> list[dict[str, str]]:
    """The template's messages with every placeholder replaced, in one pass (values are never rendered again)."""
    values = bind(version, given)
    return [{"role": m.role, "content": PLACEHOLDER.sub(lambda mt: values[mt.group(1)], m.content)}
            for m in version.messages]


def prompt_reference(body: dict[str, Any]) -> PromptIn | None:
    """The request's ``switchyard.prompt``, validated; None when it has none."""
    ext = body.get("switchyard")
    if not isinstance(ext, dict) or "prompt" not in ext:
        return None
    try:
        return msgspec.convert(ext["prompt"], PromptIn)
    except msgspec.ValidationError as exc:
        text = str(exc)
        inner = text.split("at `$.", 1)[1].rstrip("`") if "at `$." in text else ""
        raise InvalidRequest(f"switchyard.prompt: {text.split(' - at ')[0]}",
                             param="switchyard.prompt" + (f".{inner}" if inner else "")) from None


def applied(body: dict[str, Any], version: TemplateVersion, given: dict[str, Any]) -> dict[str, Any]:
    """The request body with the template rendered in: its messages first, its model and parameters as defaults,
    and the reference (with its variables) removed."""
    out = dict(body)
    own = out.get("messages") or []
    if not isinstance(own, list):
        raise InvalidRequest("messages must be a list", param="messages")
    out["messages"] = render(version, given) + own
    if not out.get("model"):
        if not version.model:
            raise InvalidRequest(f"model is required: prompt '{version.id}' version {version.version} names none",
                                 param="model")
        out["model"] = version.model
    for key, value in (version.parameters or {}).items():
        out.setdefault(key, value)
    ext = {k: v for k, v in out["switchyard"].items() if k != "prompt"}
    if ext:
        out["switchyard"] = ext
    else:
        del out["switchyard"]
    return out


def missing(template: str, version: int | None) -> NotFound:
    if version is None:
        return NotFound(f"No prompt template '{template}'.", param="switchyard.prompt.id", code="prompt_not_found")
    return NotFound(f"Prompt template '{template}' has no version {version}.", param="switchyard.prompt.version",
                    code="prompt_version_not_found")


def reference(version: TemplateVersion) -> PromptRef:
    return PromptRef(id=version.id, version=version.version)
