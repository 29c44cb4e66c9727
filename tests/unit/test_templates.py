"""Prompt templates without a bus: the one construct of the language, what a template must satisfy, how a request
is rendered and merged, and the errors that name the variable at fault."""

from __future__ import annotations

import msgspec
import pytest

from services.gateway import templates as t
from shared.errors import InvalidRequest
from shared.state.prompts import TemplateMessage, TemplateVersion, Variable


def version(content: str = "Hello {{name}}, you are {{age}}.", **variables: Variable) -> TemplateVersion:
    return TemplateVersion(tenant="acme", id="greet", version=3,
                           messages=[TemplateMessage(role="user", content=content)],
                           variables=variables or {"name": Variable(), "age": Variable(type="integer", default=30)})


def template_in(**fields) -> t.TemplateIn:
    return msgspec.convert({"messages": [{"role": "user", "content": "{{x}}"}], "variables": {"x": {}}, **fields},
                           t.TemplateIn)


def test_placeholders_are_the_only_construct():
    assert t.placeholders("a {{x}} b {{ y_2 }} {{x}}") == ["x", "y_2", "x"]
    assert t.placeholders("JSON like {\"a\": {\"b\": 1}} is fine") == []
    for bad in ("{{#section}}x{{/section}}", "{{> partial}}", "{{x.y}}", "{{ }}", "{{x", "{{{x}}}"):
        with pytest.raises(ValueError):
            t.placeholders(bad)


def test_rendering_fills_defaults_and_types_and_never_renders_a_value_again():
    assert t.render(version(), {"name": "{{age}}"}) == [{"role": "user", "content": "Hello {{age}}, you are 30."}]
    flags = version("{{on}} {{ratio}}", on=Variable(type="boolean"), ratio=Variable(type="number"))
    assert t.render(flags, {"on": False, "ratio": 0.5})[0]["content"] == "false 0.5"


@pytest.mark.parametrize("given, code, name", [
    ({}, "template_variable_missing", "name"),
    ({"name": 1}, "template_variable_invalid", "name"),
    ({"name": "x", "age": "30"}, "template_variable_invalid", "age"),
    ({"name": "x", "age": 1.5}, "template_variable_invalid", "age"),
    ({"name": "x", "age": False}, "template_variable_invalid", "age"),
    ({"name": "x", "mood": "ok"}, "template_variable_unknown", "mood"),
])
def test_a_binding_error_names_the_variable(given, code, name):
    with pytest.raises(InvalidRequest) as exc:
        t.bind(version(), given)
    assert exc.value.code == code and exc.value.param == f"switchyard.prompt.variables.{name}"
    assert name in str(exc.value)


def test_a_string_longer_than_its_limit_is_refused():
    v = version("{{s}}", s=Variable(max_length=3))
    assert t.render(v, {"s": "abc"})[0]["content"] == "abc"
    with pytest.raises(InvalidRequest, match="limit is 3"):
        t.render(v, {"s": "abcd"})


def test_applied_puts_the_template_first_and_fills_only_what_the_request_leaves_out():
    v = msgspec.structs.replace(version(), model="mock-1", parameters={"temperature": 0, "max_tokens": 9})
    body = {"switchyard": {"prompt": {"id": "greet"}, "task": "chat"}, "max_tokens": 4,
            "messages": [{"role": "user", "content": "more"}]}
    out = t.applied(body, v, {"name": "Ann"})
    assert out["messages"] == [{"role": "user", "content": "Hello Ann, you are 30."},
                               {"role": "user", "content": "more"}]
    assert (out["model"], out["temperature"], out["max_tokens"]) == ("mock-1", 0, 4)
    assert out["switchyard"] == {"task": "chat"}  # the reference and its variables are gone
    assert "switchyard" not in t.applied({"switchyard": {"prompt": {}}, "model": "m"}, version(), {"name": "x"})
    with pytest.raises(InvalidRequest, match="model is required"):
        t.applied({"switchyard": {"prompt": {}}}, version(), {"name": "x"})


def test_a_reference_is_validated():
    assert t.prompt_reference({"messages": []}) is None
    ref = t.prompt_reference({"switchyard": {"prompt": {"id": "greet", "version": 2, "variables": {"a": 1}}}})
    assert (ref.id, ref.version, ref.variables) == ("greet", 2, {"a": 1})
    for bad in ({"id": "greet", "version": 0}, {"version": 1}, {"id": "greet", "variables": []}, "greet"):
        with pytest.raises(InvalidRequest) as exc:
            t.prompt_reference({"switchyard": {"prompt": bad}})
        assert exc.value.param.startswith("switchyard.prompt")


@pytest.mark.parametrize("fields, param", [
    ({"messages": [{"role": "user", "content": "{{y}}"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "{{#if}}"}]}, "messages[0].content"),
    ({"variables": {"x": {}, "z": {}}}, "variables.z"),
    ({"variables": {"x": {"type": "integer", "default": "1"}}}, "variables.x.default"),
    ({"variables": {"x": {"type": "integer", "max_length": 3}}}, "variables.x"),
    ({"parameters": {"model": "other"}}, "parameters"),
    ({"parameters": {"top_p": 3}}, "parameters"),
])
def test_a_template_that_could_not_render_is_refused_naming_the_field(fields, param):
    with pytest.raises(InvalidRequest) as exc:
        t.check_template(template_in(**fields))
    assert exc.value.param == param


def test_a_good_template_passes():
    t.check_template(template_in(parameters={"temperature": 0, "response_format": {"type": "json_object"}},
                                 model="mock-1"))
