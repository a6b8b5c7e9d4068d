"""The reconnecting event stream: what the sync and async iterators share.

A stream remembers the last stored ``seq`` it yielded. After a dropped connection (a transport
error, a retryable error answer, or an end that ``until_idle`` did not ask for) it waits with
exponential backoff (the server's ``retry:`` value, if any, as the base) and reconnects with
``Last-Event-ID: <last seq>``; stored events at or below that seq are never yielded twice. The
failure counter resets whenever an event arrives, so only consecutive failures are bounded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from openbuda.client._errors import ApiError, ConnectionFailed
from openbuda.client._http import connection_failed
from openbuda.client._models import Event
from openbuda.client._sse import ServerSentEvent

__all__ = ["StreamPolicy", "StreamState", "event_from_sse"]


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """How hard a stream tries to stay connected."""

    max_retries: int = 8
    """Consecutive failed connections before the stream gives up with ``ConnectionFailed``:
    with the default backoff about 36 s, long enough for a busy server to restart."""
    backoff_base: float = 0.25
    """Seconds before the first reconnection (the server's ``retry:`` overrides it)."""
    backoff_max: float = 10.0
    read_timeout: float = 60.0
    """Seconds without a byte (the server sends a heartbeat every 15 s) before reconnecting."""


class StreamState:
    """One logical stream across its connections."""

    def __init__(
        self,
        base_url: str,
        session_id: str,
        *,
        after: int | None,
        until_idle: bool,
        policy: StreamPolicy,
    ) -> None:
        self.base_url = base_url
        self.session_id = session_id
        self.last_seq = after
        self.until_idle = until_idle
        self.policy = policy
        self.failures = 0
        self.connections = 0
        self.retry_ms: int | None = None

    def request_parts(self) -> tuple[dict[str, str], dict[str, str]]:
        """The query and headers of the next connection."""
        self.connections += 1
        params = {"until": "idle"} if self.until_idle else {}
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_seq is not None:
            headers["Last-Event-ID"] = str(self.last_seq)
        return params, headers

    def accept(self, sse: ServerSentEvent) -> Event | None:
        """The event to yield for ``sse``, or ``None`` for one already yielded."""
        if sse.retry is not None:
            self.retry_ms = sse.retry
        event = event_from_sse(sse)
        if event.seq is not None:
            if self.last_seq is not None and event.seq <= self.last_seq:
                return None
            self.last_seq = event.seq
        self.failures = 0
        return event

    def ended(self) -> bool:
        """The server closed the stream cleanly: ``True`` when the stream is done."""
        return self.until_idle

    def failed(self, error: Exception | None) -> float:
        """Count a failed or dropped connection; the delay before the next one.

        Raises ``ConnectionFailed`` once ``max_retries`` consecutive connections failed, and
        an error answer that is not retryable (401, 404, …) at once.
        """
        if isinstance(error, ApiError) and not error.retryable:
            raise error
        self.failures += 1
        if self.failures > self.policy.max_retries:
            raise self._gave_up(error) from error
        base = self.retry_ms / 1000 if self.retry_ms is not None else self.policy.backoff_base
        return float(min(self.policy.backoff_max, base * 2 ** (self.failures - 1)))

    def _gave_up(self, error: Exception | None) -> Exception:
        if isinstance(error, ApiError):
            return error
        if isinstance(error, httpx.TransportError):
            cause = connection_failed(self.base_url, error)
            message = cause.message
        else:
            message = "the server kept closing the stream"
        return ConnectionFailed(
            f"the event stream of session {self.session_id!r} gave up after "
            f"{self.policy.max_retries} reconnections: {message}",
            url=self.base_url,
        )


def event_from_sse(sse: ServerSentEvent) -> Event:
    """Parse one SSE message: a whole event as JSON (``{seq, id, type, task_id?, at, data}``),
    or just its data (the type from the ``event:`` field, ``seq`` from ``id:``)."""
    try:
        payload: Any = json.loads(sse.data)
    except ValueError:
        payload = {"text": sse.data}
    body: dict[str, Any]
    if isinstance(payload, dict) and isinstance(payload.get("type"), str):
        body = dict(payload)
        if not isinstance(body.get("data"), dict):
            body["data"] = {}
    else:
        data = payload if isinstance(payload, dict) else {"value": payload}
        body = {"type": sse.event, "data": data}
    if body.get("seq") is None and sse.id is not None and sse.id.isdigit():
        body["seq"] = int(sse.id)
    task_id = body["data"].get("task_id")
    if body.get("task_id") is None and isinstance(task_id, str):
        body["task_id"] = task_id
    return Event.model_validate(body)
