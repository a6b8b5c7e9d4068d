"""What the edge refuses before a service sees it: oversized bodies (413), bodies that are not
JSON (415), text with NUL characters or lone surrogates (422), malformed ids (404), cursors and
headers (400), and more requests per minute than an API key may make (429).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Callable
from email.message import Message
from typing import Any, Final

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from openbuda.api.errors import error_response
from openbuda.domain.errors import (
    InvalidRequest,
    NotFound,
    OpenbudaError,
    RateLimited,
    ValidationFailed,
)

__all__ = [
    "BodyLimitMiddleware",
    "RateLimiter",
    "UnsupportedMediaType",
    "check_clean",
    "check_cursor",
    "check_query_text",
    "path_id",
    "require_json",
]

_ID: Final = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")
_JSON: Final = b"application/json"
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


# ---------------------------------------------------------------------------------------------
# Bodies


class UnsupportedMediaType(OpenbudaError):
    code = "unsupported_media_type"


class BodyLimitMiddleware:
    """Refuse request bodies over the limit with 413 ``too_large``, before any parsing.

    The body is read (up to the limit) here and handed on in one piece, so a client that lies
    in ``Content-Length`` or sends chunks without one is held to the same limit. Routes for
    which ``streamed_route(method, path)`` holds (Drive uploads) get the body as it arrives and
    apply their own limits.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        large_limit: int,
        large_route: Callable[[str, str], bool],
        streamed_route: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.large_limit = large_limit
        self.large_route = large_route
        self.streamed_route = streamed_route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if self.streamed_route is not None and self.streamed_route(method, path):
            await self.app(scope, receive, send)
            return
        limit = self.large_limit if self.large_route(method, path) else self.limit
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(limit)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(limit)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not any(name == b"content-type" for name, _ in scope.get("headers", ())):
            # a body without a type is taken as JSON, the only kind the API reads
            scope = {**scope, "headers": [*scope["headers"], (b"content-type", _JSON)]}
        delivered = False

        async def replay() -> AsgiMessage:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> ASGIApp:
    return error_response(
        "too_large",
        f"the request body is larger than {limit} bytes",
        {"limit_bytes": limit},
    )


async def require_json(request: Request) -> None:
    """A dependency of the routes that take a JSON body: any other content type is a 415."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return  # no body (``BodyLimitMiddleware`` types the others as JSON)
    parsed = Message()
    parsed["content-type"] = content_type
    subtype = parsed.get_content_subtype()
    if parsed.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    ):
        return
    if not await request.body():
        return
    raise UnsupportedMediaType(
        f"the body must be JSON (Content-Type: application/json), not {content_type!r}",
        details={"content_type": content_type},
    )


def check_clean(value: Any, where: str = "body") -> None:
    """Raise ``ValueError`` for a NUL character or a lone surrogate anywhere in ``value``."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where} contains a NUL character")
        if _LONE_SURROGATE.search(value):
            raise ValueError(f"{where} contains a lone surrogate")
    elif isinstance(value, dict):
        for key, item in value.items():  # pyright: ignore[reportUnknownVariableType]
            check_clean(key, where)
            check_clean(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
            check_clean(item, f"{where}[{index}]")


# ---------------------------------------------------------------------------------------------
# Path and query


def path_id(kind: str, value: str) -> str:
    """An id from the path; one that cannot exist (bad characters, too long) is a 404."""
    if not _ID.match(value):
        raise NotFound.of(kind, value)
    return value


def check_query_text(value: str | None, name: str) -> str | None:
    if value is not None:
        try:
            check_clean(value, name)
        except ValueError as error:
            raise ValidationFailed(str(error), details={"field": name}) from None
    return value


def check_cursor(cursor: str | None) -> str | None:
    """Refuse cursors that no list ever hands out (the lists check the rest: 400)."""
    if cursor is None:
        return None
    problem = len(cursor) > 1000 or "\x00" in cursor
    if not problem:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            problem = b"\x00" in raw or b"\\u0000" in raw
        except (binascii.Error, ValueError):
            problem = False  # not base64 at all: the list says so
    if problem:
        raise InvalidRequest(f"invalid cursor {cursor[:100]!r}", details={"cursor": cursor[:100]})
    return cursor


# ---------------------------------------------------------------------------------------------
# Rate limits


class RateLimiter:
    """A token bucket per API key: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key_id: str) -> None:
        """Take one token for ``key_id``, or raise ``RateLimited`` saying when to retry."""
        now = self._clock()
        tokens, last = self._buckets.get(key_id, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            retry_after = math.ceil((1.0 - tokens) / self._rate)
            raise RateLimited(
                f"more than {self.per_minute} requests per minute with this API key; "
                f"retry in {retry_after} s",
                details={"limit_per_min": self.per_minute, "retry_after_s": retry_after},
            )
        self._buckets[key_id] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # forget keys that are full again
            full = [
                k
                for k, (t, at) in self._buckets.items()
                if t + (now - at) * self._rate >= self.per_minute
            ]
            for key in full:
                del self._buckets[key]
