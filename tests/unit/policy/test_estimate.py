"""Admission's estimate: the budget reservation (nano-USD, rounded up) and the tokens counted against TPM."""

from __future__ import annotations

from services.policy.handlers import estimate
from shared.canonical import ChatRequest, Message
from shared.catalog import ModelSpec


def model(name: str, inp: float, out: float, max_out: int) -> ModelSpec:
    return ModelSpec(name=name, input_per_mtok=inp, output_per_mtok=out, max_output_tokens=max_out,
                     deployments=[{"provider": "mock"}])


def chat(max_tokens: int | None = None, n: int | None = None) -> ChatRequest:
    return ChatRequest(model="auto", messages=[Message(role="user", content="hi")], max_tokens=max_tokens, n=n)


def test_reservation_covers_the_whole_cap_of_every_choice():
    m = model("m", 1.0, 2.0, 100)
    # 1000 × $1 + 100 × $2 for the first choice, 100 × $2 for the second: $0.0014
    assert estimate(chat(max_tokens=4000, n=2), [m], prompt_tokens=1000) == (1_400_000, 1000 + 200)


def test_reservation_takes_the_dearest_model_a_fallback_may_reach():
    cheap, dear = model("cheap", 0.1, 0.2, 1000), model("dear", 5.0, 15.0, 50)
    # cheap: 1000 × $0.1 + 1000 × $0.2 = $0.0003; dear: 1000 × $5 + 50 × $15 = $0.00575; TPM takes cheap's 1000
    assert estimate(chat(), [cheap, dear, cheap], prompt_tokens=1000) == (5_750_000, 2000)


def test_reservation_is_rounded_up_to_a_whole_nano_dollar():
    m = model("m", 0.0001, 0.0, 1)
    assert estimate(chat(), [m], prompt_tokens=3) == (1, 4)  # $3e-10 reserves 1 nano-USD


def test_an_embeddings_request_reserves_its_prompt_only():
    small, large = model("small", 0.02, 0.0, 1), model("large", 0.13, 0.0, 1)
    assert estimate(chat(), [small, large], generates=False, prompt_tokens=10_000) == (1_300_000, 10_000)
