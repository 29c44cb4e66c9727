"""Prompt-injection and jailbreak risk: a deterministic score from weighted heuristic signals.

``assess`` reads every text the client sends, since a client controls all of
it: messages of every role (user, system, developer, assistant, tool, and an
Anthropic ``system``, which arrives as a system message), their string
contents, text parts, names and refusals; tool calls' names and arguments (JSON
strings decoded); the tool definitions (names, descriptions, every string in
their schemas); ``response_format`` and ``stop``. What an attacker cannot
place in a user turn it would otherwise place in one of those. Tool results
and tool definitions (often written by a third party, e.g. an MCP server) are
indirect injection. Each
signal has a weight in (0, 1); a signal seen twice counts as two independent
pieces of evidence (more hits add nothing), and the score is their noisy-OR,
``1 − Π(1 − wᵢ)``, so it stays in [0, 1], grows with every distinct signal,
and the same request always gets the same score.

Signals (weight):

- ``instruction_override`` (0.60): "ignore / disregard / forget all previous
  instructions", "override your rules", "new system instructions:".
- ``roleplay_jailbreak`` (0.50): DAN / "do anything now", "developer mode
  enabled", "you are jailbroken", "unfiltered AI", "answer without any
  restrictions", named jailbreak personas.
- ``prompt_exfiltration`` (0.50): asking for the system prompt or hidden
  instructions, "repeat the text above verbatim", "what were you told".
- ``delimiter_injection`` (0.50): chat-template tokens (``<|im_start|>``,
  ``[INST]``, ``<<SYS>>``, ``<|eot_id|>``…) or fake ``system:`` /
  ``### Instruction`` turns that give orders inside user content.
- ``hidden_text`` (0.35): Unicode tag characters (invisible ASCII), bidi
  overrides, runs of zero-width characters; tag-encoded text is decoded and
  scanned as well.
- ``encoded_payload`` (0.25): a long base64 run (≥ 80 characters); when it
  decodes to readable text, ``encoded_text`` (0.20) is added and the decoded
  text is scanned for the other signals too; "decode this and follow it"
  requests count as ``encoded_payload``.
- ``excessive_repetition`` (0.25): one token making up most of a long prompt,
  one line repeated many times, or a single character repeated hundreds of times.
- ``indirect_injection`` (0.15): one of the first four signals found inside
  a tool/function result rather than typed by the user.

Suggested thresholds: flag at ``FLAG_THRESHOLD`` (0.4, any single strong
signal), block at ``BLOCK_THRESHOLD`` (0.7, two strong signals, or one
repeated). Heuristics are easy to evade by paraphrase, other languages,
leetspeak or splitting across turns; they catch the common copy-pasted
attacks cheaply and say why (``signals``), they are not a classifier.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from shared.canonical import ChatRequest

FLAG_THRESHOLD = 0.4
BLOCK_THRESHOLD = 0.7


@dataclass(frozen=True)
class RiskAssessment:
    """A risk score in [0, 1] and the names of the signals behind it (sorted, unique)."""

    score: float
    signals: tuple[str, ...]


WEIGHTS = MappingProxyType({
    "instruction_override": 0.60,
    "roleplay_jailbreak": 0.50,
    "prompt_exfiltration": 0.50,
    "delimiter_injection": 0.50,
    "hidden_text": 0.35,
    "encoded_payload": 0.25,
    "encoded_text": 0.20,
    "excessive_repetition": 0.25,
    "indirect_injection": 0.15,
})
_INJECTION_SIGNALS = ("instruction_override", "roleplay_jailbreak", "prompt_exfiltration", "delimiter_injection")
_INDIRECT_ROLES = frozenset({"tool", "function", "tool_definition"})


@dataclass(frozen=True)
class _Rule:
    """One pattern of a signal and when to run it, so a benign prompt costs a few ``str.find`` calls.

    ``anchored``: the pattern is matched at each occurrence of each trigger (it starts there).
    Otherwise ``triggers`` is a gate: one string of every group must occur before the pattern searches.
    """

    signal: str
    triggers: tuple[tuple[str, ...], ...]
    pattern: re.Pattern[str]
    anchored: bool = False
    cased: bool = False  # look at the text as written instead of lower-cased
    negatable: bool = False  # a match right after "never" / "do not" is a rule being stated, not broken


_PREVIOUS = (r"(?:all\s+|any\s+|the\s+|of\s+)*"
             r"(?:previous|prior|above|earlier|preceding|former|foregoing|your|system|original|initial|old|all)")
_RULES = (r"(?:instructions?|prompts?|rules?|directions?|directives?|guidelines?|guardrails?|constraints?|"
          r"restrictions?|programming|commands?|polic(?:y|ies)|system\s+prompt|training)")
_BENIGN_OBJECT = (r"(?:paragraph|section|sentence|example|code|answer|reply|response|email|question|typo|error|"
                  r"output|line|comment|draft|version|formatting|list|table|step|part|one|point|message)")
_RESTRICTIONS = r"(?:restrictions|filters|limitations|censorship|guidelines|boundaries|guardrails|rules|limits)"
_SYSTEM_PROMPT = (r"(?:system\s+(?:prompt|message|instructions?)|(?:initial|original|secret)\s+"
                  r"(?:prompt|instructions?)|hidden\s+(?:prompt|instructions?|rules)|pre-?prompt|"
                  r"developer\s+(?:prompt|message|instructions?))")
_SYSTEM_PROMPT_WORDS = ("system prompt", "system message", "system instruction", "initial prompt",
                        "initial instruction", "original prompt", "original instruction", "secret prompt",
                        "secret instruction", "hidden prompt", "hidden instruction", "hidden rules", "preprompt",
                        "pre-prompt", "developer prompt", "developer message", "developer instruction")

# Patterns see NFKC-normalised, lower-cased text with zero-width characters removed.
_RULE_TABLE: tuple[_Rule, ...] = (
    _Rule("instruction_override", (("ignor", "disregard", "forget", "overrid", "bypass", "discard"),), re.compile(
        rf"(?<![a-z])(?:ignore|ignoring|disregard|forget|override|bypass|discard)\b[^.\n]{{0,20}}?\b{_PREVIOUS}\b"
        rf"[^.\n]{{0,25}}?\b{_RULES}\b"
        rf"|(?<![a-z])(?:ignore|disregard)\s+(?:all\s+)?(?:of\s+)?(?:the\s+|everything\s+)?"
        rf"(?:above|previous|prior|preceding)\b(?!\s+(?:\w+\s+){{0,2}}?{_BENIGN_OBJECT})"
        r"|(?<![a-z])forget\s+(?:everything|all)\s+(?:you\s+(?:were|have\s+been)\s+(?:told|taught|instructed|given)|"
        r"above|before|previously)\b"), anchored=True),
    _Rule("instruction_override", (("follow", "obey"),), re.compile(
        rf"(?:(?<=do not )|(?<=don't )|(?<=stop ))(?:follow(?:ing)?|obey(?:ing)?)\s+(?:your|the|any|{_PREVIOUS})\b"
        rf"[^.\n]{{0,20}}?\b{_RULES}\b"), anchored=True),
    _Rule("instruction_override", (("instruction",),), re.compile(
        r"\b(?:new|updated|revised|real|actual|true|secret)\s+(?:system\s+)?instructions?\s*:"
        r"|\b(?:your|the)\s+(?:previous|prior|original)\s+instructions?\s+(?:are|were|is)\s+"
        r"(?:void|cancel+ed|revoked|obsolete|no\s+longer\s+valid)")),
    _Rule("instruction_override", (("longer",),), re.compile(
        r"\byou\s+(?:are|will\s+be)\s+no\s+longer\s+(?:bound|restricted|limited|required\s+to\s+follow)\b")),
    _Rule("roleplay_jailbreak", (("anything now", "developer", "jailbr", "freed", "liberated", "unshackled", "released",
                                  "betterdan", "antigpt", "mongo", "confidant", " mode", "disable"),), re.compile(
        r"\bdo\s+anything\s+now\b"
        r"|\bdeveloper\s+mode\s+(?:enabled|activated|output|response|is\s+(?:now\s+)?(?:on|enabled|active))\b"
        r"|\b(?:you\s+are|you're|act|simulate|pretend|enter|now\s+in)\b[^.\n]{0,30}\bdeveloper\s+mode\b"
        r"|\b(?:you\s+are|you're|act\s+as|become|now)\s+(?:a\s+|an\s+)?jailbr(?:oken|eak)"
        r"|\bjailbr(?:eak|oken)\s+(?:mode|prompt|version|persona)\b"
        r"|\byou\s+have\s+(?:been\s+)?(?:freed|liberated|unshackled|released\s+from)\b"
        r"|\b(?:betterdan|antigpt|mongo\s+tom|evil\s+confidant|opposite\s+mode|stan\s+mode|dude\s+mode|aim\s+mode)\b"
        r"|\bdisable\s+(?:your\s+)?(?:safety|content\s+filter|filters|guardrails|moderation)\b")),
    _Rule("roleplay_jailbreak", (("unfiltered", "uncensored", "unrestricted", "unaligned", "amoral", "unethical",
                                  "evil"),), re.compile(
        r"(?<![a-z])(?:unfiltered|uncensored|unrestricted|unaligned|amoral|unethical|evil)\s+"
        r"(?:ai|assistant|model|chatbot|version|mode|persona|character|llm)\b"), anchored=True),
    _Rule("roleplay_jailbreak", (("without", "with no", "free of", "free from", "ignoring"),
                                 ("restriction", "filter", "limitation", "censor", "guideline", "boundar",
                                  "guardrail", "rules", "limits")), re.compile(
        rf"\b(?:answer|respond|reply|act|speak|talk|you\s+(?:can|will|must|are))\b[^.\n]{{0,40}}"
        rf"\b(?:without|with\s+no|free\s+(?:of|from)|ignoring)\s+(?:any\s+)?(?:ethical\s+|moral\s+|content\s+|"
        rf"safety\s+)?{_RESTRICTIONS}\b")),
    # DAN is only a jailbreak in capitals next to a role-play cue ("you are DAN", "DAN mode").
    _Rule("roleplay_jailbreak", (("DAN", "D.A.N"),), re.compile(
        r"(?i:\b(?:you\s+are|you're|act\s+as|pretend\s+to\s+be|become|stay|roleplay\s+as|play|called|named)\s+)"
        r"(?:a\s+|an\s+)?(?:DAN|D\.A\.N)\b|\b(?:DAN|D\.A\.N)\s+(?i:mode|jailbreak|prompt)\b"), cased=True),
    # "your system prompt", or "the system prompt" pointed at this conversation ("above", "you were given"):
    # "show the system prompt in LangChain's logs" is a developer's question, not an exfiltration attempt.
    _Rule("prompt_exfiltration", (_SYSTEM_PROMPT_WORDS,), re.compile(
        r"\b(?:reveal|show|print|display|output|repeat|recite|tell|give|share|leak|dump|write|spell\s+out|list|"
        r"paste|what\s+(?:is|are|was|were))\b[^.\n]{0,25}?\b(?:your\s+(?:\w+\s+){0,2}?"
        rf"{_SYSTEM_PROMPT}\b|(?:the|this)\s+(?:\w+\s+){{0,2}}?{_SYSTEM_PROMPT}\b[^.\n]{{0,30}}?"
        r"\b(?:above|you\s+(?:were|have\s+been)\s+given|you\s+(?:received|have|got|follow)|verbatim|word\s+for\s+word|"
        r"in\s+full|exactly))"), negatable=True),
    _Rule("prompt_exfiltration", (("your instructions", "your rules", "your guidelines", "your directives",
                                   "your configuration", "your prompt"),), re.compile(
        r"\b(?:reveal|show|print|tell\s+me|give\s+me|share|leak|dump|repeat|recite)\b[^.\n]{0,15}?\byour\s+"
        r"(?:instructions|rules|guidelines|directives|configuration|prompt)\b"), negatable=True),
    _Rule("prompt_exfiltration", (("repeat", "print", "output", "copy", "echo", "recite", "reproduce", "return"),
                                  ("above", "before this", "prior to this", "preceding", "so far", "verbatim")),
          re.compile(
        r"\b(?:repeat|print|output|copy|echo|recite|reproduce|return)\b[^.\n]{0,30}?"
        r"\b(?:everything|all|the\s+(?:text|words|content|messages?|lines))\b[^.\n]{0,20}?"
        r"\b(?:above|before\s+this|prior\s+to\s+this|preceding|so\s+far|verbatim)\b"
        r"(?!\s+(?:that|which|containing|where|with|from|in\s+the\s+(?:log|file|table|code)))")),
    _Rule("prompt_exfiltration", (("you told", "you instructed", "you programmed", "you given", "your reply with",
                                   "your response with", "your answer with"),), re.compile(
        r"\bwhat\s+(?:were|are|was)\s+you\s+(?:told|instructed|programmed|given)\b"
        r"|\b(?:begin|start)\s+your\s+(?:reply|response|answer)\s+with\b[^.\n]{0,20}\byou\s+are\b")),
    _Rule("delimiter_injection", (("<|", "[inst]", "[/inst]", "<<sys>>", "<</sys>>", "_of_turn>"),), re.compile(
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|begin_of_text|"
        r"end_of_turn|start_of_turn|eot)\|>|\[/?inst\]|<</?sys>>|<(?:start|end)_of_turn>")),
    _Rule("delimiter_injection", (("system", "developer", "assistant", "instruction"), (":",)), re.compile(
        r"(?:^|\n)[^\S\n]*(?:#{2,}\s*|\[|<|\*\*)?(?:system|developer|assistant|instructions?)(?:\]|>|\*\*)?\s*:\s*"
        r"[^\n]{0,80}?\b(?:you\s+(?:are|must|will|should)|ignore|disregard|from\s+now\s+on|new\s+instructions|"
        r"override|always|never)\b")),
    _Rule("encoded_payload", (("decode", "decipher", "base64", "rot13", "hex"), ("follow", "execute", "run", "obey",
                                                                              " do ", "perform", "carry", "act on")),
          re.compile(
        r"\b(?:decode|decipher|base64|rot13|hex)\b[^.\n]{0,40}\b(?:and|then)\s+(?:follow|execute|run|obey|do|"
        r"perform|carry\s+out|act\s+on)\b")),
)


_NEGATED = re.compile(r"(?:\bnever|\bnot|n't|\bno)\s+(?:ever\s+)?\Z")


def _count(rule: _Rule, subject: str) -> int:
    """How many times the rule's pattern matches ``subject`` (0 without running it when no trigger is there)."""
    if not rule.anchored:
        if all(any(t in subject for t in group) for group in rule.triggers):
            if rule.negatable:
                return sum(1 for m in rule.pattern.finditer(subject)
                           if _NEGATED.search(subject, max(0, m.start() - 16), m.start()) is None)
            return len(rule.pattern.findall(subject))
        return 0
    starts: set[int] = set()
    for trigger in rule.triggers[0]:
        i = subject.find(trigger)
        while i >= 0:
            if rule.pattern.match(subject, i) is not None:
                starts.add(i)
            i = subject.find(trigger, i + 1)
    return len(starts)


_LONG_TOKEN = re.compile(r"\S{80,}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{80,}={0,2}|[A-Za-z0-9_\-]{80,}={0,2}")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_SAME_CHAR = re.compile(r"(.)\1{199,}", re.S)
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_TAG_TEXT = re.compile("[\U000e0020-\U000e007e]+")  # Unicode tag characters: invisible copies of ASCII


def _prepare(text: str) -> tuple[str, str, str]:
    """(lower-cased text, NFKC text as written, text hidden in Unicode tag characters)."""
    if text.isascii():
        return text.lower(), text, ""
    hidden = "".join(chr(ord(c) - 0xE0000) for m in _TAG_TEXT.finditer(text) for c in m.group())
    text = _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text))
    return text.lower(), text, hidden


def _signals(text: str, hits: Counter[str], depth: int = 0) -> None:
    """Add the signals found in one text to ``hits`` (how many times each fired; capped when scoring)."""
    low, cased, hidden = _prepare(text)
    for rule in _RULE_TABLE:
        hits[rule.signal] += _count(rule, cased if rule.cased else low)
    if not text.isascii():
        if hidden or len(_ZERO_WIDTH.findall(text)) >= 3 or _BIDI.search(text):
            hits["hidden_text"] += 1
        if hidden and depth == 0:
            _signals(hidden, hits, depth + 1)
    tokens = low.split()
    if tokens and max(map(len, tokens)) >= 80:
        _encoded(cased, hits, depth)
    if _repetitive(low, tokens):
        hits["excessive_repetition"] += 1


def _encoded(cased: str, hits: Counter[str], depth: int) -> None:
    for token in _LONG_TOKEN.finditer(cased):
        for m in _BASE64.finditer(token.group()):
            blob = m.group()
            if _HEX.fullmatch(blob.rstrip("=")) or blob.isalpha():
                continue  # a hash or a long word, not an encoding
            hits["encoded_payload"] += 1
            decoded = _decode_text(blob)
            if decoded is not None:
                hits["encoded_text"] += 1
                if depth == 0:
                    _signals(decoded, hits, depth + 1)


def _decode_text(blob: str) -> str | None:
    """The blob's base64 (standard or URL-safe) decoding when it is mostly printable text."""
    padded = blob + "=" * (-len(blob) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"-_" if ("-" in blob or "_" in blob) else None, validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(1 for c in decoded if c.isprintable() or c in "\n\t")
    return decoded if decoded and printable / len(decoded) >= 0.95 else None


def _repetitive(low: str, tokens: list[str]) -> bool:
    """One character 200+ times in a row, one token making up most of a long text, or one line repeated."""
    if tokens and max(map(len, tokens)) >= 200 and _SAME_CHAR.search(low):
        return True
    n = len(tokens)
    if n >= 40 and len(set(tokens)) <= 0.6 * n + 1:  # else no token can reach a 40 % share
        _, top = Counter(tokens).most_common(1)[0]
        if top >= 30 and top / n >= 0.4:
            return True
    if low.count("\n") >= 9:
        lines = [line for line in low.splitlines() if line.strip()]
        if len(lines) >= 10:
            _, top = Counter(lines).most_common(1)[0]
            if top >= 10 and top / len(lines) >= 0.5:
                return True
    return False


def _strings(value: Any, out: list[str]) -> list[str]:
    """Every string inside a JSON value (dict values, list items), in order."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)
    return out


def _arguments(arguments: str) -> str:
    """A tool call's arguments as the model will read them: the JSON's strings (escapes decoded) when it parses."""
    if arguments.lstrip()[:1] in ("{", "["):
        try:
            return "\n".join(_strings(json.loads(arguments), []))
        except ValueError:
            pass
    return arguments


def _texts(request: ChatRequest) -> Iterator[tuple[str, str]]:
    """(role, text) for every client-supplied text of the request; tool definitions come as ``tool_definition``."""
    for m in request.messages:
        if isinstance(m.content, str):
            yield m.role, m.content
        elif m.content:
            for part in m.content:
                if part.text:
                    yield m.role, part.text
        if m.name:
            yield m.role, m.name
        if m.refusal:
            yield m.role, m.refusal
        for call in m.tool_calls or ():
            if call.function is not None:
                if call.function.name:
                    yield m.role, call.function.name
                if call.function.arguments:
                    yield m.role, _arguments(call.function.arguments)
    for tool in request.tools or ():
        yield "tool_definition", "\n".join(_strings(tool, []))
    for extra in (request.response_format, request.stop):
        if extra:
            yield "request", "\n".join(_strings(extra, []))


def assess(request: ChatRequest) -> RiskAssessment:
    """The request's prompt-injection / jailbreak risk: noisy-OR of the weighted signals found."""
    hits: Counter[str] = Counter()
    for role, text in _texts(request):
        found: Counter[str] = Counter()
        _signals(text, found)
        if role in _INDIRECT_ROLES and any(found[s] for s in _INJECTION_SIGNALS):
            found["indirect_injection"] += 1
        hits.update(found)
    keep = 1.0
    for name, count in hits.items():
        if count:
            keep *= (1.0 - WEIGHTS[name]) ** min(count, 2)
    signals = tuple(sorted(name for name, count in hits.items() if count))
    return RiskAssessment(score=round(1.0 - keep, 4), signals=signals)
