"""The in-process broadcaster: live fan-out of a session's events to its subscribers.

Publishing never blocks the publisher: each subscriber has a bounded buffer, and a subscriber
that falls that far behind is dropped (its iterator ends with ``overflowed`` set) so that it
can reconnect and replay the stored events it missed from the log.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["InProcessBroadcaster", "InProcessSubscription"]


class InProcessSubscription:
    def __init__(self, broadcaster: InProcessBroadcaster, session_id: str, buffer: int) -> None:
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](buffer)
        self._send: MemoryObjectSendStream[dict[str, Any]] = send
        self._receive: MemoryObjectReceiveStream[dict[str, Any]] = receive
        self._broadcaster = broadcaster
        self.session_id = session_id
        self.overflowed = False

    def offer(self, event: dict[str, Any]) -> None:
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.overflowed = True
            self._send.close()
            self._broadcaster.discard(self)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._broadcaster.discard(self)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for event in self._receive:
            yield event

    async def close(self) -> None:
        self._broadcaster.discard(self)
        self._send.close()
        self._receive.close()


class InProcessBroadcaster:
    """Fan-out within one process. Holds nothing for sessions nobody watches."""

    def __init__(self, buffer: int = 1000) -> None:
        self._buffer = buffer
        self._subscribers: defaultdict[str, set[InProcessSubscription]] = defaultdict(set)

    async def publish(self, session_id: str, event: dict[str, Any]) -> None:
        self.publish_nowait(session_id, event)

    def publish_nowait(self, session_id: str, event: dict[str, Any]) -> None:
        subscribers = self._subscribers.get(session_id)
        if not subscribers:
            return
        for subscription in list(subscribers):
            subscription.offer(event)

    def subscribe(self, session_id: str) -> InProcessSubscription:
        subscription = InProcessSubscription(self, session_id, self._buffer)
        self._subscribers[session_id].add(subscription)
        return subscription

    def discard(self, subscription: InProcessSubscription) -> None:
        subscribers = self._subscribers.get(subscription.session_id)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[subscription.session_id]

    def subscriber_count(self, session_id: str | None = None) -> int:
        if session_id is not None:
            return len(self._subscribers.get(session_id, ()))
        return sum(len(subs) for subs in self._subscribers.values())
