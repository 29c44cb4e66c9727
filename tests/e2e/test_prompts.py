"""Prompt templates through the whole pipeline: the admin API's versions, requests rendered before policy (so PII
in a variable is redacted before the provider sees it), 400s naming the variable at fault, and traces that name
the template version but hold none of its text."""

from __future__ import annotations

import json

import pytest

from tests.fakes.providers import FakeProviders
from tests.support.api import poll_job, wait_trace
from tests.support.governance import bearer, make_key, make_team
from tests.support.system import OTHER_TENANT_KEY
from tests.support.upstream import system_on_fake_upstream

SUMMARIZE = {
    "id": "summarize",
    "description": "summaries for support",
    "messages": [{"role": "system", "content": "You summarise in {{ words }} words."},
                 {"role": "user", "content": "Summarise this for {{audience}}: {{text}}"}],
    "variables": {"text": {"type": "string", "max_length": 2000}, "words": {"type": "integer", "default": 50},
                  "audience": {"type": "string", "default": "an engineer"}},
    "model": "up-1",
    "parameters": {"temperature": 0, "max_tokens": 40},
}


@pytest.fixture(scope="module")
async def prompted(tmp_path_factory):
    async with system_on_fake_upstream(tmp_path_factory.mktemp("prompts")) as (system, fakes):
        await make_team(system.http, "writers", pii_action="redact")
        member = (await make_key(system.http, "writers"))[0]
        r = await system.http.post("/v1/admin/prompts", json=SUMMARIZE)
        assert r.status_code == 201, r.text
        yield system, fakes, member


def ref(variables: dict, version: int | None = None, template: str = "summarize") -> dict:
    prompt: dict = {"id": template, "variables": variables}
    if version is not None:
        prompt["version"] = version
    return {"switchyard": {"prompt": prompt}}


async def chat(system, key: str, payload: dict):
    return await system.http.post("/v1/chat/completions", json=payload, headers=bearer(key))


def upstream_messages(fakes: FakeProviders) -> list[dict]:
    return fakes.last("openai").json["messages"]


async def test_a_request_is_rendered_from_the_active_version_with_its_model_and_parameters(prompted):
    system, fakes, member = prompted
    fakes.reset()
    r = await chat(system, member, ref({"text": "the release moved to May"}))
    assert r.status_code == 200, r.text
    sent = fakes.last("openai").json
    assert sent["messages"] == [
        {"role": "system", "content": "You summarise in 50 words."},
        {"role": "user", "content": "Summarise this for an engineer: the release moved to May"}]
    # (the OpenAI adapter sends the output cap as max_completion_tokens)
    assert sent["max_completion_tokens"] == 40 and sent["temperature"] == 0 and sent["model"] == "gpt-up"
    trace = await wait_trace(system, r.headers["x-request-id"], "succeeded")
    assert trace["prompt"] == {"id": "summarize", "version": 1}
    assert "release moved" not in json.dumps(trace)  # neither the variables nor the rendered text
    # The request's own fields win over the template's, and its messages follow the rendered ones.
    r = await chat(system, member, {**ref({"text": "t", "words": 9, "audience": "a lawyer"}), "max_tokens": 5,
                                    "messages": [{"role": "user", "content": "and keep it formal"}]})
    assert r.status_code == 200, r.text
    sent = fakes.last("openai").json
    assert sent["max_completion_tokens"] == 5 and [m["content"] for m in sent["messages"]] == [
        "You summarise in 9 words.", "Summarise this for a lawyer: t", "and keep it formal"]


async def test_versions_are_kept_and_the_active_one_is_chosen(prompted):
    system, fakes, member = prompted
    http = system.http
    v2 = {**{k: v for k, v in SUMMARIZE.items() if k != "id"},
          "messages": [{"role": "user", "content": "TL;DR of {{text}} in {{words}} words for {{audience}}"}]}
    r = await http.post("/v1/admin/prompts/summarize/versions", json=v2)
    assert r.status_code == 201, r.text
    assert r.json()["version"]["version"] == 2 and r.json()["active_version"] == 1
    fakes.reset()
    assert (await chat(system, member, ref({"text": "x"}))).status_code == 200
    assert upstream_messages(fakes)[0]["content"] == "You summarise in 50 words."  # still version 1
    assert (await chat(system, member, ref({"text": "x"}, version=2))).status_code == 200
    assert upstream_messages(fakes) == [{"role": "user", "content": "TL;DR of x in 50 words for an engineer"}]
    r = await http.post("/v1/admin/prompts/summarize/active", json={"version": 2})
    assert r.status_code == 200 and r.json()["active_version"] == 2
    r = await chat(system, member, ref({"text": "y"}))
    assert upstream_messages(fakes)[0]["content"].startswith("TL;DR of y")
    trace = await wait_trace(system, r.headers["x-request-id"], "succeeded")
    assert trace["prompt"] == {"id": "summarize", "version": 2}
    listed = (await http.get("/v1/admin/prompts")).json()["data"]
    assert [(p["id"], p["latest_version"], p["active_version"]) for p in listed] == [("summarize", 2, 2)]
    one = (await http.get("/v1/admin/prompts/summarize")).json()
    assert one["active"]["version"] == 2 and one["active"]["messages"] == v2["messages"]
    first = (await http.get("/v1/admin/prompts/summarize/versions/1")).json()
    assert first["messages"] == SUMMARIZE["messages"] and first["variables"]["words"]["default"] == 50
    assert (await http.get("/v1/admin/prompts/summarize/versions/9")).status_code == 404
    assert (await http.post("/v1/admin/prompts/summarize/active", json={"version": 9})).status_code == 404
    assert (await http.post("/v1/admin/prompts", json=SUMMARIZE)).status_code == 409
    await http.post("/v1/admin/prompts/summarize/active", json={"version": 1})


@pytest.mark.parametrize("variables, code, param", [
    ({}, "template_variable_missing", "text"),
    ({"text": 42}, "template_variable_invalid", "text"),
    ({"text": "x", "words": "ten"}, "template_variable_invalid", "words"),
    ({"text": "x", "words": True}, "template_variable_invalid", "words"),
    ({"text": "x" * 2001}, "template_variable_invalid", "text"),
    ({"text": "x", "tone": "dry"}, "template_variable_unknown", "tone"),
])
async def test_a_rendering_error_is_a_400_naming_the_variable(prompted, variables, code, param):
    system, fakes, member = prompted
    fakes.reset()
    r = await chat(system, member, ref(variables))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == f"switchyard.prompt.variables.{param}"
    assert param in error["message"]
    assert fakes.requests_to("openai") == []


async def test_unknown_templates_and_versions_and_other_tenants(prompted):
    system, _, member = prompted
    r = await chat(system, member, ref({"text": "x"}, template="nope"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "prompt_not_found"
    r = await chat(system, member, ref({"text": "x"}, version=7))
    assert r.status_code == 404 and r.json()["error"]["code"] == "prompt_version_not_found"
    r = await chat(system, OTHER_TENANT_KEY, ref({"text": "x"}))  # another tenant cannot see it
    assert r.status_code == 404 and r.json()["error"]["code"] == "prompt_not_found"
    r = await chat(system, member, {"switchyard": {"prompt": {"id": "summarize", "variables": [], "x": 1}}})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("switchyard.prompt")
    assert (await system.http.get("/v1/admin/prompts", headers=bearer(member))).status_code == 403


async def test_pii_in_a_variable_is_redacted_before_the_provider_sees_it(prompted):
    system, fakes, member = prompted
    fakes.reset()
    r = await chat(system, member, ref({"text": "mail jane.doe@example.com about the outage"}))
    assert r.status_code == 200, r.text
    assert "email" in r.headers["x-switchyard-redactions"].lower()
    sent = json.dumps(upstream_messages(fakes))
    assert "jane.doe@example.com" not in sent and "<EMAIL_1> about the outage" in sent
    trace = await wait_trace(system, r.headers["x-request-id"], "succeeded")
    assert {k.lower(): n for k, n in trace["admission"]["pii"].items()}.get("email") == 1
    assert "jane.doe" not in json.dumps(trace)


async def test_a_value_is_inserted_as_text_and_never_rendered_again(prompted):
    system, fakes, member = prompted
    fakes.reset()
    r = await chat(system, member, ref({"text": "{{audience}} {{ text }} {{#each}}", "audience": "ops"}))
    assert r.status_code == 200, r.text
    assert upstream_messages(fakes)[1]["content"] == "Summarise this for ops: {{audience}} {{ text }} {{#each}}"


async def test_a_job_can_reference_a_template(prompted):
    system, fakes, member = prompted
    fakes.reset()
    r = await system.http.post("/v1/jobs", json=ref({"text": "queued text"}), headers=bearer(member))
    assert r.status_code == 202, r.text
    job = await poll_job(system, r.json()["id"], key=member)
    assert job["status"] == "completed"
    assert upstream_messages(fakes)[1]["content"] == "Summarise this for an engineer: queued text"


@pytest.mark.parametrize("change, param", [
    ({"messages": [{"role": "user", "content": "{{missing}}"}], "variables": {}}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "{{ 1bad }}"}], "variables": {}}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}], "variables": {"unused": {}}}, "variables.unused"),
    ({"variables": {**SUMMARIZE["variables"], "words": {"type": "integer", "default": "x"}}},
     "variables.words.default"),
    ({"parameters": {"stream": True}}, "parameters"),
    ({"parameters": {"temperature": 9}}, "parameters"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
])
async def test_a_template_that_could_not_render_is_refused(prompted, change, param):
    system, _, _ = prompted
    r = await system.http.post("/v1/admin/prompts", json={**SUMMARIZE, "id": "broken", **change})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_other_apis_refuse_a_template_rather_than_pass_it_on(prompted):
    system, fakes, member = prompted
    fakes.reset()
    r = await system.http.post("/v1/messages", headers={**bearer(member), "anthropic-version": "2023-06-01"},
                               json={"model": "up-1", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
                                     **ref({"text": "x"})})
    assert r.status_code == 400 and "chat completions" in r.json()["error"]["message"]  # Anthropic's error shape
    assert fakes.requests_to("openai") == []
