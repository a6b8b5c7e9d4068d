"""Validation of user-supplied text and limits (API.md, Conventions)."""

from __future__ import annotations

import re
from typing import Final

from openbuda.domain.errors import ValidationFailed

__all__ = [
    "LIMITS",
    "check_limit",
    "check_text",
]

LIMITS: Final[dict[str, int]] = {
    "message_text": 100_000,
    "agent_name": 100,
    "agent_description": 2_000,
    "agent_instructions": 100_000,
    "session_title": 200,
    "external_user_id": 200,
    "answer_text": 100_000,
    "question_prompt": 10_000,
}

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: str, field: str, limit_name: str, *, allow_empty: bool = True) -> str:
    """Return ``value`` if it is acceptable text for ``field``; raise ``ValidationFailed``."""
    limit = LIMITS[limit_name]
    if "\x00" in value:
        raise ValidationFailed(f"{field} contains a NUL character", details={"field": field})
    if _LONE_SURROGATE.search(value):
        raise ValidationFailed(f"{field} contains a lone surrogate", details={"field": field})
    if len(value) > limit:
        raise ValidationFailed(
            f"{field} is {len(value)} characters long; the limit is {limit}",
            details={"field": field, "limit": limit, "length": len(value)},
        )
    if not allow_empty and not value.strip():
        raise ValidationFailed(f"{field} must not be empty", details={"field": field})
    return value


def check_limit(limit: int, *, maximum: int = 500) -> int:
    if limit < 1 or limit > maximum:
        raise ValidationFailed(
            f"limit must be between 1 and {maximum}, got {limit}",
            details={"field": "limit", "maximum": maximum},
        )
    return limit
