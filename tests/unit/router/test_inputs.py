"""What routing reads from a request: the task classifier, routing hints, and the gateway's header copy."""

from __future__ import annotations

import pytest

from services.gateway.handlers import with_routing_headers
from services.router.classifier import classify
from services.router.hints import parse_hints
from shared.canonical import ChatRequest, Message
from shared.errors import InvalidRequest
from tests.support.events import chat


@pytest.mark.parametrize("text, task", [
    ("Summarize the following article in three bullet points", "summarize"),
    ("tl;dr of this thread please", "summarize"),
    ("Is the sentiment of this review positive or negative?", "sentiment"),
    ("Rewrite this paragraph to be more formal", "rewrite"),
    ("Please proofread my cover letter", "rewrite"),
    ("Write a Python function that parses ISO dates", "code"),
    ("```\nTraceback (most recent call last):\n```\nwhy does this fail?", "code"),
    ("Extract the invoice number and total as JSON", "extraction"),
    ("Translate this sentence into French", "translate"),
    ("Classify this ticket into one of: billing, bug, feature", "classify"),
    ("Compare the trade-offs of Kafka and NATS for event sourcing", "analysis"),
    ("Hi! How are you today?", "chat"),
])
def test_classifier_table(text, task):
    found = classify(chat("auto", text=text))
    assert found.task == task
    assert all("#" in s for s in found.signals)  # cue ids, never the prompt's words


def test_classifier_uses_request_shape_and_is_deterministic():
    tools = chat("auto", text="what's the weather", tools=[{"type": "function", "function": {"name": "weather"}}])
    assert classify(tools).task == "tools"
    js = chat("auto", text="give me the fields", response_format={"type": "json_object"})
    assert classify(js).task == "extraction"
    long = "Summarize: " + "blah " * 100_000
    assert classify(chat("auto", text=long)) == classify(chat("auto", text=long))


def test_hints_from_body_and_headers():
    h = parse_hints({"task": "Code", "preference": "fast", "max_cost_usd": 0.1, "capabilities": ["json"],
                     "allowed_providers": ["openai"], "denied_providers": "mistral,groq",
                     "headers": {"x-switchyard-preference": "cheap", "x-switchyard-max-latency-ms": "900"}})
    assert (h.task, h.preference, h.max_cost_usd, h.max_latency_ms) == ("code", "fast", 0.1, 900.0)
    assert h.capabilities == {"json"} and h.allowed_providers == {"openai"}
    assert h.denied_providers == {"mistral", "groq"}
    assert h.constraints()["max_latency_ms"] == 900.0
    assert parse_hints(None) == parse_hints({})


@pytest.mark.parametrize("ext", [
    {"max_cost_usd": -1}, {"max_latency_ms": "soon"}, {"preference": "wild"}, {"strategy": "dice"},
    {"capabilities": ["x-ray"]}, {"weights": {"cost": -1}}, {"weights": {"cost": 0}}, {"task": ""},
    {"headers": {"x-switchyard-max-cost-usd": "free"}},
])
def test_bad_hints_are_refused(ext):
    with pytest.raises(InvalidRequest):
        parse_hints(ext)


def test_gateway_copies_only_switchyard_headers_into_the_extension():
    req = ChatRequest(model="auto", messages=[Message(role="user", content="x")], switchyard={"mock": {"a": 1}})
    out = with_routing_headers(req, {"Authorization": "Bearer sk-secret", "X-Switchyard-Task": "code",
                                     "x-switchyard-timeout": "5", "x-request-id": "r"})
    assert out.switchyard == {"mock": {"a": 1}, "headers": {"x-switchyard-task": "code"}}
    assert with_routing_headers(req, {"accept": "x"}) is req
    assert parse_hints(out.switchyard).task == "code"
