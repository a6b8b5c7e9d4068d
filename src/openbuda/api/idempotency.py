"""``Idempotency-Key`` on POSTs: the same key (from the same API key) gives the same result.

The first request with a key runs; its successful (2xx) response is kept for
``idempotency_ttl_seconds`` and replayed, byte for byte, to every later request with that key
(with ``Idempotent-Replayed: true``). Following the IETF draft ``Idempotency-Key`` header:

- the key reused for a different request (method, path or body) is a 422 ``validation_error``;
- a request arriving while the first one with its key still runs is a 409 ``conflict``;
- a request that failed keeps nothing: retrying it with the same key runs it again.

Responses are kept **in this process's memory** (a bounded LRU): they survive neither a
restart nor a move to another API process. A table in the store is the next step.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from starlette.responses import Response

from openbuda.domain.errors import Conflict, InvalidRequest, ValidationFailed

__all__ = ["IDEMPOTENCY_HEADER", "IdempotencyCache", "check_idempotency_key", "fingerprint"]

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
_KEY: Final = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_idempotency_key(value: str | None) -> str | None:
    """The header's value, or 400 when it is not 1-255 visible ASCII characters."""
    if value is None:
        return None
    if not _KEY.match(value):
        raise InvalidRequest(
            f"{IDEMPOTENCY_HEADER} must be 1-255 visible ASCII characters",
            details={"header": IDEMPOTENCY_HEADER},
        )
    return value


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    expires_at: float
    response: Response | None = None
    """``None`` while the first request runs."""


class IdempotencyCache:
    def __init__(
        self,
        ttl_seconds: float,
        *,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def run(
        self,
        owner: str,
        key: str,
        fingerprint: str,
        produce: Callable[[], Awaitable[Response]],
    ) -> Response:
        """``produce()`` once per ``(owner, key)``; its 2xx response again for repeats."""
        now = self._clock()
        self._expire(now)
        slot = (owner, key)
        entry = self._entries.get(slot)
        if entry is not None and entry.response is not None and entry.expires_at <= now:
            del self._entries[slot]
            entry = None
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise ValidationFailed(
                    f"{IDEMPOTENCY_HEADER} {key!r} was used for a different request",
                    details={"idempotency_key": key},
                )
            if entry.response is None:
                raise Conflict(
                    f"a request with {IDEMPOTENCY_HEADER} {key!r} is still being processed",
                    details={"idempotency_key": key},
                )
            self._entries.move_to_end(slot)
            return _replay(entry.response)
        entry = _Entry(fingerprint, now + self.ttl_seconds)
        self._entries[slot] = entry
        try:
            response = await produce()
        except BaseException:
            self._entries.pop(slot, None)
            raise
        if 200 <= response.status_code < 300:
            entry.response = response
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        else:
            self._entries.pop(slot, None)
        return response

    def _expire(self, now: float) -> None:
        while self._entries:
            slot, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            if entry.response is None:  # still running: keep it, look no further
                break
            del self._entries[slot]


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(f"{method} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def _replay(original: Response) -> Response:
    headers = {
        name: value
        for name, value in original.headers.items()
        if name.lower() not in ("content-length",)
    }
    headers["Idempotent-Replayed"] = "true"
    return Response(
        content=original.body,
        status_code=original.status_code,
        headers=headers,
        media_type=original.media_type,
    )
