"""Folding a canonical chunk stream back into one response (for the terminal event, the ledger and the trace), and
unfolding a whole response into chunks (a cached answer replayed to a streaming client)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.canonical import (
    ChatRequest,
    ChatResponse,
    ChunkChoice,
    Choice,
    Delta,
    FunctionCall,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)


@dataclass
class _ChoiceState:
    text: list[str] = field(default_factory=list)
    tools: dict[int, dict] = field(default_factory=dict)
    finish_reason: str | None = None
    logprobs: list[dict] | None = None  # the tokens' log probabilities, when the stream carried them


class StreamAssembler:
    """Accumulates chunks; gives the whole response, or the usage so far when the stream breaks."""

    def __init__(self, request: ChatRequest, model: str) -> None:
        self.request = request
        self.model = model
        self.choices: dict[int, _ChoiceState] = {}
        self.usage: Usage | None = None

    def add(self, chunk: StreamChunk) -> None:
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        for c in chunk.choices:
            state = self.choices.setdefault(c.index, _ChoiceState())
            if c.delta.content:
                state.text.append(c.delta.content)
            for tc in c.delta.tool_calls or ():
                slot = state.tools.setdefault(tc.index or 0, {"id": None, "name": None, "args": []})
                slot["id"] = slot["id"] or tc.id
                if tc.function is not None:
                    slot["name"] = slot["name"] or tc.function.name
                    if tc.function.arguments:
                        slot["args"].append(tc.function.arguments)
            if c.finish_reason:
                state.finish_reason = c.finish_reason
            if c.logprobs and c.logprobs.get("content"):
                state.logprobs = (state.logprobs or []) + list(c.logprobs["content"])

    def text(self) -> str:
        return "".join("".join(s.text) for s in self.choices.values())

    def usage_so_far(self) -> Usage:
        """The provider's usage when it sent one, else an estimate from what was produced."""
        if self.usage is not None:
            return self.usage
        produced = self.text() + "".join("".join(t["args"]) for s in self.choices.values() for t in s.tools.values())
        return Usage(prompt_tokens=estimate_prompt_tokens(self.request),
                     completion_tokens=estimate_tokens(produced) if produced else 0)

    def response(self) -> ChatResponse:
        choices = []
        for index in sorted(self.choices):
            s = self.choices[index]
            tool_calls = [ToolCall(id=t["id"], type="function", function=FunctionCall(name=t["name"],
                                   arguments="".join(t["args"]))) for _, t in sorted(s.tools.items())] or None
            content = "".join(s.text) if s.text or not tool_calls else None
            choices.append(Choice(index=index, message=Message(role="assistant", content=content,
                                                               tool_calls=tool_calls),
                                  finish_reason=s.finish_reason or "stop",
                                  logprobs={"content": s.logprobs, "refusal": None} if s.logprobs else None))
        return ChatResponse(model=self.model, choices=choices, usage=self.usage_so_far())


def _pieces(text: str) -> list[str]:
    """Text in word-sized pieces that join back exactly (each space goes with the word after it)."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def replay_chunks(response: ChatResponse) -> list[StreamChunk]:
    """A whole response as the chunks a provider would have streamed: the text word by word, each tool call,
    each choice's finish, then the usage. ``StreamAssembler`` folds them back into the same response."""
    out: list[StreamChunk] = []
    for choice in response.choices:
        message = choice.message
        content = message.content
        text = content if isinstance(content, str) else "".join(p.text or "" for p in content or [])
        deltas: list[Delta] = [Delta(content=p) for p in _pieces(text)] if text else []
        for i, tc in enumerate(message.tool_calls or []):
            deltas.append(Delta(tool_calls=[ToolCall(index=i, id=tc.id, type="function", function=FunctionCall(
                name=tc.function.name if tc.function else None,
                arguments=tc.function.arguments if tc.function else None))]))
        if message.refusal is not None:
            deltas.append(Delta(refusal=message.refusal))
        if not deltas:
            deltas.append(Delta(content=""))
        deltas[0].role = "assistant"
        # A replayed answer's log probabilities travel whole with its first increment (its pieces are the
        # replay's, not the provider's tokens).
        out.extend(StreamChunk(choices=[ChunkChoice(index=choice.index, delta=d,
                                                    logprobs=choice.logprobs if i == 0 else None)],
                               model=response.model)
                   for i, d in enumerate(deltas))
        out.append(StreamChunk(choices=[ChunkChoice(index=choice.index, delta=Delta(),
                                                    finish_reason=choice.finish_reason or "stop")],
                               model=response.model))
    out.append(StreamChunk(usage=response.usage, model=response.model))
    return out
