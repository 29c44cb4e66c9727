"""PII and secret detection for prompts: compiled regexes plus validators, offline, pure.

``find_pii`` finds typed spans; ``redact_text`` / ``redact_request`` replace them
with typed placeholders (``<EMAIL_1>``), the same value getting the same
placeholder everywhere in one request; ``scan_request`` only counts. Counts are
occurrences per kind and never carry values. It runs on every prompt, so its
cost matters (``python tools/pii_report.py`` measures it; figures in
docs/performance/README.md); Presidio's pattern recognizers were far slower and
read SSNs as phone numbers, so this module is hand-written: compiled regexes that start on the
character class they need (so the engine skips ahead in C), numeric detectors
run only around digit chunks whose grouping fits them, validators after.

How it matches. The text is folded for matching only: characters whose NFKC
form is one ASCII character (full-width digits, letters and punctuation,
no-break spaces, mathematical digits), every Unicode decimal digit to ASCII,
Unicode dashes to ``-``; zero-width characters and soft hyphens are dropped
and an offset map sends each match back to the *original* span, which is what
gets redacted. Candidates are validated, then overlaps are resolved by specificity:
SECRET > IBAN > CARD > SSN > EMAIL > IP > PHONE, and within a tier by the
strength of the evidence (a structured phone beats a context-only one), then
by length. So ``123-45-6789`` is an SSN, never a phone number.

What is caught:

- EMAIL: ``local@domain.tld`` (Unicode letters allowed), and the bracketed
  obfuscations ``john [at] example [dot] com`` / ``(at)`` / ``{at}``.
- PHONE: ``+CC`` and ``00CC`` international numbers (country code checked
  against the E.164 table, 8–15 digits, ``(0)`` trunk allowed); NANP numbers
  with separators or parentheses (area and exchange codes validated);
  national numbers with a trunk ``0`` and separators (10–12 digits: FR, UK,
  DE, NL, IT, …); any 7–15 digit cluster (9+ when unseparated) right after
  a phone word ("tel", "call me", "mobile", "WhatsApp", …); digit-by-digit
  spaced numbers (not rows of a grid or bit strings).
- CARD: 13–19 digits in any grouping (spaces, dashes, dots, digit-by-digit),
  issuer prefix and length checked (Visa, Mastercard incl. 2-series, Amex,
  Diners, Discover, JCB, UnionPay, Maestro, Mir), Luhn-checked.
- IBAN: country code from the registry with that country's exact length,
  ISO 7064 mod-97 checksum; grouped, compact or lowercase-compact.
- SSN: ``AAA-GG-SSSS`` with one consistent separator (dash, space, dot), the
  bare 9-digit form only after an SSN word, digit-by-digit spaced; area 000,
  666 and 9xx, group 00 and serial 0000 are rejected.
- IP: IPv4 (not after a numbering word such as "version", "v", "section",
  "chapter"; not netmasks like 255.255.255.0, not 0.0.0.0) and IPv6
  (validated by ``ipaddress``, compressed and IPv4-mapped forms; all-letter
  forms like ``dead::beef`` are skipped).
- SECRET: OpenAI/Anthropic ``sk-…``, AWS ``AKIA…``/``ASIA…`` key ids, GitHub
  ``ghp_…``/``github_pat_…``, Slack ``xox[abpors]-…`` and webhooks, Google
  ``AIza…``, Stripe ``sk_live_…``/``rk_…``, JWTs, PEM/OpenSSH/PGP private
  key blocks (also when truncated), ``Bearer``/``token`` credentials,
  ``Authorization: Basic`` values that decode to ``user:password``, URL
  passwords (``scheme://user:password@host``), and ``key = value``
  assignments whose key names a secret (api_key, *_SECRET*, *_TOKEN,
  password, passphrase, …): token-like keys need a high-entropy value
  (16+ characters, letters and digits), password keys any non-placeholder
  value of 6+ characters.

What is NOT caught (known limits; do not promise more):

- Personal names, postal addresses, dates of birth, ages, free-text health or
  financial facts: this needs NER, which is what made Presidio slow.
- National identifiers other than the US SSN (UK NINO, French INSEE, German
  Steuer-ID, Indian Aadhaar/PAN, Canadian SIN, …), passport and driver's
  licence numbers, US ITINs/EINs, bank account and routing numbers outside
  IBANs, crypto wallet addresses, MAC addresses, vehicle plates.
- Phones written as bare digits with no phone word nearby (``4155550123``),
  7-digit local numbers without a phone word, vanity numbers
  (``1-800-FLOWERS``), numbers split by words or emoji, numbers with
  extensions (the extension stays), and other national layouts that start
  without a trunk ``0`` (Spanish ``612 34 56 78``) unless a phone word precedes.
- Emails spelled out without brackets (``john at example dot com``), or
  broken by inserted spaces (``j o h n@…``); IDN domains written in punycode
  are caught, homoglyph tricks beyond NFKC are not.
- Card and SSN numbers inside longer digit runs or with letters mixed in
  (``4111-1111-1111-111l``); 9-digit SSNs without an SSN word. Numbers glued
  to another number on the same line ("ts=1601724696239 02 68 56 22 24") may
  be missed, and a digit-by-digit number opening a line next to a grid of
  digits is taken for a grid row.
- Over-reporting, by design or by chance: 13/16/19-digit order numbers or
  rows of four 4-digit values ("totals: 4196 7822 2348 1044") that start with
  a card prefix and pass Luhn (about 1 in 10 such random numbers) are cards;
  public test cards (4242 4242 4242 4242) are cards; network addresses and
  prefixes (``8.8.8.0/24``, ``fe80::/10``) are IPs; version strings that are
  valid IPv4 addresses without a numbering word before them
  (``upgrade to 1.2.3.4``) are IPs. IPv4 in non-dotted forms (decimal
  ``3232235777``, hex) is not caught.
- Secrets with no recognisable prefix and no telling key name (a bare AWS
  secret access key, a random hex string), passwords in prose without a
  digit ("my password is sunshine"), and secrets encoded (base64, hex) or
  split across messages.
- Values hidden by escapes the scanner does not decode (HTML entities, URL
  percent-encoding); JSON string escapes *are* decoded in tool-call arguments
  and tool messages, which are walked as JSON when they parse.
- Payloads that are not text: the data of ``data:`` image URLs, of file parts
  and of audio parts (base64) is not decoded; a file's name is scanned.

What is scanned: every free-text field a request sends upstream, with one
numbering across them — message contents and text parts of every role,
message ``name`` and ``refusal``, tool calls' names and arguments, image URLs
(other than ``data:``), file names, the tool definitions (every string and key
of each, descriptions and schemas alike; Anthropic ``tools`` arrive as
these), ``tool_choice``, ``response_format``, ``stop``, ``user`` and
``metadata`` (keys and values). Redaction writes placeholders into all of
them: a redacted image URL or tool name no longer works upstream, which is
the point. docs/security.md has the measured recall per kind.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import ipaddress
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgspec

from shared.canonical import ChatRequest, ContentPart, Message

PII_KINDS = ("EMAIL", "PHONE", "CARD", "IBAN", "SSN", "IP", "SECRET")


@dataclass(frozen=True)
class Finding:
    """One detected span of the original text: its kind and ``[start, end)`` offsets."""

    kind: str
    start: int
    end: int


# -- ranking: the higher priority wins an overlap ------------------------------------------------------

_P_SECRET, _P_SECRET_GENERIC = 100, 95
_P_IBAN = 90
_P_CARD = 80
_P_SSN, _P_SSN_CONTEXT, _P_SSN_SPACED = 76, 74, 72
_P_EMAIL = 70
_P_IP = 60
_P_PHONE, _P_PHONE_NATIONAL, _P_PHONE_CONTEXT = 55, 50, 45
_SHADOW = ""  # kind of a shaped-but-invalid candidate: it wins overlaps, so nothing weaker is read inside it

# -- folding: what the text reads as, for matching only -------------------------------------------------

_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\ufe58\ufe63\uff0d"
_INVISIBLE = re.compile("[\u00ad\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff]")


def _fold_table() -> str:
    """A ``str.translate`` table up to U+1D7FF: one-to-one folds into ASCII (Unicode digits, NFKC forms such as
    full-width characters, dashes), every other character mapped to itself."""
    table = [chr(cp) for cp in range(0x1D800)]
    # The BMP but CJK ideographs and Hangul syllables (nothing ASCII there), and the mathematical alphanumerics.
    for cp in (*range(0x80, 0x3400), *range(0xA000, 0xAC00), *range(0xD7B0, 0xD800), *range(0xF900, 0x10000),
               *range(0x1D400, 0x1D800)):
        ch = chr(cp)
        digit = unicodedata.decimal(ch, None)
        folded = str(digit) if digit is not None else unicodedata.normalize("NFKC", ch)
        if len(folded) == 1 and folded != ch and folded.isascii():
            table[cp] = folded
    for c in _DASHES:
        table[ord(c)] = "-"
    return "".join(table)


_FOLD = _fold_table()
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _fold_runs(text: str) -> str:
    return _NON_ASCII.sub(lambda m: m.group().translate(_FOLD), text)


def _fold(text: str) -> tuple[str, list[int] | None]:
    """The folded text and, when characters were dropped, the original index of each folded character.

    Folds are one-to-one, so offsets only move when invisible characters (zero-width, soft hyphen) are dropped.
    """
    if text.isascii():
        return text, None
    if _INVISIBLE.search(text) is None:
        return _fold_runs(text), None
    index = [i for i, c in enumerate(text) if _INVISIBLE.fullmatch(c) is None]
    return _fold_runs("".join(text[i] for i in index)), index


# -- context words, matched on the reversed lower-cased text just before a candidate ---------------------

def _reversed_words(words: str) -> str:
    """Space-separated words (``_`` standing for whitespace) as a regex alternation of the reversed words."""
    alternatives = sorted(words.split(), key=len, reverse=True)
    return "|".join(re.escape(w[::-1]).replace("_", r"\s+") for w in alternatives)


def _words_before(words: str, gap: str) -> re.Pattern[str]:
    """A pattern that, matched at the start of the reversed text before a candidate, finds one of ``words``
    separated from the candidate by ``gap``."""
    return re.compile(rf"{gap}(?<![^\W\d_])(?:{_reversed_words(words)})(?![^\W\d_])")


_PHONE_WORD_LIST = (
    "tel tel. telephone telefon telefono téléphone phone ph ph. mob mob. mobile cell cellphone fax hotline "
    "landline handy portable call called calling ring dial text texted sms whatsapp whats_app signal telegram "
    "viber contact reach my_number his_number her_number their_number your_number our_number")
_SSN_WORD_LIST = ("ssn ssn# ss# ss_# ss_no ss_no. social_security social_security_number social_security_no "
                  "social_security_# social_sec soc_sec soc._sec soc._sec.")
_PHONE_WORDS = _words_before(_PHONE_WORD_LIST, r"[^0-9\n]{0,24}?")
_SSN_WORDS = _words_before(_SSN_WORD_LIST, r"[^0-9\n]{0,20}?")
_CONTEXT_WORDS = re.compile(  # either, in one match: is a numeric chunk introduced by a phone or SSN word?
    rf"[^0-9\n]{{0,24}}?(?<![^\W\d_])(?:{_reversed_words(_PHONE_WORD_LIST + ' ' + _SSN_WORD_LIST)})(?![^\W\d_])")
_IDENTIFIER_WORDS = _words_before(  # "order no. 0612 345 678", "ticket #…": an identifier, not a phone or card
    "order invoice inv ref reference ticket tracking case account acct serial sku id po batch lot part model build "
    "isbn ean upc gtin imei receipt transaction txn confirmation booking customer member",
    r"\s*[:#.]?\s*(?:\.?(?:on|rn|rebmun|mun|di|edoc|fer)\s*)?")
_HASH_BEFORE = re.compile(r"\s*#")
_NUMBERING_WORDS = _words_before(  # "version 1.2.3.4", "section 4.2.1.3": dotted numbering, not an address
    "v ver ver. version release build firmware kernel patch update upgrade section sec. chapter ch. clause "
    "article art. § step figure fig. table paragraph para. rule item appendix annex part", r"\s*:?\s*")
_WINDOW = 40


def _before(s: str, start: int, pattern: re.Pattern[str], window: int = _WINDOW) -> bool:
    return pattern.match(s[max(0, start - window):start].lower()[::-1]) is not None


def _identifier_before(s: str, start: int, bare_hash: bool = True) -> bool:
    """Whether an identifier word ("order no.", "ticket", "ISBN") — or, with ``bare_hash``, a lone "#" —
    introduces the number at ``start``. Cards ignore a lone "#": "CC# 4111…" is a card."""
    rev = s[max(0, start - 24):start].lower()[::-1]
    return _IDENTIFIER_WORDS.match(rev) is not None or (bare_hash and _HASH_BEFORE.match(rev) is not None)


_DATE_INSIDE = re.compile(
    r"(?<![0-9])(?:[0-9]{1,2}[./\-][0-9]{1,2}[./\-](?:19|20)[0-9]{2}|(?:19|20)[0-9]{2}[./\-][0-9]{1,2}[./\-]"
    r"[0-9]{1,2})(?![0-9])")
_GRID_ROW = re.compile(r"[0-9](?:[ \t,;|]+[0-9]){3,}")

# -- validators --------------------------------------------------------------------------------------------

_NON_DIGITS = re.compile(r"[^0-9]+")


def _digits(s: str) -> str:
    return _NON_DIGITS.sub("", s)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        x = ord(ch) - 48
        if i & 1:
            x = x * 2 - 9 if x > 4 else x * 2
        total += x
    return total % 10 == 0


def _card_prefix_ok(d: str) -> bool:
    """Issuer prefix and length plausible for a payment card (IIN ranges of the major schemes)."""
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)
    p2, p3, p4 = int(d[:2]), int(d[:3]), int(d[:4])
    if p2 in (34, 37):
        return n == 15
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720 or 2200 <= p4 <= 2204:
        return n == 16
    if p2 in (36, 38, 39) or 300 <= p3 <= 305 or p3 == 309:
        return 14 <= n <= 19
    if 3528 <= p4 <= 3589 or p4 == 6011 or p2 in (62, 65, 81) or 644 <= p3 <= 649:
        return 16 <= n <= 19
    if p2 in (50, 56, 57, 58) or 60 <= p2 <= 69:
        return 12 <= n <= 19
    return False


def _card_layout_ok(sizes: list[int]) -> bool:
    """How card numbers are written: one run, 4-4-4-4(-3), Amex/Diners 4-6-5 / 4-6-4, or digit by digit."""
    if len(sizes) == 1 or all(n == 1 for n in sizes) or sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(n == 4 for n in sizes[:-1]) and 1 <= sizes[-1] <= 4


def _ssn_ok(d: str) -> bool:
    area, group, serial = d[:3], d[3:5], d[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _nanp_ok(d: str) -> bool:
    """Ten NANP digits: area and exchange codes start 2-9 and are not N11 service codes."""
    return d[0] >= "2" and d[3] >= "2" and d[1:3] != "11" and d[4:6] != "11"


_IBAN_LENGTHS = MappingProxyType({
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
})


def _iban_ok(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


# E.164 country calling codes (ITU-T), as the prefixes a +number may start with.
_CALLING_CODES = frozenset(
    "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62 63 64 65 66 "
    "81 82 84 86 90 91 92 93 94 95 98 211 212 213 216 218 220 221 222 223 224 225 226 227 228 229 230 231 232 "
    "233 234 235 236 237 238 239 240 241 242 243 244 245 246 247 248 249 250 251 252 253 254 255 256 257 258 "
    "260 261 262 263 264 265 266 267 268 269 290 291 297 298 299 350 351 352 353 354 355 356 357 358 359 370 "
    "371 372 373 374 375 376 377 378 379 380 381 382 383 385 386 387 389 420 421 423 500 501 502 503 504 505 "
    "506 507 508 509 590 591 592 593 594 595 596 597 598 599 670 672 673 674 675 676 677 678 679 680 681 682 "
    "683 685 686 687 688 689 690 691 692 800 808 850 852 853 855 856 870 878 880 881 882 883 886 888 960 961 "
    "962 963 964 965 966 967 968 970 971 972 973 974 975 976 977 979 992 993 994 995 996 998".split())


def _calling_code_ok(d: str) -> bool:
    return d[:1] in _CALLING_CODES or d[:2] in _CALLING_CODES or d[:3] in _CALLING_CODES


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _random_looking(v: str, min_len: int = 16) -> bool:
    """A credential-shaped value: long enough, letters and digits, not a repeated or dictionary-like string."""
    if len(v) < min_len or not any(c.isdigit() for c in v) or not any(c.isalpha() for c in v):
        return False
    return _entropy(v) >= 3.0


_PLACEHOLDER_VALUES = frozenset((
    "password", "passwd", "pass", "pwd", "secret", "required", "optional", "string", "example", "sample", "none",
    "null", "nil", "undefined", "true", "false", "hidden", "redacted", "removed", "placeholder", "changeme",
    "yourpassword", "mypassword", "xxxxxx", "empty", "masked", "omitted", "default", "unknown", "username",
))
_CODEISH = re.compile(r"[()\[\]{}<>$%]|^(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*$|^(?:your|my|the|enter|insert)[_\-.]", re.I)


def _password_ok(v: str, min_len: int = 6) -> bool:
    """A value given to a password-like key that is neither a placeholder, a path nor a code reference."""
    if len(v) < min_len or len(set(v)) < 3 or _CODEISH.search(v) or v[0] in "/~":
        return False
    return v.lower().strip("_-.*") not in _PLACEHOLDER_VALUES


def _basic_auth_ok(v: str) -> bool:
    try:
        raw = base64.b64decode(v + "=" * (-len(v) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in raw and all(32 <= b < 127 for b in raw)


# -- patterns ----------------------------------------------------------------------------------------------
# Most patterns open with the character class they must start with and check the character before it with
# a lookbehind placed after: the regex engine then skips ahead in C to plausible starts, which is most of
# what keeps a 1 KB scan in the tens of microseconds.

_AT = re.compile(r"@|[\[({<]\s*[aA][tT]\s*[\])}>]")
_OBF_DOT = re.compile(r"\s*[\[({<]\s*[dD][oO][tT]\s*[\])}>]\s*")
_LOCAL_BACKWARDS = re.compile(r"[\w.%+\-]*")
_EMAIL = re.compile(
    r"(?<![\w.%+\-])"
    r"(?P<local>[\w%+\-](?:[\w.%+\-]{0,62}[\w%+\-])?)"
    r"(?:@|\s*[\[({<]\s*[aA][tT]\s*[\])}>]\s*)"
    r"(?P<domain>(?:[^\W_](?:[\w\-]{0,61}[^\W_])?(?:\.|\s*[\[({<]\s*[dD][oO][tT]\s*[\])}>]\s*))+[^\W\d_]{2,24})"
    r"(?![\w\-(]|\.[^\W_])")  # "q@k.transpose(" is a matrix product

# A numeric chunk: 4+ digits joined by short runs of separators; the numeric detectors look only around these.
_CHUNK = re.compile(r"[0-9](?:[ .\-()/]{0,3}[0-9]){3,}")
_PHONE_INTL = re.compile(
    r"(?:\+(?<![\w+\-.)/]\+)|0(?<![\w+\-.)/0-9]0)(?<![0-9][ .\-]0)0)(?=[1-9])"
    r"(?:(?: ?[\-/] ?|[ .])?(?:\(0\)|\([0-9]{1,5}\)|[0-9]))+")  # not ". ": a sentence ends there
_PHONE_NANP = re.compile(
    r"(?<![\w+\-.)/])(?:1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}"
    r"(?![0-9]|[.\-][0-9])")
_PHONE_NATIONAL = re.compile(
    r"[(0](?<![\w+\-.,/][(0])(?<![0-9][ .\-][(0])(?:(?<=\()0[0-9]{1,4}\)|(?<=0)[1-9][0-9]{0,4})"
    r"(?:[ .\-/]{1,2}[0-9]{2,8}){1,4}(?![0-9]|[.\-/][0-9])")
_DIGIT_CLUSTER = re.compile(
    r"[0-9](?<![\w+\-.,/][0-9])(?:(?: ?[\-/] ?|\.|[ ]{1,2}|\) ?| ?\()?[0-9]){6,20}(?![0-9]|[.\-/][0-9])")
_SPACED_DIGITS = re.compile(
    r"[0-9](?<![\w.+\-][0-9])(?<![^0-9][0-9][ .\-][0-9])(?<![^0-9][0-9][ .\-]{2}[0-9])"
    r"(?:[ .\-]{1,2}[0-9]){8,18}(?![ .\-]{0,2}[0-9])")
_SSN = re.compile(
    r"[0-9](?<![\w+\-.][0-9])[0-9]{2}([ \t]?[.\-][ \t]?|[ \t])([0-9]{2})\1([0-9]{4})(?![0-9]|[.\-][0-9])")
_CARD = re.compile(r"[0-9](?<![\w.+\-][0-9])(?:[ .\-]{0,2}[0-9]){12,}")
_DIGIT_RUN = re.compile(r"[0-9]+")
_IPV4 = re.compile(
    r"[0-9](?<![\w.\-][0-9])[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w\-]|\.[0-9])")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?(?:%[0-9A-Za-z]+)?"
    r"(?![\w:]|\.[0-9])")
_IPV6_ANCHOR = re.compile(r":[0-9A-Fa-f]{0,4}:")
# IBANs are found from their check digits: two digits right after a two-letter country code.
_IBAN_ANCHOR = re.compile(r"[0-9](?:(?<=[A-Za-z]{2}[0-9])|(?<=[A-Z]{2} [0-9]))[0-9]")
_IBAN = re.compile(r"(?<![A-Za-z0-9])(?:[A-Z]{2} ?|[a-z]{2})[0-9]{2}(?:[ \-]?[A-Za-z0-9]){10,32}")
_IBAN_SEPARATORS = re.compile(r"[ \-]")

# (literals one of which the text must hold, or () when the pattern opens with a literal and so is fast to run
# anyway; the pattern; the group holding the secret; a validator of that group)
_SECRET_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str], int, Callable[[str], bool] | None], ...] = (
    ((), re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
                    r"(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,\-]*)", re.S), 0, None),
    ((), re.compile(r"sk-(?<![\w\-]sk-)(?:proj-|svcacct-|admin-|ant-(?:api|admin)[0-9]{2}-)?[A-Za-z0-9_\-]{20,}"),
     0, lambda v: _random_looking(v[3:], 20)),
    ((), re.compile(r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)(?<![A-Za-z0-9][A-Z]{4})[A-Z0-9]{16}"
                    r"(?![A-Za-z0-9])"), 0, None),
    ((), re.compile(r"(?:gh[pousr]_(?<![A-Za-z0-9_]gh._)[A-Za-z0-9]{36,251}|"
                    r"github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,255})(?![A-Za-z0-9_])"), 0, None),
    ((), re.compile(r"xox[abposr]-(?<![A-Za-z0-9]xox.-)[A-Za-z0-9\-]{10,250}"), 0,
     lambda v: _random_looking(v, 15)),
    ((), re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]{20,}"), 0, None),
    ((), re.compile(r"AIza(?<![A-Za-z0-9_\-]AIza)[0-9A-Za-z_\-]{35}(?![A-Za-z0-9_\-])"), 0, None),
    (("_live_", "_test_"), re.compile(r"[sr]k_(?<![A-Za-z0-9].k_)(?:live|test)_[A-Za-z0-9]{16,247}"), 0, None),
    ((), re.compile(r"eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"),
     0, None),
    (("earer", "EARER", "oken", "OKEN"),
     re.compile(r"(?:(?:[Bb]earer|BEARER)(?<!\w.{6})|(?:[Tt]oken|TOKEN)(?<!\w.{5}))"
                r"\s+([A-Za-z0-9\-._~+/]{16,}={0,2})(?![\w\-.~+/=])"),
     1, _random_looking),
    (("asic", "ASIC"), re.compile(r"(?:[Bb]asic|BASIC)(?<!\w.{5})\s+([A-Za-z0-9+/]{8,}={0,2})(?![\w+/=])"), 1,
     _basic_auth_ok),
    ((), re.compile(r"://[^\s/:@]{1,64}:([^\s/@]{3,128})@"), 1, lambda v: _password_ok(v, 3)),
)

# "<name> = value" where the name ends with a secret word; found from the secret words' occurrences.
_KEY_WORD = re.compile(r"key|secret|token|passw|passphrase|pwd|credential")
_KEY_QUALIFIER = re.compile(  # what may stand right before "key", or glued before "token"/"secret"
    r"(?:api|access|private|signing|secret|client|master|encryption|license|auth|refresh|session|bearer|id|app|"
    r"csrf|xsrf|oauth|github|slack|stripe|openai|aws)[_\-. ]?$")
_ASSIGNMENT = re.compile(
    r"(?:(?P<pw>passw(?:or)?d|passphrase|pwd)|(?P<tok>key(?:[_\-.]?id)?|secret(?:[_\-.]?(?:access[_\-.]?)?key)?|"
    r"token|credentials?))"
    r"[\"']?\s*(?:(?P<op>=>|:=|[:=])|\s(?:is|was)\s*:?)\s*[\"']?(?P<value>[^\s\"',;\\<>`]{6,512})",
    re.IGNORECASE)
_WORD_FOLLOWS = re.compile(r" +[A-Za-z0-9]")

# -- detectors: each appends (start, end, kind, priority, value) in folded coordinates -----------------------

_Candidate = tuple[int, int, str, int, str]


def _detect_email(s: str, low: str, out: list[_Candidate]) -> None:
    done = 0
    for at in _AT.finditer(s):
        if at.start() < done:
            continue
        # The local part is read backwards from the "@" (one match attempt per "@", however many there are).
        j = at.start()
        while j > done and j > at.start() - 4 and s[j - 1] in " \t":
            j -= 1
        start = j - len(_LOCAL_BACKWARDS.match(s[max(done, j - 64):j][::-1]).group())
        m = _EMAIL.match(s, start, at.end() + 300)
        if m is None or m.end() <= at.start():
            continue
        local, domain = m.group("local"), _OBF_DOT.sub(".", m.group("domain"))
        if local.lower() == "git" and s.startswith(":", m.end()):
            continue  # git@github.com:org/repo is an SSH remote, not a mailbox
        out.append((m.start(), m.end(), "EMAIL", _P_EMAIL, f"{local}@{domain}".lower()))
        done = m.end()


def _phone_value(d: str) -> str:
    if d.startswith("00"):
        d = d[2:]
    return d[1:] if len(d) == 11 and d[0] == "1" else d


def _detect_phone(s: str, lo: int, hi: int, out: list[_Candidate]) -> None:
    for m in _PHONE_INTL.finditer(s, lo, hi):
        _intl_phone(s, m, out)
    for m in _PHONE_NANP.finditer(s, lo, hi):
        d = _digits(m.group())
        d = d[1:] if len(d) == 11 else d
        if _nanp_ok(d) and not _identifier_before(s, m.start()):
            out.append((m.start(), m.end(), "PHONE", _P_PHONE, d))
    for m in _PHONE_NATIONAL.finditer(s, lo, hi):
        d = _digits(m.group())
        if _DATE_INSIDE.search(m.group()) or _identifier_before(s, m.start()):
            continue
        if 10 <= len(d) <= 12 or (len(d) == 9 and _before(s, m.start(), _PHONE_WORDS)):
            out.append((m.start(), m.end(), "PHONE", _P_PHONE_NATIONAL, d))


def _intl_phone(s: str, m: re.Match[str], out: list[_Candidate]) -> None:
    text = m.group()
    plus = text[0] == "+"
    # A phone followed by another number on the same line: cut before a date, then at group boundaries
    # while too long (E.164 allows 15 digits; NANP numbers have exactly 11 with the country code).
    # Single digits after longer groups are another number ("+49 89 1109272 1 0 0", a matrix row), except
    # right after the country code ("+33 6 12 34 56 78").
    ends = [i + 1 for i in range(len(text)) if text[i].isdigit() and (i + 1 == len(text) or not text[i + 1].isdigit())]
    sizes = [len(r) for r in _DIGIT_RUN.findall(text)]
    for k in range(2, len(sizes)):
        if sizes[k] == 1 and max(sizes[:k]) > 1:
            ends = ends[:k]
            break
    ends.reverse()  # longest first
    date = _DATE_INSIDE.search(s, m.start(), m.end() + 12)
    if date is not None and date.start() < m.end():
        before_date = [e for e in ends if m.start() + e <= date.start()]
        ends = before_date + [e for e in ends if e not in before_date]  # the rest last: "+44-20-2000-0801"
    for end in ends:
        d = _digits(text[:end].replace("(0)", ""))
        d = d if plus else d[2:]
        nanp = d[:1] == "1"
        if len(d) > (11 if nanp else 15):
            continue
        if len(d) < 8 or not _calling_code_ok(d) or (nanp and (len(d) != 11 or not _nanp_ok(d[1:]))):
            return
        if not plus and (_identifier_before(s, m.start()) or not (
                any(not c.isdigit() for c in text[:end]) or _before(s, m.start(), _PHONE_WORDS))):
            return
        out.append((m.start(), m.start() + end, "PHONE", _P_PHONE, _phone_value(d if plus else "00" + d)))
        return


def _detect_context_numbers(s: str, lo: int, hi: int, out: list[_Candidate]) -> None:
    """Digit clusters whose kind only the word before them tells: "tel: 4155550123", "SSN 123456789"."""
    for m in _DIGIT_CLUSTER.finditer(s, lo, hi):
        text = m.group()
        date = _DATE_INSIDE.search(text)
        if date is not None:  # "tel: 4155550123 2024-03-15": the number ends before the date
            text = text[:date.start()].rstrip(" .-/(")
        d = _digits(text)
        if len(d) == 9 and _ssn_ok(d) and _before(s, m.start(), _SSN_WORDS):
            out.append((m.start(), m.start() + len(text), "SSN", _P_SSN_CONTEXT, d))
        elif ((9 if text.isdigit() else 7) <= len(d) <= 15 and len(set(d)) > 1
              and _before(s, m.start(), _PHONE_WORDS) and not _identifier_before(s, m.start())):
            out.append((m.start(), m.start() + len(text), "PHONE", _P_PHONE_CONTEXT, _phone_value(d)))


def _in_grid(s: str, start: int, end: int) -> bool:
    """Whether ``s[start:end]`` is a row of spaced digits in a block of them (a matrix, a sudoku, a table): it
    opens its line, and the line above or below opens with such a row too."""
    line_start = s.rfind("\n", 0, start) + 1
    if s[line_start:start].strip():
        return False
    if line_start > 0:
        above = s[s.rfind("\n", 0, line_start - 1) + 1:line_start - 1].lstrip(" \t")
        if _GRID_ROW.match(above):
            return True
    below_start = s.find("\n", end)
    return below_start >= 0 and _GRID_ROW.match(s[below_start + 1:below_start + 200].lstrip(" \t")) is not None


def _detect_spaced(s: str, lo: int, hi: int, out: list[_Candidate]) -> None:
    """Digit-by-digit spaced numbers ("1 2 3 - 4 5 - 6 7 8 9"): classified by length and validators."""
    for m in _SPACED_DIGITS.finditer(s, lo, hi):
        d = _digits(m.group())
        if len(_DIGIT_RUN.findall(m.group())) < len(d) - 2 or set(d) <= {"0", "1"} or _in_grid(
                s, m.start(), m.end()):
            continue  # multi-digit groups are the other detectors' business; bits and grids are no PII
        n = len(d)
        if n == 9 and _ssn_ok(d) and d not in ("123456789", "987654321"):
            out.append((m.start(), m.end(), "SSN", _P_SSN_SPACED, d))
        elif (n == 10 and _nanp_ok(d)) or (n == 11 and d[0] == "1" and _nanp_ok(d[1:])) or (
                10 <= n <= 11 and d[0] == "0" and d[1] != "0"):
            out.append((m.start(), m.end(), "PHONE", _P_PHONE_CONTEXT, _phone_value(d)))


def _detect_ssn(s: str, lo: int, hi: int, out: list[_Candidate]) -> None:
    for m in _SSN.finditer(s, lo, hi):
        d = m.group()[:3] + m.group(2) + m.group(3)
        # An invalid SSN still shadows what is inside it: 000-12-3456 is no phone number either.
        out.append((m.start(), m.end(), "SSN" if _ssn_ok(d) else _SHADOW, _P_SSN, d))


def _detect_card(s: str, lo: int, hi: int, out: list[_Candidate]) -> None:
    for m in _CARD.finditer(s, lo, hi):
        runs = [(r.start(), r.end()) for r in _DIGIT_RUN.finditer(m.group())]
        sizes = [b - a for a, b in runs]
        if 13 <= sum(sizes) <= 19 and _card_layout_ok(sizes):  # card-shaped: nothing weaker is read inside it
            out.append((m.start(), m.end(), _SHADOW, _P_CARD - 1, ""))
        if sizes.count(1) > 19:
            continue  # long digit-by-digit runs (counting lists, bit strings) are no card, and costly to window
        digits = _digits(m.group())
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        i = 0
        while i < len(runs):  # the longest valid card starting at each group, left to right
            best = None
            if digits[offsets[i]] in "23456":
                for j in range(i, len(runs)):
                    total = offsets[j + 1] - offsets[i]
                    if total > 19:
                        break
                    if total >= 13:
                        d = digits[offsets[i]:offsets[j + 1]]
                        if (_card_prefix_ok(d) and _card_layout_ok(sizes[i:j + 1]) and _luhn_ok(d)
                                and not (max(sizes[i:j + 1]) == 1 and _in_grid(s, m.start(), m.end()))):
                            best = (j, d)
            if best is None or _identifier_before(s, m.start() + runs[i][0], bare_hash=False):
                i += 1
                continue
            j, d = best
            out.append((m.start() + runs[i][0], m.start() + runs[j][1], "CARD", _P_CARD, d))
            i = j + 1


def _detect_ipv4(s: str, lo: int, hi: int, out: list[_Candidate]) -> None:
    for m in _IPV4.finditer(s, lo, hi):
        addr = m.group()
        octets = [int(x) for x in addr.split(".")]
        if max(octets) > 255 or any(len(x) > 1 and x[0] == "0" for x in addr.split(".")):
            continue
        bits = int.from_bytes(bytes(octets), "big")
        netmask = octets[0] == 255 and (bits | (bits - 1)) == 0xFFFFFFFF  # contiguous leading ones
        if netmask or bits == 0 or _before(s, m.start(), _NUMBERING_WORDS, 16):
            continue
        out.append((m.start(), m.end(), "IP", _P_IP, addr))


def _detect_numbers(s: str, low: str, out: list[_Candidate]) -> None:
    """Run, around each numeric chunk, the numeric detectors whose shape its digit groups allow."""
    for chunk in _CHUNK.finditer(s):
        text = chunk.group()
        a, b = chunk.span()
        lo, hi = max(0, a - 3), min(len(s), b + 4)  # room for "+", "(", "00" before and lookaheads after
        if "." in text:
            _detect_ipv4(s, lo, hi, out)
        runs = _DIGIT_RUN.findall(text)
        n = sum(map(len, runs))
        if n < 7:
            continue
        sizes = [len(r) for r in runs]
        shape = "," + ",".join(map(str, sizes)) + ","
        if n >= 13:
            _detect_card(s, lo, hi, out)
        if ",3,2,4," in shape:
            _detect_ssn(s, lo, hi, out)
        if "+" in s[lo:a] or text.startswith("00") or ",3,3,4," in shape or text[0] == "0":
            _detect_phone(s, lo, hi, out)
        if _before(s, a, _CONTEXT_WORDS):
            _detect_context_numbers(s, lo, hi, out)
        if sizes.count(1) >= 9:
            _detect_spaced(s, lo, hi, out)


def _detect_iban(s: str, low: str, out: list[_Candidate]) -> None:
    done = 0
    for anchor in _IBAN_ANCHOR.finditer(s):
        start = anchor.start() - (2 if s[anchor.start() - 1].isalpha() else 3)
        if start < done:
            continue
        m = _IBAN.match(s, start)
        if m is None:
            continue
        text = m.group()
        length = _IBAN_LENGTHS.get(text[:2].upper())
        if length is None:
            continue
        chars: list[str] = []
        end = 0
        for i, c in enumerate(text):
            if c.isalnum():
                chars.append(c.upper())
                if len(chars) == length:
                    end = i + 1
                    break
        if not end or (end < len(text) and text[end].isalnum()):
            continue
        written = text[:end]
        groups = _IBAN_SEPARATORS.split(written)
        if not (written.isupper() or written.islower()) or not (
                len(groups) == 1 or (all(len(g) == 4 for g in groups[:-1]) and len(groups[-1]) <= 4)):
            continue  # IBANs are written compact or in groups of four, in one case
        iban = "".join(chars)
        kind = "IBAN" if _iban_ok(iban) else _SHADOW  # a mistyped IBAN holds no phone number either
        out.append((start, start + end, kind, _P_IBAN, iban))
        done = start + end


def _detect_ipv6(s: str, low: str, out: list[_Candidate]) -> None:
    if "::" not in s and s.count(":") < 7:
        return
    done = 0
    for anchor in _IPV6_ANCHOR.finditer(s):
        if anchor.start() < done:
            continue
        m = _IPV6.search(s, max(done, anchor.start() - 40), anchor.end() + 50)
        if m is None or m.start() > anchor.start():
            continue
        done = m.end()
        addr = m.group()
        if addr.endswith(":") and not addr.endswith("::"):
            addr = addr[:-1]
        if addr.count(":") < 2 or not any(c.isdigit() for c in addr.split("%")[0]):
            continue
        try:
            value = ipaddress.IPv6Address(addr).compressed
        except ValueError:
            continue
        out.append((m.start(), m.start() + len(addr), "IP", _P_IP, value))


def _detect_secret(s: str, low: str, out: list[_Candidate]) -> None:
    for hints, pattern, group, valid in _SECRET_PATTERNS:
        if hints and not any(h in s for h in hints):
            continue
        for m in pattern.finditer(s):
            value = m.group(group)
            if valid is None or valid(value):
                out.append((m.start(group), m.end(group), "SECRET", _P_SECRET, value))
    for word in _KEY_WORD.finditer(low):
        _assignment(s, low, word.start(), out)


def _assignment(s: str, low: str, at: int, out: list[_Candidate]) -> None:
    m = _ASSIGNMENT.match(s, at)
    if m is None:
        return
    if not m.group("pw"):
        # A bare "key" needs "api_", "secret ", "private-"… before it; a glued name ("monkey", "bitoken")
        # counts only in camelCase ("authToken") or after a known qualifier ("accesstoken").
        qualified = _KEY_QUALIFIER.search(low, max(0, at - 16), at) is not None
        glued = at > 0 and low[at - 1].isalpha()
        camel = glued and s[at].isupper() and s[at - 1].islower()
        if (m.group("tok").lower().startswith("key") and not qualified) or (glued and not (camel or qualified)):
            return
    value = m.group("value").rstrip(".")
    if m.group("pw"):
        # Prose is not a password: "password is case-sensitive", "Password: minimum 8 characters".
        prose = (m.group("op") is None and not any(c.isdigit() for c in value)) or (
            value.isalpha() and _WORD_FOLLOWS.match(s, m.start("value") + len(value)) is not None)
        ok = not prose and _password_ok(value)
    else:
        ok = _random_looking(value) and not _CODEISH.search(value)
    if ok:
        out.append((m.start("value"), m.start("value") + len(value), "SECRET", _P_SECRET_GENERIC, value))


_DETECTORS = (_detect_secret, _detect_email, _detect_iban, _detect_ipv6, _detect_numbers)


# -- scanning and redaction ------------------------------------------------------------------------------

def _resolve(candidates: list[_Candidate]) -> list[_Candidate]:
    """Keep the strongest non-overlapping candidates (priority, then length, then position), sorted by start."""
    candidates.sort(key=lambda c: (-c[3], c[0] - c[1], c[0]))
    starts: list[int] = []
    kept: list[_Candidate] = []
    for c in candidates:
        i = bisect.bisect_right(starts, c[0])
        if (i > 0 and kept[i - 1][1] > c[0]) or (i < len(kept) and kept[i][0] < c[1]):
            continue
        starts.insert(i, c[0])
        kept.insert(i, c)
    return kept


def _scan(text: str) -> list[tuple[int, int, str, str]]:
    """Findings as ``(start, end, kind, normalized value)`` in original offsets, non-overlapping, by start."""
    folded, index = _fold(text)
    low = folded.lower()
    candidates: list[_Candidate] = []
    for detect in _DETECTORS:
        detect(folded, low, candidates)
    if not candidates:
        return []
    found: list[tuple[int, int, str, str]] = []
    for start, end, kind, _, value in _resolve(candidates):
        if kind == _SHADOW:
            continue
        if index is not None:
            start, end = index[start], index[end - 1] + 1
        found.append((start, end, kind, value))
    return found


def find_pii(text: str) -> list[Finding]:
    """Every PII or secret span of ``text``, non-overlapping and sorted by start."""
    return [Finding(kind, start, end) for start, end, kind, _ in _scan(text)]


def _placeholder(kind: str, value: str, numbering: dict[tuple[str, str], str], counters: dict[str, int]) -> str:
    key = (kind, value)
    placeholder = numbering.get(key)
    if placeholder is None:
        counters[kind] = counters.get(kind, 0) + 1
        placeholder = numbering[key] = f"<{kind}_{counters[kind]}>"
    return placeholder


def _apply(text: str, found: list[tuple[int, int, str, str]], numbering: dict[tuple[str, str], str],
           counters: dict[str, int]) -> str:
    pieces: list[str] = []
    pos = 0
    for start, end, kind, value in found:
        pieces.append(text[pos:start])
        pieces.append(_placeholder(kind, value, numbering, counters))
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def redact_text(text: str, numbering: dict[tuple[str, str], str], counters: dict[str, int]) -> str:
    """``text`` with each finding replaced by its typed placeholder, numbered through ``numbering``/``counters``.

    ``numbering`` maps ``(kind, normalized value)`` to a placeholder and ``counters`` holds the last number
    used per kind; pass the same two dicts for every text of one request so a value keeps its placeholder.
    """
    found = _scan(text)
    return _apply(text, found, numbering, counters) if found else text


class _Pass:
    """One walk over a request: counts findings per kind and, when rewriting, redacts with shared numbering."""

    __slots__ = ("rewrite", "numbering", "counters", "tally")

    def __init__(self, rewrite: bool) -> None:
        self.rewrite = rewrite
        self.numbering: dict[tuple[str, str], str] = {}
        self.counters: dict[str, int] = {}
        self.tally: dict[str, int] = {}

    def text(self, text: str, context: str = "") -> str:
        """Redact (or count) one string; ``context`` is a JSON key scanned in front of it as a hint."""
        if not text:
            return text
        if context:
            prefix = f"{context}: "
            combined = prefix + text
            found = []
            for start, end, kind, value in _scan(combined):
                if end <= len(prefix):
                    continue
                if start < len(prefix):  # a span reaching into the key: redact only the value's share
                    start, value = len(prefix), unicodedata.normalize("NFKC", combined[len(prefix):end])
                found.append((start - len(prefix), end - len(prefix), kind, value))
        else:
            found = _scan(text)
        for _, _, kind, _ in found:
            self.tally[kind] = self.tally.get(kind, 0) + 1
        if not found or not self.rewrite:
            return text
        return _apply(text, found, self.numbering, self.counters)

    def json_or_text(self, text: str) -> str:
        """Tool arguments and tool results: walked as JSON when they parse (escapes decoded, validity kept)."""
        if not text or text.lstrip()[:1] not in ("{", "["):
            return self.text(text)
        try:
            value = json.loads(text)
        except ValueError:
            return self.text(text)
        new = self._json(value, "")
        return json.dumps(new, ensure_ascii=False) if self.rewrite and new != value else text

    def _json(self, value: Any, key: str) -> Any:
        if isinstance(value, str):
            return self.text(value, key)
        if isinstance(value, bool) or not isinstance(value, (int, dict, list)):
            return value
        if isinstance(value, int):
            red = self.text(str(value), key)
            return red if red != str(value) else value
        if isinstance(value, list):
            return [self._json(v, key) for v in value]
        return {self.text(k): self._json(v, k) for k, v in value.items()}

    def value(self, value: Any) -> Any:
        """A JSON value sent upstream as it is (tool definitions, ``response_format``, ``metadata``, ``stop``):
        every string and key in it; the value itself when nothing was found."""
        if not value:
            return value
        before = sum(self.tally.values())
        new = self._json(value, "")
        return new if self.rewrite and sum(self.tally.values()) != before else value

    def part(self, p: ContentPart) -> ContentPart:
        if p.text:
            t = self.text(p.text)
            return p if t is p.text else msgspec.structs.replace(p, text=t)
        if p.image_url is not None:
            url = p.image_url.get("url")
            if isinstance(url, str) and not url.startswith("data:"):  # a data: URL's payload is base64
                new = self.text(url)
                if new is not url:
                    return msgspec.structs.replace(p, image_url={**p.image_url, "url": new})
        elif p.file is not None and isinstance(p.file.get("filename"), str):
            name = p.file["filename"]
            new = self.text(name)
            if new is not name:
                return msgspec.structs.replace(p, file={**p.file, "filename": new})
        return p

    def message(self, m: Message) -> Message:
        updates: dict[str, Any] = {}
        if isinstance(m.content, str):
            new = self.json_or_text(m.content) if m.role in ("tool", "function") else self.text(m.content)
            if new is not m.content:
                updates["content"] = new
        elif m.content:
            parts = [self.part(p) for p in m.content]
            if any(a is not b for a, b in zip(parts, m.content)):
                updates["content"] = parts
        if m.tool_calls:
            calls = []
            for tc in m.tool_calls:
                fn = tc.function
                if fn is not None and (fn.arguments or fn.name):
                    args = self.json_or_text(fn.arguments) if fn.arguments else fn.arguments
                    name = self.text(fn.name) if fn.name else fn.name
                    if args is not fn.arguments or name is not fn.name:
                        tc = msgspec.structs.replace(tc, function=msgspec.structs.replace(fn, arguments=args,
                                                                                          name=name))
                calls.append(tc)
            if any(a is not b for a, b in zip(calls, m.tool_calls)):
                updates["tool_calls"] = calls
        for field in ("refusal", "name"):
            old = getattr(m, field)
            if old:
                new = self.text(old)
                if new is not old:
                    updates[field] = new
        return msgspec.structs.replace(m, **updates) if updates else m

    def request(self, request: ChatRequest) -> ChatRequest:
        messages = [self.message(m) for m in request.messages]
        updates: dict[str, Any] = {}
        if any(a is not b for a, b in zip(messages, request.messages)):
            updates["messages"] = messages
        for field in ("tools", "tool_choice", "response_format", "stop", "metadata"):
            old = getattr(request, field)
            new = self.value(old)
            if new is not old:
                updates[field] = new
        if request.user:
            user = self.text(request.user)
            if user is not request.user:
                updates["user"] = user
        return msgspec.structs.replace(request, **updates) if updates else request


def redact_request(request: ChatRequest) -> tuple[ChatRequest, dict[str, int]]:
    """The request with every prompt text redacted (one numbering across messages) and findings per kind."""
    walk = _Pass(rewrite=True)
    redacted = walk.request(request)
    return redacted, walk.tally


def scan_request(request: ChatRequest) -> dict[str, int]:
    """Findings per kind in every prompt text of the request, without rewriting anything."""
    walk = _Pass(rewrite=False)
    walk.request(request)
    return walk.tally
