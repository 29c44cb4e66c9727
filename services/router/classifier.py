"""A cheap local task classifier: what a request is for, when the client did not say.

Rules over the request's shape (tools, JSON mode, images) and a fixed
vocabulary of cue words in the last user message and the system prompt.
Each task adds up the weights of its cues; the highest total wins, ties go
to the earlier task in ``TASKS``, and nothing found means ``chat``. It runs
in microseconds and needs no model. The cues that fired are returned so the
decision can say why, but never the prompt text itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.canonical import ChatRequest

TASKS = ("tools", "extraction", "code", "summarize", "sentiment", "translate", "classify", "rewrite", "analysis",
         "chat")
SCAN_CHARS = 4000  # only the head of long prompts is scanned: the ask is almost always there

# task → (pattern, weight); patterns are matched on lower-cased text at word boundaries.
_CUES: dict[str, tuple[tuple[str, float], ...]] = {
    "code": (
        (r"```", 3.0), (r"\bdef \w+\(", 3.0), (r"\bfunction\s*\w*\(", 2.5), (r"\bclass \w+[:({]", 2.0),
        (r"\b(python|javascript|typescript|golang|rust|java|c\+\+|sql|bash|regex)\b", 1.5),
        (r"\b(bug|stack ?trace|traceback|compile|compiler|refactor|unit tests?|snippet|debug)\b", 1.5),
        (r"\b(write|implement|fix) (a |the |this )?(function|script|program|method|query)\b", 2.5),
    ),
    "summarize": (
        (r"\b(summari[sz]e|summary|summarization|tl;?dr|condense|recap|key points|main points)\b", 3.0),
        (r"\bin (one|two|three|\d+) (sentences?|bullets?|words)\b", 1.0),
    ),
    "sentiment": (
        (r"\bsentiment\b", 3.0), (r"\b(positive|negative|neutral)\b.*\b(positive|negative|neutral)\b", 2.0),
        (r"\b(tone|emotion|mood) of\b", 1.5),
    ),
    "translate": (
        (r"\btranslat(e|ion)\b", 3.0),
        (r"\b(into|to) (english|french|german|spanish|italian|portuguese|japanese|chinese|korean|dutch)\b", 1.5),
    ),
    "classify": (
        (r"\b(classify|categori[sz]e|label|which category|tag (this|the))\b", 3.0),
    ),
    "rewrite": (
        (r"\b(rewrite|rephrase|paraphrase|proofread|reword|polish|edit (this|the|my))\b", 3.0),
        (r"\b(more (formal|concise|friendly|professional)|fix (the )?grammar)\b", 2.0),
    ),
    "extraction": (
        (r"\bextract\b", 3.0), (r"\b(parse|pull out|list all|fields?|entities|key[- ]value)\b", 1.0),
        (r"\b(as|in|return|output) json\b", 2.0),
    ),
    "analysis": (
        (r"\b(analy[sz]e|analysis|compare|comparison|evaluate|assess|pros and cons|trade-?offs?)\b", 2.5),
        (r"\b(why|explain|reason|step by step|prove|derive|calculate|estimate)\b", 1.0),
    ),
}
_COMPILED = {task: tuple((re.compile(p), w) for p, w in cues) for task, cues in _CUES.items()}


@dataclass(frozen=True)
class Classification:
    """The inferred task, how sure the rules are (0..1) and which cues fired."""

    task: str
    confidence: float
    signals: tuple[str, ...]


def _text(request: ChatRequest) -> str:
    system, last_user = "", ""
    for m in request.messages:
        content = m.content if isinstance(m.content, str) else " ".join(p.text or "" for p in m.content or [])
        if m.role in ("system", "developer"):
            system = content
        elif m.role == "user":
            last_user = content
    return (last_user[:SCAN_CHARS] + "\n" + system[:SCAN_CHARS // 4]).lower()


def classify(request: ChatRequest) -> Classification:
    """Infer the task of a chat request."""
    if request.tools:
        return Classification("tools", 1.0, ("tools",))
    scores: dict[str, float] = {}
    signals: dict[str, list[str]] = {}
    fmt = (request.response_format or {}).get("type")
    if fmt in ("json_object", "json_schema"):
        scores["extraction"] = 2.0
        signals["extraction"] = [f"response_format:{fmt}"]
    text = _text(request)
    for task, cues in _COMPILED.items():
        for i, (pattern, weight) in enumerate(cues):
            if pattern.search(text):
                scores[task] = scores.get(task, 0.0) + weight
                signals.setdefault(task, []).append(f"{task}#{i}")
    if not scores:
        return Classification("chat", 0.5, ())
    best = max(TASKS, key=lambda t: (scores.get(t, 0.0), -TASKS.index(t)))
    total = sum(scores.values())
    return Classification(best, round(scores[best] / total if total else 0.0, 3), tuple(signals[best]))
