"""The conformance suite of ``openbuda.ports.Store``: every adapter passes it.

Parametrised by the ``store`` fixture (``sqlite`` always, ``postgres`` when
``OPENBUDA_TEST_POSTGRES_URL`` is set). A bug fixed in one adapter gets its regression test
here. This module: transactions, the event log, the context projection, isolation of spaces;
``test_store_tasks`` and ``test_store_sessions`` hold the rest of the suite.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy.exc import StatementError

from openbuda.domain.errors import LeaseLost, NotFound
from openbuda.domain.events import EventType, NewEvent
from openbuda.domain.ids import new_id
from openbuda.domain.states import SessionStatus, TaskStatus, sources_for
from openbuda.ports import (
    AgentPatch,
    ContextProjection,
    Fence,
    ListSessions,
    ListTasks,
    NewSession,
    NewTask,
    ReadEvents,
    TaskChange,
    WriteTx,
)
from openbuda.stores import SqlStore

from .store_world import LEASE, T0, World, at, key_request, message

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------------------------------------
# Capabilities and transactions


async def test_capabilities_name_the_dialect(store: SqlStore) -> None:
    capabilities = store.capabilities
    if capabilities.dialect == "sqlite":
        assert (capabilities.skip_locked, capabilities.concurrent_writers) == (False, False)
    else:
        assert capabilities.dialect == "postgresql"
        assert (capabilities.skip_locked, capabilities.concurrent_writers) == (True, True)


async def test_migrate_on_a_migrated_store_is_a_no_op(world: World) -> None:
    await world.store.migrate()
    assert (await world.get_session(await world.session("still here"))).title == "still here"


async def test_an_exception_rolls_the_write_back(world: World) -> None:
    session = await world.session()

    async def write_then_fail() -> None:
        async with world.store.write() as tx:
            await tx.append(world.space.id, session.id, [message("lost")], T0)
            await tx.rename_session(world.space.id, session.id, "lost")
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        await write_then_fail()
    assert await world.events(session) == []
    assert (await world.get_session(session)).title == ""


async def test_a_cancelled_write_rolls_back_and_frees_the_store(world: World) -> None:
    session = await world.session()
    entered = anyio.Event()

    async def write_forever() -> None:
        async with world.store.write() as tx:
            await tx.append(world.space.id, session.id, [message("cancelled")], T0)
            entered.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(write_forever)
        await entered.wait()
        group.cancel_scope.cancel()
    async with world.store.write() as tx:
        stored = await tx.append(world.space.id, session.id, [message("next")], T0)
    assert [event.seq for event in stored] == [1]
    assert [event.data["text"] for event in await world.events(session)] == ["next"]


async def test_reads_run_while_a_write_is_open(world: World) -> None:
    session = await world.session()
    async with world.store.write() as tx:
        await tx.append(world.space.id, session.id, [message("uncommitted")], T0)
        with anyio.fail_after(5):
            assert await world.events(session) == []
    assert len(await world.events(session)) == 1


async def test_a_read_held_open_does_not_block_writes(world: World) -> None:
    session = await world.session()
    async with world.store.read() as read:
        with anyio.fail_after(5):
            async with world.store.write() as tx:
                await tx.append(world.space.id, session.id, [message("one")], T0)
        await read.get_session(world.space.id, session.id, T0)
    assert len(await world.events(session)) == 1


async def test_many_concurrent_transactions_all_finish(world: World) -> None:
    """More transactions than pooled connections queue instead of starving each other."""
    session = await world.session()

    async def reader() -> None:
        async with world.store.read() as tx:
            for _ in range(3):
                await tx.get_session(world.space.id, session.id, T0)
                await anyio.lowlevel.checkpoint()

    async def writer(number: int) -> None:
        async with world.store.write() as tx:
            await tx.append(world.space.id, session.id, [message(str(number))], T0)
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for number in range(40):
                group.start_soon(reader)
                group.start_soon(writer, number)
    assert (await world.get_session(session)).last_seq == 40


async def test_times_come_back_timezone_aware_utc(world: World) -> None:
    session = await world.session(when=datetime(2025, 6, 1, 14, 0, tzinfo=UTC))
    found = await world.get_session(session)
    assert found.created_at == datetime(2025, 6, 1, 14, 0, tzinfo=UTC)
    assert found.created_at.utcoffset() == timedelta(0)
    task = await world.start(await world.task(session))
    assert task.lease_until is not None
    assert task.lease_until.tzinfo is not None
    assert (await world.get_task(task)).lease_until == T0 + LEASE


async def test_naive_times_are_refused(world: World) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        async with world.store.write() as tx:
            await tx.create_space("naive", datetime(2025, 1, 1))


# ---------------------------------------------------------------------------------------------
# Events


async def test_append_numbers_events_from_one_and_reads_them_back(world: World) -> None:
    session = await world.session()
    data = {"role": "user", "text": 'héllo ✓ \x00 "quoted"', "nested": {"list": [1, 2.5, None]}}
    async with world.store.write() as tx:
        stored = await tx.append(
            world.space.id,
            session.id,
            [NewEvent(EventType.MESSAGE, data), NewEvent(EventType.TASK_STATUS, {"s": 1}, "tsk_1")],
            at(5),
        )
    assert [(event.seq, event.type, event.at) for event in stored] == [
        (1, "message", at(5)),
        (2, "task.status", at(5)),
    ]
    assert stored[0].id.startswith("evt_")
    assert stored[0].id != stored[1].id
    assert await world.events(session) == stored
    found = await world.get_session(session)
    assert (found.last_seq, found.last_activity_at) == (2, at(5))


async def test_concurrent_appenders_get_gapless_unique_seqs(world: World) -> None:
    session = await world.session()
    appended: list[list[int]] = []

    async def appender(number: int) -> None:
        async with world.store.write() as tx:
            stored = await tx.append(
                world.space.id,
                session.id,
                [message(f"{number}-a"), message(f"{number}-b")],
                T0,
            )
        appended.append([event.seq for event in stored])

    async with anyio.create_task_group() as group:
        for number in range(50):
            group.start_soon(appender, number)

    seqs = sorted(itertools.chain.from_iterable(appended))
    assert seqs == list(range(1, 101))
    assert all(pair[1] == pair[0] + 1 for pair in appended)
    events = await world.events(session)
    assert [event.seq for event in events] == list(range(1, 101))
    assert len({event.id for event in events}) == 100
    assert (await world.get_session(session)).last_seq == 100


async def test_read_events_after_limit_task_and_types(world: World) -> None:
    session = await world.session()
    async with world.store.write() as tx:
        await tx.append(
            world.space.id,
            session.id,
            [
                message("1"),
                NewEvent(EventType.TASK_STATUS, {"status": "queued"}, "tsk_a"),
                message("3", "tsk_a"),
                NewEvent(EventType.TOOL_CALL, {"call_id": "c"}, "tsk_b"),
                message("5", "tsk_b"),
            ],
            T0,
        )

    async def seqs(**options: Any) -> list[int]:
        return [event.seq for event in await world.events(session, **options)]

    assert await seqs() == [1, 2, 3, 4, 5]
    assert await seqs(after_seq=3) == [4, 5]
    assert await seqs(after_seq=1, limit=2) == [2, 3]
    assert await seqs(task_id="tsk_a") == [2, 3]
    assert await seqs(types=frozenset({"message"})) == [1, 3, 5]
    assert await seqs(types=frozenset({"message", "tool.call"}), after_seq=2, limit=2) == [3, 4]
    assert await seqs(task_id="tsk_b", types=frozenset({"message"})) == [5]
    assert await seqs(types=frozenset()) == []
    assert await seqs(after_seq=5) == []


async def test_append_to_a_missing_session_is_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        async with world.store.write() as tx:
            await tx.append(world.space.id, "ses_missing", [message("x")], T0)


async def test_ephemeral_events_are_never_stored(world: World) -> None:
    session = await world.session()
    with pytest.raises(ValueError, match="ephemeral"):
        async with world.store.write() as tx:
            await tx.append(
                world.space.id, session.id, [NewEvent(EventType.TEXT_DELTA, {"text": "t"})], T0
            )


async def test_append_of_nothing_writes_nothing(world: World) -> None:
    session = await world.session()
    async with world.store.write() as tx:
        assert await tx.append(world.space.id, session.id, [], at(9)) == []
    assert (await world.get_session(session)).last_activity_at == T0


async def test_fenced_append_needs_the_current_lease(world: World) -> None:
    session = await world.session()
    task = await world.start(await world.task(session))
    fence = Fence(task.id, task.lease_epoch)
    async with world.store.write() as tx:
        stored = await tx.append(world.space.id, session.id, [message("ok")], T0, fence=fence)
    assert [event.seq for event in stored] == [1]

    for stale in (Fence(task.id, task.lease_epoch + 1), Fence("tsk_missing", 1)):
        with pytest.raises(LeaseLost):
            async with world.store.write() as tx:
                await tx.append(world.space.id, session.id, [message("no")], at(1), fence=stale)

    requeued = await world.change(task, TaskStatus.QUEUED, clear_lease=True)
    assert requeued is not None
    with pytest.raises(LeaseLost):
        async with world.store.write() as tx:
            await tx.append(world.space.id, session.id, [message("no")], at(1), fence=fence)

    found = await world.get_session(session)
    assert (found.last_seq, found.last_activity_at) == (1, T0)
    assert [event.data["text"] for event in await world.events(session)] == ["ok"]


async def test_a_fence_only_covers_its_own_session(world: World) -> None:
    mine, other = await world.session(), await world.session()
    task = await world.start(await world.task(mine))
    with pytest.raises(LeaseLost):
        async with world.store.write() as tx:
            await tx.append(world.space.id, other.id, [message("x")], T0, fence=Fence(task.id, 1))


async def test_an_append_touches_only_the_new_rows(world: World) -> None:
    """Per step the store runs the same few statements however long the history is."""
    session = await world.session()
    task = await world.start(await world.task(session))
    fence = Fence(task.id, task.lease_epoch)
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = world.store.write_engine

    async def step() -> int:
        statements.clear()
        sa_event.listen(engine, "before_cursor_execute", record)
        try:
            async with world.store.write() as tx:
                await tx.append(
                    world.space.id, session.id, [message("a"), message("b")], T0, fence=fence
                )
        finally:
            sa_event.remove(engine, "before_cursor_execute", record)
        return len(statements)

    first = await step()
    async with world.store.write() as tx:
        await tx.append(world.space.id, session.id, [message(str(n)) for n in range(500)], T0)
    assert await step() == first
    writes = [s for s in statements if s.lstrip().upper().startswith(("UPDATE", "INSERT"))]
    assert len(writes) == 2, statements
    assert not any("DELETE" in s.upper() for s in statements)


# ---------------------------------------------------------------------------------------------
# Context projection


async def test_context_starts_empty_and_put_sets_it_exactly(world: World) -> None:
    session = await world.session()
    async with world.store.read() as tx:
        assert await tx.get_context(world.space.id, session.id) == ContextProjection()
    projection = ContextProjection(summary="they met ✓", through_seq=7, tokens_after=42)
    async with world.store.write() as tx:
        await tx.put_context(world.space.id, session.id, projection)
    async with world.store.read() as tx:
        assert await tx.get_context(world.space.id, session.id) == projection
        assert await tx.get_context(world.space.id, "ses_missing") is None
    with pytest.raises(NotFound):
        async with world.store.write() as tx:
            await tx.put_context(world.space.id, "ses_missing", projection)


async def test_append_grows_the_context_tokens_of_conversation_events(world: World) -> None:
    session = await world.session()
    text = "x" * 100
    serialized = '{"role":"user","text":"' + text + '"}'
    async with world.store.write() as tx:
        await tx.put_context(world.space.id, session.id, ContextProjection("s", 0, 10))
        await tx.append(
            world.space.id,
            session.id,
            [message(text), NewEvent(EventType.TASK_STATUS, {"status": "queued"})],
            T0,
        )
        context = await tx.get_context(world.space.id, session.id)
    assert context == ContextProjection("s", 0, 10 + len(serialized) // 4 + 1)


# ---------------------------------------------------------------------------------------------
# Isolation between spaces


async def test_another_space_sees_nothing(store: SqlStore) -> None:
    mine = await World.make(store, "mine")
    theirs = await World.make(store, "theirs")
    session = await mine.session("secret")
    task = await mine.start(await mine.task(session))
    async with store.write() as tx:
        await tx.append(mine.space.id, session.id, [message("canary")], T0)
        await tx.create_api_key(key_request(mine, "e" * 64, key_id="key_mine"), T0)

    other = theirs.space.id
    async with store.read() as tx:
        assert await tx.get_agent(other, mine.agent.id) is None
        assert await tx.get_session(other, session.id, T0) is None
        assert await tx.get_task(other, task.id) is None
        assert await tx.get_context(other, session.id) is None
        assert await tx.read_events(ReadEvents(other, session.id)) == []
        assert await tx.session_tasks(other, session.id, frozenset(TaskStatus)) == []
        assert (await tx.list_sessions(ListSessions(other, mine.agent.id, T0))).items == []
        assert [t.id for t in (await tx.list_tasks(ListTasks(other))).items] == []
        assert [a.id for a in (await tx.list_agents(other, 50, None)).items] == [theirs.agent.id]
        assert await tx.list_api_keys(other) == []

    async with store.write() as tx:
        assert await tx.lock_session(other, session.id, T0) is None
        assert not await tx.rename_session(other, session.id, "stolen")
        assert not await tx.delete_session(other, session.id)
        assert await tx.update_agent(other, mine.agent.id, AgentPatch(name="stolen"), T0) is None
        assert not await tx.delete_agent(other, mine.agent.id)
        assert not await tx.add_steer(other, task.id)
        assert not await tx.revoke_api_key(other, "key_mine", T0)
        change = TaskChange(
            other, task.id, sources_for(TaskStatus.CANCELLED), TaskStatus.CANCELLED, T0
        )
        assert await tx.change_task(change) is None
    attempts: list[Callable[[WriteTx], Awaitable[object]]] = [
        lambda tx: tx.append(other, session.id, [message("x")], T0),
        lambda tx: tx.put_context(other, session.id, ContextProjection()),
        lambda tx: tx.insert_task(
            NewTask(other, mine.agent.id, session.id, new_id("task"), None, T0)
        ),
        lambda tx: tx.create_session(NewSession(other, mine.agent.id), T0),
    ]
    for attempt in attempts:
        with pytest.raises(NotFound):
            async with store.write() as tx:
                await attempt(tx)

    found = await mine.get_session(session)
    assert (found.title, found.last_seq, found.status) == ("secret", 1, SessionStatus.WORKING)
    assert (await mine.get_task(task)).status is TaskStatus.RUNNING
