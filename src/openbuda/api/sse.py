"""Server-sent events of a session: replay from the log, then follow live, with no gap and no
duplicate (API.md, Events and the stream).

``follow_session`` subscribes to the broadcaster *before* it reads the stored backlog, then
drops every live event whose seq it has already sent. A live event that skips seqs (another
writer's events arrived first, or the subscription overflowed and was replaced) makes it read
the missing ones from the store. Ephemeral events (``text.delta``, ``tool.output``) are sent
as they come, without an ``id:`` line.

An item ``{"type": "stream.resync"}`` from the subscription (the bus lost notifications, or
one event was too big to carry; ``openbuda.engine.bus``) is never sent: it makes the stream read
the store, as a gap does.

After ``heartbeat`` seconds without data a comment line is sent; at that moment the store is
also read, a safety net for events no notification brought. With ``until_idle`` the stream
ends once no task of the session is queued or running — after sending every stored event.

``EventStreamResponse`` runs a producer against the connection and stops it when the client
goes away; stopping a stream never touches the session's tasks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from openbuda.api._json import dumps
from openbuda.domain.errors import Unavailable
from openbuda.domain.records import Event
from openbuda.engine.bus import RESYNC
from openbuda.ports import Subscription

__all__ = [
    "EventStreamResponse",
    "StreamSource",
    "comment",
    "follow_session",
    "format_event",
]

log = logging.getLogger("openbuda.api")

Emit = Callable[[str], Awaitable[None]]
"""Sends one chunk of the stream (raises when the client is gone)."""

REPLAY_PAGE: Final = 500
STORE_PATIENCE: Final = 30.0
"""Seconds a stream waits out an unavailable store before it ends (the client resumes)."""
T = TypeVar("T")
_STREAM_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def format_event(event: Mapping[str, Any]) -> str:
    """One SSE message: ``id:`` (stored events only), ``event:`` and ``data:``."""
    lines = []
    seq = event.get("seq")
    if isinstance(seq, int):
        lines.append(f"id: {seq}")
    lines.append(f"event: {event.get('type', 'message')}")
    lines.append(f"data: {dumps(dict(event))}")
    return "\n".join(lines) + "\n\n"


def comment(text: str = "keep-alive") -> str:
    return f": {text}\n\n"


@dataclass(frozen=True, slots=True)
class StreamSource:
    """What a session's stream reads (already scoped to the principal's space)."""

    read: Callable[[int, int], Awaitable[list[Event]]]
    """Stored events after a seq, at most ``limit``, in order."""
    subscribe: Callable[[], Subscription]
    """Live events of the session from now on."""
    busy: Callable[[], Awaitable[bool | None]]
    """Whether a task of the session is queued or running (``None``: the session is gone)."""


async def follow_session(
    source: StreamSource,
    emit: Emit,
    *,
    after: int,
    until_idle: bool,
    heartbeat: float,
) -> None:
    """Send the session's events after seq ``after``; return when the stream should end."""
    state = _Follow(source, emit, after, until_idle, heartbeat)
    while await state.round():
        pass


class _Follow:
    def __init__(
        self, source: StreamSource, emit: Emit, after: int, until_idle: bool, heartbeat: float
    ) -> None:
        self.source = source
        self._emit = emit
        self.last = after
        self.until_idle = until_idle
        self.heartbeat = heartbeat
        self.sent_at = anyio.current_time()

    async def send(self, chunk: str) -> None:
        await self._emit(chunk)
        self.sent_at = anyio.current_time()

    async def _patiently(self, read: Callable[[], Awaitable[T]]) -> T:
        """``read()``, retried while the store is briefly unavailable (a database restart, a
        dropped connection) for up to ``STORE_PATIENCE`` seconds, with keep-alive comments
        meanwhile: the stream rides the outage out instead of ending."""
        delay, waited = 0.1, 0.0
        while True:
            try:
                return await read()
            except Unavailable:
                if waited >= STORE_PATIENCE:
                    raise
                if anyio.current_time() - self.sent_at >= self.heartbeat:
                    await self.send(comment("the store is unavailable; retrying"))
                await anyio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)

    async def catch_up(self) -> None:
        """Send the stored events after the last one sent."""
        while True:
            batch = await self._patiently(lambda: self.source.read(self.last, REPLAY_PAGE))
            for event in batch:
                if event.seq > self.last:
                    await self.send(format_event(event.to_json()))
                    self.last = event.seq
            if len(batch) < REPLAY_PAGE:
                return

    async def finished(self) -> bool:
        """With ``until_idle``: whether the session is idle (every stored event sent)."""
        busy = await self._patiently(self.source.busy)
        if busy is None:
            return True  # the session was deleted: nothing more will come
        if not self.until_idle or busy:
            return False
        await self.catch_up()
        return True

    async def round(self) -> bool:
        """One subscription's worth of stream; ``True`` to subscribe again (it overflowed)."""
        subscription = self.source.subscribe()
        again = False
        try:
            async with anyio.create_task_group() as group:
                send, receive = anyio.create_memory_object_stream[dict[str, Any] | None](64)
                group.start_soon(_pump, subscription, send)
                again = await self._follow(receive)
                group.cancel_scope.cancel()
            return again
        finally:
            with anyio.CancelScope(shield=True):
                await subscription.close()

    async def _follow(self, receive: MemoryObjectReceiveStream[dict[str, Any] | None]) -> bool:
        async with receive:
            await self.catch_up()
            if self.until_idle and await self.finished():
                return False
            while True:
                wait = self.heartbeat - (anyio.current_time() - self.sent_at)
                item: dict[str, Any] | None = None
                got = False
                if wait > 0:
                    with anyio.move_on_after(wait):
                        item = await receive.receive()
                        got = True
                if not got:
                    await self.send(comment())
                    await self.catch_up()
                    if await self.finished():
                        return False
                    continue
                if item is None:  # the subscription ended: it fell too far behind
                    await self.catch_up()
                    return True
                if item.get("type") == RESYNC:  # live events may have been lost: read them
                    await self.catch_up()
                    if self.until_idle and await self.finished():
                        return False
                    continue
                seq = item.get("seq")
                if not isinstance(seq, int):
                    await self.send(format_event(item))
                    continue
                if seq <= self.last:
                    continue
                if seq == self.last + 1:
                    await self.send(format_event(item))
                    self.last = seq
                else:
                    await self.catch_up()
                if self.until_idle and item.get("type") == "task.status" and await self.finished():
                    return False


async def _pump(
    subscription: Subscription, send: MemoryObjectSendStream[dict[str, Any] | None]
) -> None:
    """Forward the subscription's events; ``None`` when it ends (it fell too far behind)."""
    iterator: AsyncIterator[dict[str, Any]] = aiter(subscription)
    try:
        async with send:
            async for event in iterator:
                await send.send(event)
            await send.send(None)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        if isinstance(iterator, AsyncGenerator):
            with anyio.CancelScope(shield=True):
                await iterator.aclose()


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` from ``produce(emit)``; stops it when the client disconnects."""

    def __init__(
        self,
        produce: Callable[[Emit], Awaitable[None]],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            _nothing(),
            media_type="text/event-stream",
            headers={**_STREAM_HEADERS, **(headers or {})},
        )
        self.produce = produce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        gone = False

        async def emit(chunk: str) -> None:
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})

        async with anyio.create_task_group() as group:

            async def watch() -> None:
                nonlocal gone
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        gone = True
                        group.cancel_scope.cancel()
                        return

            group.start_soon(watch)
            try:
                await self.produce(emit)
            except OSError:  # the client went away while we sent
                gone = True
            except Exception:  # end the stream; the client resumes with Last-Event-ID
                log.exception("an event stream failed")
            if not gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            group.cancel_scope.cancel()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an (empty) async generator
