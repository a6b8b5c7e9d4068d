"""List parameters (``?limit=`` 1-500, default 50; ``?cursor=``) and pages
(``{"items": [...], "next_cursor": ...}``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final

from fastapi import Query

from openbuda.domain.errors import InvalidRequest

__all__ = ["MAX_LIMIT", "SEQ_MAX", "Cursor", "Limit", "page_of", "seq_cursor"]

MAX_LIMIT: Final = 500
SEQ_MAX: Final = 2**31 - 1
"""Event seqs are 32-bit integers."""

Limit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (1-{MAX_LIMIT}, default 50).")
]
Cursor = Annotated[
    str | None,
    Query(max_length=1000, description="The `next_cursor` of the previous page."),
]


def page_of(items: Sequence[dict[str, Any]], limit: int, cursor: str | None) -> dict[str, Any]:
    """A page of an in-memory list of objects with an ``id``; the cursor is the last id."""
    start = 0
    if cursor is not None:
        ids = [item["id"] for item in items]
        if cursor not in ids:
            raise InvalidRequest(
                f"invalid cursor {cursor[:100]!r}", details={"cursor": cursor[:100]}
            )
        start = ids.index(cursor) + 1
    chunk = list(items[start : start + limit])
    more = start + limit < len(items)
    return {"items": chunk, "next_cursor": chunk[-1]["id"] if more and chunk else None}


def seq_cursor(cursor: str | None, after: int) -> int:
    """The seq to read after: ``cursor`` (a seq a page handed out) wins over ``after``."""
    if cursor is None:
        return after
    if not cursor.isascii() or not cursor.isdigit() or int(cursor) > SEQ_MAX:
        raise InvalidRequest(f"invalid cursor {cursor[:100]!r}", details={"cursor": cursor[:100]})
    return int(cursor)
