"""The bus: the embedded one, and ``PgBus`` with two instances standing for two processes.

The PostgreSQL cases use this run's test database (notifications do not cross databases, so
other test runs on the same server are not heard) and skip without
``OPENBUDA_TEST_POSTGRES_URL``. Connections are killed with ``pg_terminate_backend``, found by
their ``application_name`` in this database only.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg  # pyright: ignore[reportMissingTypeStubs]
import pytest

from openbuda.api.sse import StreamSource, follow_session
from openbuda.domain.records import Event
from openbuda.engine.bus import RESYNC, Bus, open_bus
from openbuda.engine.pgbus import PgBus, _cut, asyncpg_dsn
from openbuda.ports import Subscription
from tests.conftest import PostgresServer

pytestmark = pytest.mark.anyio

SESSION = "ses_bus"
RESYNC_ALL: dict[str, Any] = {"type": RESYNC}


def stored(seq: int, text: str = "hi") -> dict[str, Any]:
    return Event(
        seq, f"evt_{seq}", SESSION, "message", datetime(2025, 1, 1, tzinfo=UTC), {"text": text}
    ).to_json()


def delta(text: str) -> dict[str, Any]:
    return {"type": "text.delta", "data": {"task_id": "tsk_1", "text": text}, "task_id": "tsk_1"}


# ---------------------------------------------------------------------------------------------
# Without PostgreSQL


class Calls:
    """What a bus's callbacks were called with; ``wait_for`` awaits a condition on it."""

    def __init__(self) -> None:
        self.queued = 0
        self.cancelled: list[str] = []
        self._changed = anyio.Event()

    def on_queued(self) -> None:
        self.queued += 1
        self._changed.set()

    def on_cancelled(self, task_id: str) -> None:
        self.cancelled.append(task_id)
        self._changed.set()

    def attach(self, bus: Bus) -> Calls:
        bus.on_queued = self.on_queued
        bus.on_cancelled = self.on_cancelled
        return self

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(10):
            while not condition():
                await self._changed.wait()
                self._changed = anyio.Event()


async def test_the_embedded_bus_calls_its_callbacks_and_keeps_events_local() -> None:
    bus = open_bus("sqlite+aiosqlite:///unused.db", process_id="p1")
    assert type(bus) is Bus
    calls = Calls().attach(bus)
    bus.queued()
    bus.cancelled("tsk_1")
    assert (calls.queued, calls.cancelled) == (1, ["tsk_1"])

    subscription = bus.broadcaster.subscribe(SESSION)
    await bus.broadcaster.publish(SESSION, stored(1))
    async with anyio.create_task_group() as group:
        await group.start(bus.run)
        with anyio.fail_after(5):
            assert await anext(aiter(subscription)) == stored(1)
        group.cancel_scope.cancel()
    await subscription.close()


def test_postgres_urls_open_a_pg_bus_without_connecting() -> None:
    url = "postgresql+asyncpg://user:secret@db.example:5433/openbuda"
    assert asyncpg_dsn(url) == "postgresql://user:secret@db.example:5433/openbuda"
    for scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        bus = open_bus(f"{scheme}://user@db.example/openbuda", process_id="wrk_1")
        assert isinstance(bus, PgBus)
        assert bus.application_name == "openbuda bus wrk_1"
    other = open_bus("postgresql://user@db.example/openbuda", process_id="wrk_1")
    assert isinstance(other, PgBus) and other.origin != bus.origin  # same id, still distinct


@pytest.mark.parametrize(
    "text", ["a" * 20_000, 'é\n"\\' * 3_000, "😀x" * 2_500, "\ud800" + "z" * 9_000]
)
def test_text_is_cut_in_pieces_that_fit_and_concatenate(text: str) -> None:
    room = 7_000
    pieces = list(_cut(text, room))
    assert "".join(pieces) == text
    assert len(pieces) > 1
    for piece in pieces:
        assert piece
        assert len(json.dumps(piece, ensure_ascii=True)) - 2 <= room
    assert list(_cut("", room)) == []


# ---------------------------------------------------------------------------------------------
# Two PgBus on one database


class Received:
    """Everything a subscription delivers, in order."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.items: list[dict[str, Any]] = []
        self._changed = anyio.Event()

    async def run(self) -> None:
        try:
            async for item in self.subscription:
                self.items.append(item)
                self._changed.set()
                self._changed = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True):
                await self.subscription.close()

    async def wait_for(self, condition: Callable[[list[dict[str, Any]]], bool]) -> None:
        with anyio.fail_after(10):
            while not condition(self.items):
                await self._changed.wait()

    async def wait_for_item(self, item: dict[str, Any]) -> None:
        await self.wait_for(lambda items: item in items)


class Cluster:
    """Buses started in one task group, each standing for a process."""

    def __init__(self, server: PostgresServer, database: str, group: anyio.abc.TaskGroup) -> None:
        self.server = server
        self.database = database
        self.url = server.store_url(database)
        self.group = group

    async def start(self, process_id: str, **options: Any) -> PgBus:
        bus = PgBus(self.url, process_id=process_id, **options)
        await self.group.start(bus.run)
        return bus

    def receive(self, bus: Bus, session_id: str = SESSION) -> Received:
        received = Received(bus.broadcaster.subscribe(session_id))
        self.group.start_soon(received.run)
        return received

    async def terminate(self, bus: PgBus, *, query_like: str = "%") -> int:
        """``pg_terminate_backend`` the bus's connections (those whose last query matches)."""
        connection = await asyncpg.connect(self.server.dsn(self.database))
        try:
            return await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = $1"
                " AND query LIKE $2",
                bus.application_name,
                query_like,
            )
        finally:
            await connection.close()


@pytest.fixture
async def cluster(
    postgres_server: PostgresServer, postgres_database: str
) -> AsyncIterator[Cluster]:
    async with anyio.create_task_group() as group:
        yield Cluster(postgres_server, postgres_database, group)
        group.cancel_scope.cancel()


pg = pytest.mark.postgres


@pg
async def test_events_reach_the_other_process_in_order_exactly_once_without_echo(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start("test-a"), await cluster.start("test-b")
    on_a, on_b = cluster.receive(a), cluster.receive(b)
    elsewhere = cluster.receive(b, "ses_other")

    events = [stored(seq, f"event {seq}") for seq in range(1, 251)]  # several batches
    events.insert(3, delta("same"))
    events.insert(4, delta("same"))  # identical payloads in one transaction stay two
    for event in events:
        await a.broadcaster.publish(SESSION, event)
    await on_b.wait_for(lambda items: len(items) >= len(events))

    fence = stored(1000, "from b")  # NOTIFYs arrive in commit order: an echo would come first
    await b.broadcaster.publish(SESSION, fence)
    await on_a.wait_for_item(fence)
    await on_b.wait_for_item(fence)
    assert on_a.items == [*events, fence]
    assert on_b.items == [*events, fence]
    assert elsewhere.items == []


@pg
async def test_signals_run_the_callbacks_here_at_once_and_there_once(cluster: Cluster) -> None:
    a, b = await cluster.start("test-a"), await cluster.start("test-b")
    here, there = Calls().attach(a), Calls().attach(b)

    a.queued()
    a.queued()  # coalesced or not, at least one wake-up reaches b
    a.cancelled("tsk_1")
    assert (here.queued, here.cancelled) == (2, ["tsk_1"])
    await there.wait_for(lambda: there.cancelled == ["tsk_1"] and there.queued >= 1)

    b.cancelled("tsk_fence")  # a's own echo would have arrived before this
    await here.wait_for(lambda: here.cancelled == ["tsk_1", "tsk_fence"])
    assert here.queued == 2


@pg
async def test_too_big_events_become_a_resync_marker_or_pieces(cluster: Cluster) -> None:
    a, b = await cluster.start("test-a"), await cluster.start("test-b")
    on_a, on_b = cluster.receive(a), cluster.receive(b)

    huge = stored(7, "x" * 9_000)
    output = "ligne é 😀\n" * 2_000
    long_output = {
        "type": "tool.output",
        "data": {"call_id": "call_1", "stream": "stdout", "text": output},
        "task_id": "tsk_1",
    }
    unsplittable = {"type": "text.delta", "data": {"parts": ["y" * 9_000]}}
    fence = stored(8)
    for event in (huge, long_output, unsplittable, fence):
        await a.broadcaster.publish(SESSION, event)

    await on_b.wait_for_item(fence)
    assert on_b.items[0] == {"type": RESYNC, "seq": 7}
    pieces = on_b.items[1:-1]
    assert len(pieces) > 1
    assert all(p["type"] == "tool.output" and p["task_id"] == "tsk_1" for p in pieces)
    assert all(p["data"]["call_id"] == "call_1" for p in pieces)
    assert "".join(p["data"]["text"] for p in pieces) == output
    assert on_b.items[-1] == fence  # the unsplittable one was dropped
    assert on_a.items == [huge, long_output, unsplittable, fence]  # whole, here


@pg
async def test_an_oversized_event_reaches_a_stream_there_through_the_store(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start("test-a"), await cluster.start("test-b")
    log: list[Event] = []  # the store both processes share
    sent: list[str] = []
    got = anyio.Event()

    async def read(after: int, limit: int) -> list[Event]:
        return [e for e in log if e.seq > after][:limit]

    async def busy() -> bool:
        return True

    async def emit(chunk: str) -> None:
        sent.append(chunk)
        if "id: 2\n" in chunk:
            got.set()

    subscribed = anyio.Event()

    def subscribe() -> Subscription:
        subscription = b.broadcaster.subscribe(SESSION)
        subscribed.set()
        return subscription

    source = StreamSource(read, subscribe, busy)
    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: follow_session(source, emit, after=0, until_idle=False, heartbeat=3600)
        )
        with anyio.fail_after(10):
            await subscribed.wait()
        first = Event(1, "evt_1", SESSION, "message", datetime(2025, 1, 1, tzinfo=UTC), {})
        second = Event(
            2, "evt_2", SESSION, "message", datetime(2025, 1, 1, tzinfo=UTC), {"t": "z" * 9_000}
        )
        log.extend([first, second])  # written by process a ...
        await a.broadcaster.publish(SESSION, second.to_json())  # ... too big for a notification
        with anyio.fail_after(10):
            await got.wait()
        group.cancel_scope.cancel()
    body = "".join(sent)
    assert body.count("id: 1\n") == 1 and body.count("id: 2\n") == 1
    assert RESYNC not in body


@pg
async def test_a_listener_that_lost_its_connection_reconnects_and_resyncs(
    cluster: Cluster,
) -> None:
    a = await cluster.start("test-a")
    b = await cluster.start("test-b", check_seconds=3600)  # its last query stays LISTEN
    on_b = cluster.receive(b)
    calls = Calls().attach(b)
    await a.broadcaster.publish(SESSION, stored(1))
    await on_b.wait_for_item(stored(1))

    assert await cluster.terminate(b, query_like="LISTEN%") == 1
    await on_b.wait_for_item(RESYNC_ALL)
    await calls.wait_for(lambda: calls.queued == 1)  # tasks queued meanwhile are looked for

    await a.broadcaster.publish(SESSION, stored(2))
    await on_b.wait_for_item(stored(2))
    assert on_b.items[0] == stored(1) and on_b.items[-1] == stored(2)
    assert on_b.items.count(stored(2)) == 1


@pg
async def test_every_connection_killed_the_events_flow_again(cluster: Cluster) -> None:
    a, b = await cluster.start("test-a"), await cluster.start("test-b")
    on_a, on_b = cluster.receive(a), cluster.receive(b)
    await a.broadcaster.publish(SESSION, stored(1))
    await b.broadcaster.publish(SESSION, stored(2))
    await on_b.wait_for_item(stored(1))
    await on_a.wait_for_item(stored(2))

    assert await cluster.terminate(a) == 2  # its sender and its listener
    assert await cluster.terminate(b) == 2
    # Sent before a's sender may have noticed: it arrives, or a resync replaces it.
    await a.broadcaster.publish(SESSION, stored(3))
    await on_a.wait_for_item(RESYNC_ALL)  # both listen again
    await on_b.wait_for_item(RESYNC_ALL)

    await a.broadcaster.publish(SESSION, stored(4))
    await b.broadcaster.publish(SESSION, stored(5))
    await on_b.wait_for_item(stored(4))
    await on_a.wait_for_item(stored(5))
    assert on_b.items.count(stored(4)) == 1 and on_a.items.count(stored(5)) == 1


@pg
async def test_a_full_outbox_drops_events_and_sends_a_resync(cluster: Cluster) -> None:
    a = await cluster.start("test-a", outbox=5)
    b = await cluster.start("test-b")
    on_b = cluster.receive(b)
    calls = Calls().attach(b)

    events = [stored(seq) for seq in range(1, 21)]
    for event in events:  # no await in between: the sender cannot drain meanwhile
        a.broadcaster.publish_nowait(SESSION, event)
    await on_b.wait_for_item(events[4])
    fence = stored(21)
    await a.broadcaster.publish(SESSION, fence)

    await on_b.wait_for_item(fence)
    assert on_b.items == [RESYNC_ALL, *events[:5], fence]
    await calls.wait_for(lambda: calls.queued >= 1)  # a resync wakes the workers too


@pg
async def test_a_stopping_bus_flushes_its_outbox(cluster: Cluster) -> None:
    b = await cluster.start("test-b")
    on_b = cluster.receive(b)
    calls = Calls().attach(b)
    a = PgBus(cluster.url, process_id="test-a")
    events = [stored(seq) for seq in range(1, 4)]
    async with anyio.create_task_group() as group:
        await group.start(a.run)
        for event in events:  # the last words of a stopping worker, never awaited
            a.broadcaster.publish_nowait(SESSION, event)
        a.queued()
        group.cancel_scope.cancel()
    await on_b.wait_for(lambda items: len(items) == len(events))
    await calls.wait_for(lambda: calls.queued == 1)
    assert on_b.items == events


@pg
async def test_a_bus_without_events_hears_only_signals(cluster: Cluster) -> None:
    a, b = await cluster.start("test-a"), await cluster.start("test-b")
    worker = await cluster.start("test-worker", events=False)
    on_b, on_worker = cluster.receive(b), cluster.receive(worker)
    calls = Calls().attach(worker)
    await a.broadcaster.publish(SESSION, stored(1))
    await on_b.wait_for_item(stored(1))
    a.queued()  # sent after the event: heard after it
    await calls.wait_for(lambda: calls.queued == 1)
    assert on_worker.items == []
