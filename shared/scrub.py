"""Scrubbing text that came from outside (a provider's error message) before it is shown, stored or logged.

``scrub`` is the one function that does it. A provider's error body may echo
the credential it was sent (``Incorrect API key provided: gsk_…``), a
connection string with a password (``postgres://user:password@db:5432``), or
the names and addresses of the machines behind it; none of that may reach a
client, a trace, the audit database or a log. What it replaces:

- URLs that carry userinfo: the whole authority (``postgres://[redacted]/db``);
  URLs whose host is an IP literal, a one-label name or an internal name:
  the host (``http://[internal]/path``);
- credentials by shape: OpenAI/Anthropic ``sk-…`` (also masked echoes
  ``sk-proj-****abcd``), Groq ``gsk_…``, xAI ``xai-…``, AWS ``AKIA…``/``ASIA…``,
  Google ``AIza…``, GitHub ``ghp_…``/``github_pat_…``, GitLab ``glpat-…``,
  Slack ``xox?-…``, Stripe ``sk_live_…``, Hugging Face ``hf_…``, JWTs;
- ``Bearer``/``Basic``/``Token`` credentials and ``name=value`` pairs whose
  name says secret (``api_key``, ``token``, ``password``, ``Signature``,
  ``Credential``, ``host`` …): the value;
- any other long token mixing letters and digits (32+ characters): a key or
  a hash whose shape is not listed above;
- IPv4 and IPv6 addresses, and host names under internal suffixes
  (``.internal``, ``.local``, ``.svc``, ``.cluster.local``, ``.corp``,
  ``.lan``, ``.home.arpa``, ``.consul`` …) and ``localhost``.

The result is cut to ``limit`` characters after scrubbing, so a cut never
leaves half a secret unmatched. Scrubbing is idempotent.
"""

from __future__ import annotations

import ipaddress
import re

REDACTED = "[redacted]"
INTERNAL = "[internal]"

_INTERNAL_SUFFIXES = (r"internal|local|localdomain|lan|corp|intranet|intra|private|priv|svc|cluster\.local|"
                      r"home\.arpa|consul|localhost")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"

# scheme://[userinfo@]host[:port] — the authority is judged as a whole.
_URL = re.compile(rf"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]{{1,15}}://)(?P<userinfo>[^\s/?#@\"'<>]*@)?"
                  rf"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s/?#:\"'<>\\]+)(?P<port>:\d{{1,5}})?")
_CREDENTIALS = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:"
    r"sk-[A-Za-z0-9_\-*]{6,}|gsk_[A-Za-z0-9*]{10,}|xai-[A-Za-z0-9*]{10,}|hf_[A-Za-z0-9]{16,}|"
    r"glpat-[A-Za-z0-9_\-]{16,}|(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{12,}|AIza[0-9A-Za-z_\-]{20,}|"
    r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abposr]-[A-Za-z0-9\-]{10,}|"
    r"[rsp]k_(?:live|test)_[A-Za-z0-9]{8,}|"
    r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"
    r")")
_SCHEME_CREDENTIAL = re.compile(r"\b(?P<name>Bearer|Basic|Token|Digest)\s+[A-Za-z0-9._~+/=\-*]{6,}", re.I)
# name=value / name: value where the name says secret; weaker names (key, user, host …) only with "=". A value
# scrubbed already is left alone, so scrubbing twice changes nothing.
_SECRET_PAIR = re.compile(
    r"(?P<name>\b(?:[A-Za-z0-9]+[_\-.])*(?:(?:api[_\-]?key|apikey|access[_\-]?key|secret|token|password|passwd|pwd|"
    r"passphrase|credentials?|signature|authorization|cookie)\b[\"']?\s*[=:]|(?:key|sig|auth|session|host|hostname|"
    r"server|addr|address|user|username|login|dsn)\b\s*=)\s*)"
    r"(?P<quote>[\"']?)(?P<value>(?!\[(?:redacted|internal)\])[^\s\"'&,;)\]}]+)", re.I)
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9_])(?=[A-Za-z0-9_]*[0-9])(?=[A-Za-z0-9_]*[A-Za-z])[A-Za-z0-9_]{32,}"
                         r"(?![A-Za-z0-9_])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])\[?(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?\]?(?![\w:])")
_INTERNAL_HOST = re.compile(rf"(?<![\w.\-])(?:(?:{_LABEL}\.)*{_LABEL}\.(?:{_INTERNAL_SUFFIXES})|localhost)"
                            rf"(?![\w\-]|\.\w)", re.I)


def _internal_host(host: str) -> bool:
    """An address nobody outside needs to know: an IP literal, a one-label name, or an internal suffix."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare.split("%")[0])
        return True
    except ValueError:
        pass
    return "." not in bare or _INTERNAL_HOST.fullmatch(bare) is not None


def _url(m: re.Match[str]) -> str:
    if m.group("userinfo"):
        return m.group("scheme") + REDACTED  # the credential and the machine it opens
    host = m.group("host")
    if host not in (REDACTED, INTERNAL) and _internal_host(host):
        return m.group("scheme") + INTERNAL
    return m.group(0)


def _ipv6(m: re.Match[str]) -> str:
    text = m.group(0)
    try:
        ipaddress.IPv6Address(text.strip("[]").split("%")[0])
    except ValueError:
        return text  # a time of day, a MAC-like string, "a::b" prose
    return INTERNAL


def _ipv4(m: re.Match[str]) -> str:
    return INTERNAL if all(int(o) <= 255 for o in m.group(0).split(".")) else m.group(0)


def scrub(text: str, limit: int | None = 500) -> str:
    """``text`` without credentials, connection strings or internal addresses, cut to ``limit`` characters."""
    if not text:
        return text
    out = _URL.sub(_url, text)
    out = _CREDENTIALS.sub(REDACTED, out)
    out = _SCHEME_CREDENTIAL.sub(lambda m: f"{m.group('name')} {REDACTED}", out)
    out = _SECRET_PAIR.sub(lambda m: m.group("name") + m.group("quote") + REDACTED, out)
    out = _LONG_TOKEN.sub(REDACTED, out)
    if ":" in out:
        out = _IPV6.sub(_ipv6, out)
    out = _IPV4.sub(_ipv4, out)
    out = _INTERNAL_HOST.sub(INTERNAL, out)
    return out if limit is None else out[:limit]
