"""``NOT_GIVEN``: the default of update arguments, so that ``None`` can mean "clear it"."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Final, Literal, TypeAlias

__all__ = ["NOT_GIVEN", "NotGiven", "patch_body"]


class _NotGivenType(Enum):
    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NotGiven: TypeAlias = Literal[_NotGivenType.NOT_GIVEN]
NOT_GIVEN: Final = _NotGivenType.NOT_GIVEN


def patch_body(**fields: object) -> dict[str, Any]:
    """The PATCH body: every field that was given (``None`` included)."""
    return {
        name: dict(value) if isinstance(value, Mapping) else value
        for name, value in fields.items()
        if value is not NOT_GIVEN
    }
