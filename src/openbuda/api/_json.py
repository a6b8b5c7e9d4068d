"""JSON on the wire: compact UTF-8, RFC 3339 UTC times, and never a failure to encode.

Text that reached the store before validation existed may hold a lone surrogate, which UTF-8
cannot encode; such documents are sent with ASCII escapes instead (still valid JSON).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["JsonResponse", "dumps", "rfc3339"]


def dumps(value: Any) -> str:
    """Compact JSON text that is always encodable as UTF-8."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def rfc3339(moment: datetime | None) -> str | None:
    """``2025-01-01T12:00:00.123456Z`` (``None`` stays ``None``)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class JsonResponse(JSONResponse):
    """The app's response class: ``dumps`` instead of Starlette's encoder."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")
