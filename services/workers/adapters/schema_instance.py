"""A small, deterministic instance of a JSON Schema: what the mock provider answers when a client asks for tool
arguments or structured output.

It covers what function-calling and structured-output clients send (OpenAI
strict schemas, pydantic's ``model_json_schema``, zod): ``type`` (also as a
list), ``properties``/``required``, ``items``/``prefixItems``, ``enum`` and
``const``, ``anyOf``/``oneOf`` (the first option that can be produced),
``allOf`` (merged), local ``$ref`` (``#/$defs/...``, ``#/definitions/...``),
numeric bounds and ``multipleOf``, string lengths, common ``format``s and
simple ``pattern``s (a handful of candidates is tried). A schema it cannot
satisfy raises ``Unsatisfiable`` with the JSON pointer of the part, so the
caller can refuse the request instead of answering something invalid.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

MAX_DEPTH = 16
_WORDS = ("track", "signal", "switch", "route", "yard", "freight", "junction", "platform", "engine", "depot")
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "time": "12:00:00Z", "duration": "P1D",
    "email": "mock@example.com", "idn-email": "mock@example.com", "hostname": "example.com",
    "idn-hostname": "example.com", "ipv4": "192.0.2.1", "ipv6": "2001:db8::1", "uri": "https://example.com/",
    "uri-reference": "https://example.com/", "iri": "https://example.com/", "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000", "json-pointer": "/mock", "regex": "^mock$",
}


class Unsatisfiable(ValueError):
    """The schema (at ``path``) asks for something this generator cannot produce."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path or '/'}: {why}")
        self.path = path


def instance(schema: Any, seed: str = "") -> Any:
    """A value valid against ``schema``; the same schema and seed always give the same value."""
    return _Gen(schema, seed).value(schema, "", 0)


class _Gen:
    def __init__(self, root: Any, seed: str) -> None:
        self.root = root
        self.seed = seed
        self.variant = 0  # > 0 while making the n-th item of an array whose items must differ

    def _pick(self, path: str, n: int) -> int:
        return hashlib.sha256(f"{self.seed}|{path}".encode()).digest()[0] % n

    def _resolve(self, ref: str, path: str) -> Any:
        if not ref.startswith("#"):
            raise Unsatisfiable(path, f"only local $ref are followed, not {ref!r}")
        node = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise Unsatisfiable(path, f"$ref {ref!r} does not resolve")
            node = node[part]
        return node

    def value(self, schema: Any, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise Unsatisfiable(path, "the schema nests deeper than the generator follows")
        if schema is True or schema is None:
            return self._string({}, path)
        if schema is False:
            raise Unsatisfiable(path, "the schema 'false' admits no value")
        if not isinstance(schema, dict):
            raise Unsatisfiable(path, "a schema must be an object or a boolean")
        if "$ref" in schema:
            rest = {k: v for k, v in schema.items() if k not in ("$ref", "$defs", "definitions")}
            target = self._resolve(schema["$ref"], path)
            return self.value(_merge(target, rest) if rest else target, path, depth + 1)
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = _merge(merged, self._deref(part, path))
            return self.value(merged, path, depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                base = {k: v for k, v in schema.items() if k != key}
                errors = []
                for option in schema[key]:
                    try:
                        return self.value(_merge(base, self._deref(option, path)), path, depth + 1)
                    except Unsatisfiable as exc:
                        errors.append(str(exc))
                raise Unsatisfiable(path, f"no option of {key} can be produced ({'; '.join(errors)})")
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or ["null"]
            kind = kinds[0]
        if kind is None:
            if "properties" in schema or "required" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                kind = "string"
        make = getattr(self, "_" + str(kind), None)
        if make is None:
            raise Unsatisfiable(path, f"unknown type {kind!r}")
        return make(schema, path, depth) if kind in ("object", "array") else make(schema, path)

    def _deref(self, schema: Any, path: str) -> Any:
        while isinstance(schema, dict) and "$ref" in schema and len(schema) == 1:
            schema = self._resolve(schema["$ref"], path)
        return schema

    def _null(self, schema: dict, path: str) -> None:
        return None

    def _boolean(self, schema: dict, path: str) -> bool:
        return True

    def _integer(self, schema: dict, path: str) -> int:
        lo, hi = _bounds(schema, integer=True)
        step = schema.get("multipleOf")
        value = 1 if lo <= 1 <= hi else (lo if lo != -math.inf else hi)
        if self.variant and value + self.variant * (step or 1) <= hi:
            value += self.variant * (step or 1)
        if step:
            value = math.ceil(value / step) * step if lo != -math.inf else math.floor(value / step) * step
            value = int(value) if float(value).is_integer() else value
        if not lo <= value <= hi or (step and value % step):
            raise Unsatisfiable(path, "no integer meets the bounds")
        return int(value)

    def _number(self, schema: dict, path: str) -> float | int:
        lo, hi = _bounds(schema, integer=False)
        step = schema.get("multipleOf")
        value: float = 1.5 if lo <= 1.5 <= hi else (lo if lo != -math.inf else hi)
        if self.variant and value + self.variant <= hi:
            value += self.variant
        if step:
            value = math.ceil(value / step) * step
        if not lo <= value <= hi:
            raise Unsatisfiable(path, "no number meets the bounds")
        return value

    def _string(self, schema: dict, path: str) -> str:
        lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
        fmt = schema.get("format")
        word = _WORDS[self._pick(path, len(_WORDS))]
        candidates = [_FORMATS[fmt]] if fmt in _FORMATS else []
        if self.variant:
            v = self.variant
            candidates = [f"00000000-0000-4000-8000-{v:012d}"] if fmt == "uuid" else \
                [f"mock{v}@example.com"] if fmt in ("email", "idn-email") else \
                [f"https://example.com/{v}"] if fmt in ("uri", "url", "iri", "uri-reference") else \
                [f"2026-01-{v % 28 + 1:02d}" + _FORMATS[fmt][10:]] if fmt in ("date", "date-time") else \
                [f"{word}{v}", f"{word} {v}", str(v)]
        candidates += [word, "mock " + word, "a", "A", "0", "1", "a1", "A1", "abc", "ABC", "123", "mock-1", "mock_1",
                       "Mock", "x@example.com", "2026-01-01"]
        pattern = schema.get("pattern")
        for text in candidates:
            if len(text) < lo:
                text = (text * (lo // max(1, len(text)) + 1))[:lo]
            if hi is not None and len(text) > int(hi):
                text = text[: int(hi)]
            if len(text) < lo:
                continue
            if pattern is None or re.search(pattern, text):
                return text
        raise Unsatisfiable(path, f"cannot produce a string matching pattern {pattern!r}" if pattern else
                            "no string meets the length bounds")

    def _array(self, schema: dict, path: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-2019: a tuple of schemas
            prefix, items = items, schema.get("additionalItems", {})
        lo = int(schema.get("minItems", 0))
        hi = schema.get("maxItems")
        want = max(lo, len(prefix), 1 if items is not False else 0)
        if hi is not None:
            want = min(want, int(hi))
        out = []
        outer = self.variant
        for i in range(want):
            sub = prefix[i] if i < len(prefix) else items
            if sub is False:
                break
            self.variant = outer * 1000 + i if schema.get("uniqueItems") else outer
            try:
                out.append(self.value(sub, f"{path}/{i}", depth + 1))
            finally:
                self.variant = outer
        if len(out) < lo:
            raise Unsatisfiable(path, f"needs {lo} items")
        if schema.get("uniqueItems") and len({_key(v) for v in out}) != len(out):
            out = out[:1] if lo <= 1 else out
            if len({_key(v) for v in out}) != len(out):
                raise Unsatisfiable(path, "cannot make the items unique")
        return out

    def _object(self, schema: dict, path: str, depth: int) -> dict[str, Any]:
        props: dict[str, Any] = schema.get("properties") or {}
        required = list(schema.get("required") or [])
        out: dict[str, Any] = {}
        for name in required:
            sub = props.get(name)
            if sub is None:
                extra = schema.get("additionalProperties", True)
                sub = extra if isinstance(extra, dict) else {}
                if extra is False:
                    raise Unsatisfiable(f"{path}/{name}", "required but not allowed by additionalProperties")
            out[name] = self.value(sub, f"{path}/{name}", depth + 1)
        for name, sub in props.items():  # minProperties: optional ones, in order, until there are enough
            if len(out) >= int(schema.get("minProperties", 0)):
                break
            if name not in out:
                out[name] = self.value(sub, f"{path}/{name}", depth + 1)
        return out


def _bounds(schema: dict, integer: bool) -> tuple[float, float]:
    lo, hi = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    eps = 1 if integer else 1e-6
    if xlo is True:  # draft 4: a flag on minimum
        lo += eps
    elif isinstance(xlo, (int, float)) and not isinstance(xlo, bool):
        lo = max(lo, xlo + eps)
    if xhi is True:
        hi -= eps
    elif isinstance(xhi, (int, float)) and not isinstance(xhi, bool):
        hi = min(hi, xhi - eps)
    if integer:
        lo = math.ceil(lo) if lo != -math.inf else lo
        hi = math.floor(hi) if hi != math.inf else hi
    return lo, hi


def _merge(a: Any, b: Any) -> Any:
    """Two schemas that must both hold, as one (properties and required united; other keywords: b's win)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return b if isinstance(b, dict) else a
    out = {**a, **b}
    if "properties" in a and "properties" in b:
        out["properties"] = {**a["properties"], **b["properties"]}
    if "required" in a and "required" in b:
        out["required"] = list(dict.fromkeys([*a["required"], *b["required"]]))
    return out


def _key(value: Any) -> str:
    return repr(value)
