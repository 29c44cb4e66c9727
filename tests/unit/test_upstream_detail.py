"""The operator-only detail of a failed upstream call: status, request id and body, scrubbed, then cut."""

from __future__ import annotations

from services.workers.adapters.base import DETAIL_LIMIT, upstream_detail, with_detail
from shared.errors import UpstreamAuthFailed

KEY = "gsk_live_4f9d8a7c6b5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c"


def test_the_detail_names_the_status_and_request_id_and_keeps_no_secret():
    body = b'{"error": {"message": "bad key ' + KEY.encode() + b' from 10.1.2.3", "type": "invalid_request_error"}}'
    detail = upstream_detail("groq", 401, body, {"x-request-id": "req_123"})
    assert detail.startswith("groq returned HTTP 401 (upstream request id req_123); body: ")
    assert "invalid_request_error" in detail
    assert KEY not in detail and "10.1.2.3" not in detail


def test_a_secret_at_the_cut_is_scrubbed_before_the_cut():
    padding = "x " * ((DETAIL_LIMIT - 60) // 2)
    detail = upstream_detail("groq", 500, (padding + KEY + " trailing").encode(), {})
    assert len(detail) <= DETAIL_LIMIT
    assert "gsk_live_4f9d" not in detail  # no half of the key survives the cut


def test_with_detail_leaves_the_client_message_alone():
    error = UpstreamAuthFailed("groq returned 401: bad key [redacted]")
    before = error.info()
    assert with_detail(error, "groq", 401, b"{}", {}) is error
    assert error.info() == before and error.detail == "groq returned HTTP 401; body: {}"
