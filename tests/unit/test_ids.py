"""Ids and names: what each pattern accepts and refuses, and the messages of the checks."""

from __future__ import annotations

import pytest

from shared.ids import SAFE_CATALOG_ID, SAFE_KEY_ID, SAFE_NAME, SAFE_REQUEST_ID, check_catalog_id, check_name


@pytest.mark.parametrize("value, ok", [
    ("acme", True), ("a", True), ("team-1_x", True), ("0day", True), ("a" * 63, True),
    ("", False), ("Acme", False), ("-lead", False), ("_lead", False), ("a.b", False), ("a b", False),
    ("a" * 64, False), ("tenant>", False),
])
def test_names_are_safe_subject_tokens(value, ok):
    assert bool(SAFE_NAME.match(value)) is ok


@pytest.mark.parametrize("value, ok", [
    ("0123456789abcdef", True), ("0123456789ABCDEF", False), ("0123456789abcde", False),
    ("0123456789abcdef0", False), ("0123456789abcdeg", False),
])
def test_key_ids_are_sixteen_lowercase_hex_digits(value, ok):
    assert bool(SAFE_KEY_ID.match(value)) is ok


@pytest.mark.parametrize("value, ok", [
    ("req_0f3a", True), ("job_0f3a", True), ("A-b_9", True), ("x" * 64, True),
    ("", False), ("x" * 65, False), ("req.1", False), ("req/1", False), ("req 1", False),
])
def test_request_ids(value, ok):
    assert bool(SAFE_REQUEST_ID.match(value)) is ok


@pytest.mark.parametrize("value, ok", [
    ("gpt-4o", True), ("anthropic.claude-3-5:0", True), ("models/gemini-1.5-pro", True), ("A" * 128, True),
    ("", False), ("-gpt", False), (".hidden", False), ("A" * 129, False), ("gpt 4", False), ("gpt*", False),
])
def test_catalog_ids_allow_provider_spellings(value, ok):
    assert bool(SAFE_CATALOG_ID.match(value)) is ok


def test_check_name_returns_a_safe_name_and_names_what_it_refused():
    assert check_name("acme", "tenant") == "acme"
    with pytest.raises(ValueError) as exc:
        check_name("Acme Corp", "tenant")
    assert str(exc.value) == ("tenant 'Acme Corp' must be 1-63 lowercase letters, digits, '-' or '_' "
                              "(it becomes part of KV keys and NATS subjects)")
    with pytest.raises(ValueError, match="^team None must be"):
        check_name(None, "team")  # type: ignore[arg-type]


def test_check_catalog_id_names_what_it_refused():
    assert check_catalog_id("gpt-4o", "model names") == "gpt-4o"
    with pytest.raises(ValueError) as exc:
        check_catalog_id("gpt 4o", "deployment ids")
    assert str(exc.value) == "deployment ids use letters, digits and . _ : / -"
