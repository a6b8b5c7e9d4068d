"""Row codecs of the SQL store: JSON text, token estimates, cursors, URLs."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from openbuda.domain.errors import InvalidRequest
from openbuda.stores import normalize_url
from openbuda.stores._codec import decode_cursor, dump_json, encode_cursor, token_estimate


def test_json_is_compact_and_keeps_unicode() -> None:
    assert dump_json({"a": [1, "é✓"], "b": None}) == '{"a":[1,"é✓"],"b":null}'


def test_json_escapes_lone_surrogates_instead_of_failing() -> None:
    text = dump_json({"text": "bad \ud800 half"})
    text.encode("utf-8")
    assert json.loads(text) == {"text": "bad \ud800 half"}


def test_tokens_count_only_conversation_events() -> None:
    assert token_estimate("message", "x" * 40) == 11
    assert token_estimate("tool.result", "") == 1
    assert token_estimate("task.status", "x" * 400) == 0


def _raw(value: list[str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_cursors_round_trip() -> None:
    moment = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    cursor = encode_cursor("ses", moment, "ses_1")
    assert "=" not in cursor
    assert decode_cursor("ses", cursor) == (moment, "ses_1")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "%%%",
        encode_cursor("tsk", datetime(2025, 1, 1, tzinfo=UTC), "tsk_1"),
        "WyJzZXMiLCIyMDI1LTAxLTAxVDAwOjAwOjAwIiwiaWQiXQ",  # a naive time
        "WyJzZXMiLDEsImlkIl0",  # a number for the time
        "eyJzZXMiOjF9",  # an object
        "/w",  # not UTF-8
        _raw(["ses", "2025-01-01T00:00:00+00:00", "ses_\x00"]),  # a NUL in the id
        _raw(["ses", "0001-01-01T00:00:00+01:00", "ses_1"]),  # before year 1 in UTC
        _raw(["ses", "9999-12-31T23:59:59-01:00", "ses_1"]),  # after year 9999 in UTC
        _raw(["ses", "1900-01-01T00:00:00+00:00", "ses_1"]),  # before any stored time
    ],
)
def test_bad_cursors_are_invalid_requests(cursor: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_cursor("ses", cursor)
    assert caught.value.details == {"cursor": cursor}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("sqlite+aiosqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_urls_are_normalised_to_async_drivers(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_a_url_needs_a_scheme() -> None:
    with pytest.raises(ValueError, match="not a database URL"):
        normalize_url("openbuda.db")
