"""The response cache's rules without a bus: who gets a plan, what the key covers, vectors, the bounded index, a
cached answer replayed as chunks, and the semantic cache measured on the shipped paraphrase set."""

from __future__ import annotations

import math

import msgspec
import pytest

from services.workers.adapters.mock import vector_for
from services.workers.streaming import StreamAssembler, replay_chunks
from shared.cache import NOT_IN_KEY, cache_key, cosine, ineligible, pack, params_key, plan, unpack
from shared.canonical import ChatRequest, ChatResponse, Choice, FunctionCall, Message, ToolCall, Usage
from shared.events import Target
from shared.state.cache import IndexItem, SemanticIndex, added
from tests.fixtures.paraphrases import GROUPS, NEAR_MISSES, evaluate

TARGET = Target(deployment="mock/mock-1", provider="mock", model="mock-1", upstream_model="mock-1")


def request(**extra) -> ChatRequest:
    return msgspec.convert({"model": "mock-1", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                            **extra}, ChatRequest)


def plan_for(req: ChatRequest, header: str | None = None, mode: str = "exact", api: str = "chat.completions",
             **kw):
    args = dict(mode=mode, ttl_s=600, max_ttl_s=3600, similarity=0.9) | kw
    return plan(req, api, header, **args)


# ---- who gets a plan ----------------------------------------------------------------------------

def test_a_team_on_request_gets_no_plan_unless_the_request_asks():
    assert plan_for(request(), mode="request") is None
    assert plan_for(request(), "use", mode="request").mode == "use"
    assert plan_for(request(), "refresh", mode="request").mode == "refresh"
    assert plan_for(request(), "off", mode="request").mode == "bypass"


def test_a_team_with_the_cache_on_uses_it_unless_the_request_says_off():
    p = plan_for(request(), mode="semantic", similarity=0.8)
    assert (p.mode, p.semantic, p.similarity) == ("use", True, 0.8)
    assert plan_for(request(), "off").reason == "the request asked for no cache"


def test_off_for_the_team_or_the_operator_is_a_bypass_when_asked_and_nothing_otherwise():
    assert plan_for(request(), mode="off") is None
    assert plan_for(request(), "use", mode="off").mode == "bypass"
    assert plan_for(request(), "use", enabled=False).mode == "bypass"


def test_the_ttl_is_held_to_the_operators_ceiling():
    assert plan_for(request(), ttl_s=86400, max_ttl_s=3600).ttl_s == 3600
    assert plan_for(request(), ttl_s=60).ttl_s == 60


@pytest.mark.parametrize("extra, api, why", [
    ({"temperature": 0.7}, "chat.completions", "temperature 0 or a seed"),
    ({"temperature": None}, "chat.completions", "temperature 0 or a seed"),
    ({"n": 2}, "chat.completions", "n > 1"),
    ({}, "embeddings", "embeddings"),
])
def test_only_deterministic_enough_requests_are_eligible(extra, api, why):
    assert why in ineligible(request(**extra), api)
    assert plan_for(request(**extra), api=api).mode == "bypass"


def test_a_seed_makes_a_sampled_request_eligible():
    assert ineligible(request(temperature=0.7, seed=1), "chat.completions") == ""
    assert ineligible(request(n=1), "chat.completions") == ""


# ---- the key ------------------------------------------------------------------------------------

# One changed value per request field that can change the answer.
CHANGES = {
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0.5,
    "top_p": 0.5,
    "max_tokens": 10,
    "max_completion_tokens": 10,
    "stop": ["x"],
    "n": 1,
    "seed": 7,
    "presence_penalty": 1.0,
    "frequency_penalty": 1.0,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "top_logprobs": 2,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "none",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
}


def test_every_field_that_can_change_the_answer_is_in_the_key():
    keyed = set(ChatRequest.__struct_fields__) - NOT_IN_KEY
    assert keyed == set(CHANGES), "a new request field: decide whether it changes the answer (CHANGES/NOT_IN_KEY)"
    base = cache_key("t", "a", TARGET, request())
    for field, value in CHANGES.items():
        assert cache_key("t", "a", TARGET, request(**{field: value})) != base, field


def test_what_cannot_change_the_answer_is_not_in_the_key():
    base = cache_key("t", "a", TARGET, request())
    same = request(stream=True, stream_options={"include_usage": True}, user="u", metadata={"k": "v"},
                   switchyard={"headers": {"x-switchyard-preference": "cheap"}, "task": "chat"}, model="auto")
    assert cache_key("t", "a", TARGET, same) == base


def test_the_mocks_hints_are_in_the_key_because_they_change_its_answer():
    assert cache_key("t", "a", TARGET, request(switchyard={"mock": {"content": "x"}})) != \
        cache_key("t", "a", TARGET, request())


def test_tenants_teams_and_deployments_never_share_a_key():
    base = cache_key("t", "a", TARGET, request())
    assert cache_key("u", "a", TARGET, request()) != base
    assert cache_key("t", "b", TARGET, request()) != base
    for other in (msgspec.structs.replace(TARGET, deployment="mock/other"),
                  msgspec.structs.replace(TARGET, model="mock-2"),
                  msgspec.structs.replace(TARGET, upstream_model="mock-1-v2")):
        assert cache_key("t", "a", other, request()) != base


def test_the_parameters_key_ignores_the_messages_only():
    assert params_key("t", "a", TARGET, request()) == params_key("t", "a", TARGET, request(messages=CHANGES["messages"]))
    assert params_key("t", "a", TARGET, request()) != params_key("t", "a", TARGET, request(max_tokens=3))


# ---- vectors and the index ------------------------------------------------------------------------

def test_packed_vectors_keep_their_direction():
    for text in ("How do I reset my password?", "What is the capital of France?"):
        v = vector_for(text, 256)
        assert cosine(unpack(pack(v)), v) > 0.999
    assert cosine([1.0, 0.0], [1.0]) == 0.0  # another embeddings model: never similar


def test_mock_embeddings_put_paraphrases_close_and_other_questions_far():
    a, b = vector_for("How do I reset my password?", 256), vector_for("How can I reset my password?", 256)
    c = vector_for("What is the capital of France?", 256)
    assert math.isclose(math.fsum(x * x for x in a), 1.0)
    assert cosine(a, b) > 0.9 and cosine(a, c) < 0.3
    assert a != b  # different texts still embed differently
    assert vector_for("", 8) == vector_for("", 8) and len(vector_for("!!", 8)) == 8


def test_the_index_keeps_the_newest_live_items_within_its_bounds():
    def item(i: int, expires: float = 100.0, size: int = 10) -> IndexItem:
        return IndexItem(key=f"k{i}", params="p", vector="v" * size, expires_at=expires)

    index = SemanticIndex(items=[item(0, expires=5.0), item(1), item(2)])
    kept = added(index, item(3), now=10.0, bound=2)
    assert [i.key for i in kept.items] == ["k2", "k3"]  # k0 expired, k1 the oldest over the bound
    replaced = added(kept, item(2), now=10.0, bound=5)
    assert [i.key for i in replaced.items] == ["k3", "k2"]
    big = added(SemanticIndex(items=[item(i, size=400) for i in range(10)]), item(10, size=400), 0.0, 100,
                max_bytes=1000)
    assert [i.key for i in big.items] == ["k9", "k10"]


# ---- a cached answer replayed as a stream -----------------------------------------------------------

def test_replayed_chunks_fold_back_into_the_same_answer():
    response = ChatResponse(model="gpt-x", usage=Usage(prompt_tokens=9, completion_tokens=4), choices=[Choice(
        index=0, finish_reason="tool_calls", message=Message(role="assistant", content="Let me  look it up.",
                                                             tool_calls=[ToolCall(id="c1", function=FunctionCall(
                                                                 name="search", arguments='{"q": "x"}'))]))])
    chunks = replay_chunks(response)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage == response.usage
    assembler = StreamAssembler(request(), "gpt-x")
    for chunk in chunks:
        assembler.add(chunk)
    assert assembler.response() == response


# ---- the semantic cache on the paraphrase set --------------------------------------------------------

def test_the_paraphrase_set_is_what_the_docs_measure():
    assert len(GROUPS) == 20 and all(len(g) == 4 for g in GROUPS) and len(NEAR_MISSES) == 22


def test_semantic_hits_on_the_paraphrase_set_at_the_default_threshold():
    """docs/cache.md reports these figures (tools/cache_report.py prints them for every threshold)."""
    result = evaluate(lambda t: unpack(pack(vector_for(t, 256))), 0.9, cosine)
    assert result.wrong_hits == 0  # a paraphrase never gets another question's answer
    assert result.hit_rate >= 0.35 and result.false_hit_rate <= 0.02
    looser = evaluate(lambda t: unpack(pack(vector_for(t, 256))), 0.75, cosine)
    assert looser.hit_rate > result.hit_rate and looser.false_hit_rate > result.false_hit_rate


def test_the_report_tool_prints_a_row_per_threshold(capsys):
    from tools.cache_report import THRESHOLDS, main

    assert main([]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()[:4].replace(".", "").isdigit()]
    assert len(rows) == len(THRESHOLDS) and "40.0%" in next(r for r in rows if r.strip().startswith("0.90"))
