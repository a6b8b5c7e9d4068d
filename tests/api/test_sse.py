"""``follow_session`` against a fake source: the merge of stored and live events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from starlette.types import Message
from tests.api.conftest import sse_messages

from openbuda.api.sse import (
    EventStreamResponse,
    StreamSource,
    comment,
    follow_session,
    format_event,
)
from openbuda.domain.errors import Unavailable
from openbuda.domain.records import Event
from openbuda.engine.broadcaster import InProcessBroadcaster
from openbuda.ports import Subscription

pytestmark = pytest.mark.anyio

SESSION = "ses_1"


def event(seq: int, type_: str = "message", **data: Any) -> Event:
    return Event(seq, f"evt_{seq}", SESSION, type_, datetime(2025, 1, 1, tzinfo=UTC), data)


class FakeSource:
    """Stored events in a list, live ones through a real in-process broadcaster."""

    def __init__(self, *, buffer: int = 1000) -> None:
        self.stored: list[Event] = []
        self.broadcaster = InProcessBroadcaster(buffer=buffer)
        self.is_busy: bool | None = True
        self.subscriptions = 0
        self.reads = 0

    def store(self, *events: Event) -> None:
        self.stored.extend(events)

    async def publish(self, *events: Event | dict[str, Any]) -> None:
        for item in events:
            await self.broadcaster.publish(
                SESSION, item.to_json() if isinstance(item, Event) else item
            )

    async def read(self, after: int, limit: int) -> list[Event]:
        self.reads += 1
        return [e for e in self.stored if e.seq > after][:limit]

    def subscribe(self) -> Subscription:
        self.subscriptions += 1
        return self.broadcaster.subscribe(SESSION)

    async def busy(self) -> bool | None:
        return self.is_busy

    def source(self) -> StreamSource:
        return StreamSource(self.read, self.subscribe, self.busy)


class Sink:
    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.changed = anyio.Event()

    async def __call__(self, chunk: str) -> None:
        self.chunks.append(chunk)
        self.changed.set()
        self.changed = anyio.Event()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return sse_messages("".join(self.chunks))

    @property
    def seqs(self) -> list[int]:
        return [int(m["id"]) for m in self.messages if "id" in m]

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(5):
            while len([m for m in self.messages if "comment" not in m]) < count:
                await self.changed.wait()


@pytest.fixture
async def running() -> AsyncIterator[tuple[FakeSource, Sink, anyio.abc.TaskGroup]]:
    source, sink = FakeSource(), Sink()
    async with anyio.create_task_group() as group:
        yield source, sink, group
        group.cancel_scope.cancel()


def test_format_event() -> None:
    stored = format_event(event(7, text="hé\nllo").to_json())
    assert stored.startswith("id: 7\nevent: message\ndata: {")
    assert stored.endswith("}\n\n") and stored.count("\n") == 4
    ephemeral = format_event({"type": "text.delta", "data": {"text": "x"}})
    assert ephemeral == 'event: text.delta\ndata: {"type":"text.delta","data":{"text":"x"}}\n\n'
    lone = format_event({"type": "message", "data": {"text": "\ud800"}, "seq": 1})
    assert "\\ud800" in lone
    lone.encode("utf-8")
    assert comment() == ": keep-alive\n\n"


async def test_backlog_then_live_without_duplicates(
    running: tuple[FakeSource, Sink, anyio.abc.TaskGroup],
) -> None:
    source, sink, group = running
    source.store(event(1), event(2))
    group.start_soon(
        lambda: follow_session(source.source(), sink, after=0, until_idle=False, heartbeat=10)
    )
    await sink.wait_for(2)
    # published after being stored and read: a duplicate of what the backlog sent
    await source.publish(event(2))
    source.store(event(3))
    await source.publish(event(3), {"type": "text.delta", "data": {"text": "t"}})
    await sink.wait_for(4)
    assert sink.seqs == [1, 2, 3]
    assert sink.messages[-1]["event"] == "text.delta"


async def test_a_live_event_past_a_gap_fetches_the_missing_ones(
    running: tuple[FakeSource, Sink, anyio.abc.TaskGroup],
) -> None:
    source, sink, group = running
    source.store(event(1))
    group.start_soon(
        lambda: follow_session(source.source(), sink, after=0, until_idle=False, heartbeat=10)
    )
    await sink.wait_for(1)
    source.store(event(2), event(3), event(4))
    await source.publish(event(4))  # 2 and 3 were published elsewhere, or not yet
    await sink.wait_for(4)
    await source.publish(event(2), event(3))
    source.store(event(5))
    await source.publish(event(5))
    await sink.wait_for(5)
    assert sink.seqs == [1, 2, 3, 4, 5]


async def test_an_overflowed_subscription_is_replaced_and_caught_up() -> None:
    source, sink = FakeSource(buffer=2), Sink()
    gate = anyio.Event()

    async def slow(chunk: str) -> None:
        await sink(chunk)
        if len(sink.chunks) == 2:
            await gate.wait()

    async with anyio.create_task_group() as group:
        source.store(event(1))
        group.start_soon(
            lambda: follow_session(source.source(), slow, after=0, until_idle=False, heartbeat=10)
        )
        await sink.wait_for(1)
        for seq in range(2, 200):
            source.store(event(seq))
            await source.publish(event(seq))
        gate.set()
        await sink.wait_for(199)
        group.cancel_scope.cancel()
    assert sink.seqs == list(range(1, 200))
    assert source.subscriptions >= 2


async def test_a_resync_item_reads_the_store_and_is_never_sent(
    running: tuple[FakeSource, Sink, anyio.abc.TaskGroup],
) -> None:
    source, sink, group = running
    source.store(event(1))
    group.start_soon(
        lambda: follow_session(source.source(), sink, after=0, until_idle=False, heartbeat=3600)
    )
    await sink.wait_for(1)
    source.store(event(2), event(3))  # their notifications were lost on the way
    reads = source.reads
    await source.publish({"type": "stream.resync"})
    await sink.wait_for(3)
    assert source.reads > reads
    await source.publish({"type": "stream.resync", "seq": 4})  # 4 not stored yet: nothing to send
    source.store(event(4))
    await source.publish(event(4))
    await sink.wait_for(4)
    assert sink.seqs == [1, 2, 3, 4]
    assert [m["event"] for m in sink.messages] == ["message"] * 4


async def test_a_resync_ends_an_until_idle_stream_once_the_session_is_idle() -> None:
    source, sink = FakeSource(), Sink()
    source.store(event(1))
    async with anyio.create_task_group() as group:
        ended = anyio.Event()

        async def follow() -> None:
            await follow_session(source.source(), sink, after=0, until_idle=True, heartbeat=3600)
            ended.set()

        group.start_soon(follow)
        await sink.wait_for(1)
        source.store(event(2))  # the last event of the task, stored and published elsewhere
        source.is_busy = False
        await source.publish({"type": "stream.resync"})
        with anyio.fail_after(5):
            await ended.wait()
    assert sink.seqs == [1, 2]


async def test_until_idle_and_a_deleted_session_end_the_stream() -> None:
    source, sink = FakeSource(), Sink()
    source.store(event(1), event(2))
    source.is_busy = False
    with anyio.fail_after(5):
        await follow_session(source.source(), sink, after=0, until_idle=True, heartbeat=10)
    assert sink.seqs == [1, 2]

    source.is_busy = None  # the session is gone: even an endless stream ends at a heartbeat
    ended = Sink()
    with anyio.fail_after(5):
        await follow_session(source.source(), ended, after=1, until_idle=False, heartbeat=0.01)
    assert ended.seqs == [2]
    assert ended.messages[-1] == {"comment": "keep-alive"}


async def test_heartbeats_also_catch_up_from_the_store(
    running: tuple[FakeSource, Sink, anyio.abc.TaskGroup],
) -> None:
    source, sink, group = running
    group.start_soon(
        lambda: follow_session(source.source(), sink, after=0, until_idle=False, heartbeat=0.02)
    )
    source.store(event(1), event(2))  # stored by another process: never published here
    await sink.wait_for(2)
    assert sink.seqs == [1, 2]


async def test_the_response_ends_cleanly_on_failure_and_stops_on_disconnect() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def never() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    async def failing(emit: Callable[[str], Awaitable[None]]) -> None:
        await emit(": first\n\n")
        raise RuntimeError("the store is gone")

    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}
    await EventStreamResponse(failing)(scope, never, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert sent[1]["body"] == b": first\n\n"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}

    sent.clear()
    stopped = anyio.Event()
    left = anyio.Event()

    async def endless(emit: Callable[[str], Awaitable[None]]) -> None:
        try:
            await emit(": hello\n\n")
            left.set()
            await anyio.sleep_forever()
        finally:
            stopped.set()

    async def leaves() -> Message:
        await left.wait()
        return {"type": "http.disconnect"}

    with anyio.fail_after(5):
        await EventStreamResponse(endless)(scope, leaves, send)
    assert stopped.is_set()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


async def test_a_stream_rides_out_a_briefly_unavailable_store(
    running: tuple[FakeSource, Sink, anyio.abc.TaskGroup],
) -> None:
    source, sink, group = running
    source.store(event(1))
    outage = 3
    read = source.read

    async def flaky(after: int, limit: int) -> list[Event]:
        nonlocal outage
        if outage:
            outage -= 1
            raise Unavailable("the database connection was lost; the work is retried")
        return await read(after, limit)

    flaky_source = StreamSource(flaky, source.subscribe, source.busy)
    group.start_soon(
        lambda: follow_session(flaky_source, sink, after=0, until_idle=False, heartbeat=10)
    )
    await sink.wait_for(1)
    source.store(event(2))
    await source.publish(event(2))
    await sink.wait_for(2)
    assert (sink.seqs, outage) == ([1, 2], 0)
