"""Ids sort by creation time; errors carry stable codes that map to HTTP statuses."""

from __future__ import annotations

import pytest

from openbuda.domain import errors
from openbuda.domain.ids import PREFIXES, has_prefix, new_id
from openbuda.domain.validation import check_limit, check_text


def test_ids_are_prefixed_unique_and_time_ordered() -> None:
    ids = [new_id("session") for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(has_prefix(i, "session") and i.startswith("ses_") for i in ids)
    assert not has_prefix(ids[0], "task")
    assert len(set(PREFIXES.values())) == len(PREFIXES)


def test_every_error_code_has_one_class_and_api_codes_have_a_status() -> None:
    for code, status in errors.HTTP_STATUS.items():
        assert 400 <= status < 600
        cls = errors.error_for_code(code)
        if code not in ("method_not_allowed", "unsupported_media_type"):
            assert cls.code == code
    assert errors.error_for_code("no_such_code") is errors.OpenbudaError
    not_found = errors.NotFound.of("session", "ses_1")
    assert not_found.to_json() == {
        "code": "not_found",
        "message": "session 'ses_1' not found",
        "details": {"id": "ses_1"},
    }
    assert errors.ModelError("x").retryable and not errors.NoModel("x").retryable
    assert errors.RateLimited("x").retryable and not errors.Conflict("x").retryable


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a\x00b", "NUL"),
        ("a\ud800b", "lone surrogate"),
        ("x" * 201, "limit is 200"),
        ("  ", "empty"),
    ],
)
def test_bad_text_is_refused_with_a_clear_message(text: str, problem: str) -> None:
    with pytest.raises(errors.ValidationFailed) as raised:
        check_text(text, "title", "session_title", allow_empty=False)
    assert problem in raised.value.message


def test_limits() -> None:
    assert check_limit(500) == 500
    for bad in (0, 501):
        with pytest.raises(errors.ValidationFailed):
            check_limit(bad)
