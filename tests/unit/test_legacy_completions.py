"""Legacy text completions translate to one chat request and back, and refuse what they cannot carry."""

from __future__ import annotations

import msgspec
import pytest

from services.gateway import legacy_format as legacy
from shared.errors import InvalidRequest


def parse(**body):
    return legacy.parse(msgspec.json.encode({"model": "mock-1", **body}), 1 << 20)


def test_a_prompt_becomes_one_user_message_with_openais_default_cap():
    req = parse(prompt=["Once upon a time"], n=2, stop="\n", logprobs=2, echo=True)
    chat = legacy.chat_request(req)
    assert [(m.role, m.content) for m in chat.messages] == [("user", "Once upon a time")]
    assert chat.max_tokens == legacy.DEFAULT_MAX_TOKENS and chat.n == 2 and chat.stop == "\n"
    assert chat.logprobs is True and chat.top_logprobs == 2
    assert legacy.prompt_of(req) == "Once upon a time"


@pytest.mark.parametrize("body, param", [
    ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": [1, 2, 3]}, "prompt"), ({"prompt": "a", "suffix": "z"}, "suffix"),
    ({"prompt": "a", "best_of": 2}, "best_of"), ({"prompt": "a", "logprobs": 9}, "logprobs"),
])
def test_what_cannot_be_carried_is_refused(body, param):
    with pytest.raises(InvalidRequest) as exc:
        parse(**body)
    assert exc.value.param == param


def test_chat_logprobs_in_the_legacy_shape():
    chat = {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1},
                                                                         {"token": "Yo", "logprob": -2.0}]},
                        {"token": " there", "logprob": -0.5, "top_logprobs": []}]}
    assert legacy.logprobs(chat, offset=3) == {
        "tokens": ["Hi", " there"], "token_logprobs": [-0.1, -0.5], "top_logprobs": [{"Hi": -0.1, "Yo": -2.0}, {}],
        "text_offset": [3, 5]}
    assert legacy.logprobs(None) is None
