"""The conformance suite of ``openbuda.ports.Store``: every adapter passes it.

Parametrised by the ``store`` fixture (``sqlite`` always, ``postgres`` when
``OPENBUDA_TEST_POSTGRES_URL`` is set). A bug fixed in one adapter gets its regression test here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy.exc import StatementError

from openbuda.domain.errors import InvalidRequest, LeaseLost, NotFound
from openbuda.domain.events import EventType, NewEvent
from openbuda.domain.ids import new_id
from openbuda.domain.records import (
    Agent,
    AgentSettings,
    Member,
    Question,
    QuestionKind,
    Role,
    Session,
    Space,
    Task,
    TaskError,
    TaskResult,
)
from openbuda.domain.states import TRANSITIONS, SessionStatus, TaskStatus, sources_for
from openbuda.ports import (
    AgentPatch,
    ContextProjection,
    Fence,
    ListSessions,
    ListTasks,
    NewAgent,
    NewApiKey,
    NewSession,
    NewTask,
    ReadEvents,
    TaskChange,
)
from openbuda.stores import SqlStore

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def message(text: str, task_id: str | None = None) -> NewEvent:
    return NewEvent(EventType.MESSAGE, {"role": "user", "text": text}, task_id=task_id)


def question(prompt: str = "Which one?") -> Question:
    return Question(new_id("question"), QuestionKind.TEXT, prompt, "call_1", T0)


@dataclass
class World:
    """A space with one member and one agent, and shortcuts to build sessions and tasks."""

    store: SqlStore
    space: Space
    member: Member
    agent: Agent

    @classmethod
    async def make(cls, store: SqlStore, name: str = "one", idle_timeout_s: int = 900) -> World:
        async with store.write() as tx:
            space = await tx.create_space(name, T0)
            member = await tx.create_member(space.id, "owner", Role.OWNER, T0)
            settings = AgentSettings(idle_timeout_s=idle_timeout_s)
            agent = await tx.create_agent(NewAgent(space.id, "helper", settings=settings), T0)
        return cls(store, space, member, agent)

    async def session(
        self, title: str = "", when: datetime = T0, external_user_id: str | None = None
    ) -> Session:
        async with self.store.write() as tx:
            request = NewSession(self.space.id, self.agent.id, title, external_user_id)
            return await tx.create_session(request, when)

    async def task(self, session: Session, when: datetime = T0) -> Task:
        async with self.store.write() as tx:
            request = NewTask(
                self.space.id, self.agent.id, session.id, new_id("task"), new_id("message"), when
            )
            return await tx.insert_task(request)

    async def change(self, task: Task, target: TaskStatus, **fields: Any) -> Task | None:
        change = TaskChange(
            self.space.id, task.id, sources_for(target), target, fields.pop("now", T0), **fields
        )
        async with self.store.write() as tx:
            return await tx.change_task(change)

    async def start(self, task: Task, owner: str = "worker-1", when: datetime = T0) -> Task:
        started = await self.change(
            task,
            TaskStatus.RUNNING,
            now=when,
            lease_owner=owner,
            lease_until=when + LEASE,
            set_started=True,
        )
        assert started is not None
        return started

    async def task_in(self, session: Session, status: TaskStatus, when: datetime = T0) -> Task:
        """A task of ``session`` driven through legal transitions to ``status``."""
        task = await self.task(session, when)
        if status is TaskStatus.QUEUED:
            return task
        if status is TaskStatus.CANCELLED:
            result = await self.change(task, TaskStatus.CANCELLED, set_finished=True)
            assert result is not None
            return result
        task = await self.start(task, when=when)
        extra: dict[str, Any] = {
            TaskStatus.RUNNING: {},
            TaskStatus.WAITING: {"question": question(), "clear_lease": True},
            TaskStatus.COMPLETED: {"result": TaskResult("done"), "clear_lease": True},
            TaskStatus.FAILED: {"error": TaskError("boom", "it broke"), "clear_lease": True},
        }[status]
        if status is TaskStatus.RUNNING:
            return task
        result = await self.change(task, status, **extra)
        assert result is not None
        return result

    async def events(self, session: Session, **options: Any) -> list[Any]:
        async with self.store.read() as tx:
            return await tx.read_events(ReadEvents(self.space.id, session.id, **options))

    async def get_session(self, session: Session, now: datetime = T0) -> Session:
        async with self.store.read() as tx:
            found = await tx.get_session(self.space.id, session.id, now)
        assert found is not None
        return found

    async def get_task(self, task: Task) -> Task:
        async with self.store.read() as tx:
            found = await tx.get_task(self.space.id, task.id)
        assert found is not None
        return found


@pytest.fixture
async def world(store: SqlStore) -> World:
    return await World.make(store)


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
    with pytest.raises(RuntimeError, match="abort"):
        async with world.store.write() as tx:
            await tx.append(world.space.id, session.id, [message("lost")], T0)
            await tx.rename_session(world.space.id, session.id, "lost")
            raise RuntimeError("abort")
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


async def test_times_come_back_timezone_aware_utc(world: World) -> None:
    session = await world.session(when=datetime(2025, 6, 1, 14, 0, tzinfo=UTC))
    found = await world.get_session(session)
    assert found.created_at == datetime(2025, 6, 1, 14, 0, tzinfo=UTC)
    assert found.created_at.utcoffset() == timedelta(0)
    task = await world.start(await world.task(session))
    assert task.lease_until is not None and task.lease_until.tzinfo is not None
    assert (await world.get_task(task)).lease_until == T0 + LEASE


async def test_naive_times_are_refused(world: World) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        async with world.store.write() as tx:
            await tx.create_space("naive", datetime(2025, 1, 1))  # noqa: DTZ001


# ---------------------------------------------------------------------------------------------
# Events


async def test_append_numbers_events_from_one_and_reads_them_back(world: World) -> None:
    session = await world.session()
    data = {"role": "user", "text": "héllo ✓ \x00 \"quoted\"", "nested": {"list": [1, 2.5, None]}}
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
    assert stored[0].id.startswith("evt_") and stored[0].id != stored[1].id
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
            await tx.append(
                world.space.id, other.id, [message("x")], T0, fence=Fence(task.id, 1)
            )


async def test_an_append_touches_only_the_new_rows(world: World) -> None:
    """Per step the store runs the same few statements however long the history is."""
    session = await world.session()
    task = await world.start(await world.task(session))
    fence = Fence(task.id, task.lease_epoch)
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = world.store._write_engine.sync_engine

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
# Tasks: transitions


async def test_insert_task_counts_it_on_the_session(world: World) -> None:
    session = await world.session()
    task = await world.task(session, at(3))
    assert (task.status, task.lease_epoch, task.attempts, task.created_at) == (
        TaskStatus.QUEUED,
        0,
        0,
        at(3),
    )
    await world.task(session)
    assert (await world.get_session(session)).task_count == 2
    assert await world.get_task(task) == task


async def test_insert_task_needs_the_session_of_that_agent(world: World) -> None:
    session = await world.session()
    for request in (
        NewTask(world.space.id, world.agent.id, "ses_missing", new_id("task"), None, T0),
        NewTask(world.space.id, "agt_other", session.id, new_id("task"), None, T0),
    ):
        with pytest.raises(NotFound):
            async with world.store.write() as tx:
                await tx.insert_task(request)


@pytest.mark.parametrize("source", list(TaskStatus), ids=str)
async def test_every_transition_of_the_table(world: World, source: TaskStatus) -> None:
    for target in TaskStatus:
        task = await world.task_in(await world.session(), source)
        lease = {"lease_owner": "worker-2", "lease_until": at(60)}
        fields = lease if target is TaskStatus.RUNNING else {}
        changed = await world.change(task, target, now=at(1), **fields)
        stored = await world.get_task(task)
        if target in TRANSITIONS[source]:
            assert changed is not None, f"{source} -> {target} was refused"
            assert changed.status is target
            assert stored == changed
        else:
            assert changed is None, f"{source} -> {target} was allowed"
            assert stored.status is source


async def test_taking_a_lease_bumps_epoch_and_attempts(world: World) -> None:
    task = await world.task(await world.session())
    first = await world.start(task, "worker-1", at(1))
    assert (first.lease_owner, first.lease_until, first.lease_epoch, first.attempts) == (
        "worker-1",
        at(1) + LEASE,
        1,
        1,
    )
    assert first.started_at == at(1)
    requeued = await world.change(first, TaskStatus.QUEUED, clear_lease=True, now=at(2))
    assert requeued is not None
    assert (requeued.lease_owner, requeued.lease_until, requeued.lease_epoch) == (None, None, 1)
    second = await world.start(requeued, "worker-2", at(3))
    assert (second.lease_owner, second.lease_epoch, second.attempts) == ("worker-2", 2, 2)
    assert second.started_at == at(1), "set_started keeps the first start"


async def test_change_task_writes_question_result_error_and_finish(world: World) -> None:
    task = await world.start(await world.task(await world.session()))
    asked = question("Go?")
    waiting = await world.change(task, TaskStatus.WAITING, question=asked, clear_lease=True)
    assert waiting is not None and waiting.question == asked
    assert (waiting.lease_owner, waiting.lease_until) == (None, None)
    requeued = await world.change(waiting, TaskStatus.QUEUED, clear_question=True)
    assert requeued is not None and requeued.question is None
    running = await world.start(requeued)
    done = await world.change(
        running,
        TaskStatus.COMPLETED,
        result=TaskResult("answer ✓", ["a.md"]),
        clear_lease=True,
        set_finished=True,
        now=at(9),
    )
    assert done is not None
    assert (done.result, done.finished_at) == (TaskResult("answer ✓", ["a.md"]), at(9))
    other = await world.start(await world.task(await world.session()))
    failed = await world.change(other, TaskStatus.FAILED, error=TaskError("max_steps", "too long"))
    assert failed is not None and failed.error == TaskError("max_steps", "too long")
    assert await world.get_task(failed) == failed


async def test_a_fenced_change_needs_the_current_epoch(world: World) -> None:
    task = await world.start(await world.task(await world.session()))
    stale = Fence(task.id, task.lease_epoch - 1)
    assert await world.change(task, TaskStatus.COMPLETED, fence=stale) is None
    current = Fence(task.id, task.lease_epoch)
    done = await world.change(task, TaskStatus.COMPLETED, fence=current)
    assert done is not None and done.status is TaskStatus.COMPLETED


async def test_a_change_fenced_by_another_task(world: World) -> None:
    session = await world.session()
    holder = await world.start(await world.task(session))
    other = await world.task(await world.session())
    assert await world.change(other, TaskStatus.CANCELLED, fence=Fence(holder.id, 99)) is None
    fence = Fence(holder.id, holder.lease_epoch)
    cancelled = await world.change(other, TaskStatus.CANCELLED, fence=fence)
    assert cancelled is not None


async def test_concurrent_transitions_of_a_task_have_one_winner(world: World) -> None:
    tasks = [await world.task(await world.session()) for _ in range(10)]
    winners: dict[str, list[str]] = {task.id: [] for task in tasks}

    async def claim(task: Task, owner: str) -> None:
        result = await world.change(
            task, TaskStatus.RUNNING, lease_owner=owner, lease_until=at(30)
        )
        if result is not None:
            winners[task.id].append(owner)

    async with anyio.create_task_group() as group:
        for task in tasks:
            for owner in ("worker-a", "worker-b", "worker-c"):
                group.start_soon(claim, task, owner)

    for task in tasks:
        assert len(winners[task.id]) == 1
        stored = await world.get_task(task)
        assert (stored.lease_owner, stored.lease_epoch) == (winners[task.id][0], 1)


async def test_completion_racing_a_cancel_never_deadlocks(world: World) -> None:
    """A worker finishing (task, then event) races a user cancelling (session lock, task, event)."""
    outcomes: list[tuple[str, bool]] = []

    async def finish(task: Task, session: Session) -> None:
        async with world.store.write() as tx:
            done = await tx.change_task(
                TaskChange(
                    world.space.id,
                    task.id,
                    frozenset({TaskStatus.RUNNING}),
                    TaskStatus.COMPLETED,
                    T0,
                    fence=Fence(task.id, task.lease_epoch),
                )
            )
            if done is not None:
                await tx.append(world.space.id, session.id, [message("done", task.id)], T0)
        outcomes.append(("finish", done is not None))

    async def cancel(task: Task, session: Session) -> None:
        async with world.store.write() as tx:
            await tx.lock_session(world.space.id, session.id, T0)
            cancelled = await tx.change_task(
                TaskChange(
                    world.space.id,
                    task.id,
                    sources_for(TaskStatus.CANCELLED),
                    TaskStatus.CANCELLED,
                    T0,
                )
            )
            if cancelled is not None:
                await tx.append(world.space.id, session.id, [message("cancel", task.id)], T0)
        outcomes.append(("cancel", cancelled is not None))

    pairs: list[tuple[Task, Session]] = []
    for _ in range(10):
        session = await world.session()
        pairs.append((await world.start(await world.task(session)), session))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            for task, session in pairs:
                group.start_soon(finish, task, session)
                group.start_soon(cancel, task, session)
    assert sum(won for _, won in outcomes) == len(pairs)
    for task, session in pairs:
        assert (await world.get_task(task)).status in {TaskStatus.COMPLETED, TaskStatus.CANCELLED}
        assert len(await world.events(session)) == 1


async def test_add_steer_counts_on_queued_and_running_tasks(world: World) -> None:
    session = await world.session()
    queued = await world.task(session)
    running = await world.task_in(await world.session(), TaskStatus.RUNNING)
    waiting = await world.task_in(await world.session(), TaskStatus.WAITING)
    async with world.store.write() as tx:
        assert await tx.add_steer(world.space.id, queued.id)
        assert await tx.add_steer(world.space.id, queued.id)
        assert await tx.add_steer(world.space.id, running.id)
        assert not await tx.add_steer(world.space.id, waiting.id)
        assert not await tx.add_steer(world.space.id, "tsk_missing")
    assert (await world.get_task(queued)).steer_count == 2
    assert (await world.get_task(running)).steer_count == 1


async def test_session_tasks_by_status_oldest_first(world: World) -> None:
    session = await world.session()
    first = await world.task(session, at(1))
    second = await world.task(session, at(2))
    running = await world.start(first)
    async with world.store.read() as tx:
        every = await tx.session_tasks(
            world.space.id, session.id, frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})
        )
        queued = await tx.session_tasks(world.space.id, session.id, frozenset({TaskStatus.QUEUED}))
        none = await tx.session_tasks(world.space.id, session.id, frozenset())
    assert every == [running, second]
    assert queued == [second]
    assert none == []


# ---------------------------------------------------------------------------------------------
# Tasks: claims and leases


async def claimable(world: World, limit: int = 100) -> list[str]:
    async with world.store.write() as tx:
        return [task.id for task in await tx.claimable_tasks(T0, limit)]


async def test_claimable_tasks_are_the_oldest_queued_of_free_sessions(world: World) -> None:
    busy, asking, free, idle = [await world.session() for _ in range(4)]
    await world.task_in(busy, TaskStatus.RUNNING, at(0))
    behind_running = await world.task(busy, at(1))
    await world.task_in(asking, TaskStatus.WAITING, at(0))
    await world.task(asking, at(2))
    later = await world.task(free, at(5))
    earlier = await world.task(free, at(3))
    await world.task_in(idle, TaskStatus.COMPLETED, at(0))
    next_in_idle = await world.task(idle, at(4))

    assert await claimable(world) == [earlier.id, next_in_idle.id]
    assert await claimable(world, limit=1) == [earlier.id]
    assert await claimable(world, limit=0) == []
    assert later.id not in await claimable(world)

    await world.change(await world.start(earlier), TaskStatus.COMPLETED, clear_lease=True)
    assert await claimable(world) == [next_in_idle.id, later.id]
    running = (await world.get_task(behind_running)).status
    assert running is TaskStatus.QUEUED


async def test_claims_by_concurrent_workers_never_overlap(world: World) -> None:
    tasks = [await world.task(await world.session(), at(n)) for n in range(30)]
    claimed: list[str] = []

    async def worker(name: str) -> None:
        while True:
            async with world.store.write() as tx:
                won: list[str] = []
                for task in await tx.claimable_tasks(T0, 4):
                    change = TaskChange(
                        world.space.id,
                        task.id,
                        frozenset({TaskStatus.QUEUED}),
                        TaskStatus.RUNNING,
                        T0,
                        lease_owner=name,
                        lease_until=at(30),
                    )
                    if await tx.change_task(change) is not None:
                        won.append(task.id)
            claimed.extend(won)
            if not won:
                return
            await anyio.sleep(0)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            for name in ("w1", "w2", "w3"):
                group.start_soon(worker, name)
    assert sorted(claimed) == sorted(task.id for task in tasks)


async def test_expired_leases_are_running_tasks_past_their_lease(world: World) -> None:
    sessions = [await world.session() for _ in range(4)]
    early = await world.start(await world.task(sessions[0]), when=at(0))
    late = await world.start(await world.task(sessions[1]), when=at(10))
    await world.task(sessions[2])
    await world.task_in(sessions[3], TaskStatus.WAITING)

    async def expired(now: datetime, limit: int = 10) -> list[str]:
        async with world.store.write() as tx:
            return [task.id for task in await tx.expired_leases(now, limit)]

    assert await expired(at(0) + LEASE) == []
    assert await expired(at(1) + LEASE) == [early.id]
    assert await expired(at(11) + LEASE) == [early.id, late.id]
    assert await expired(at(11) + LEASE, limit=1) == [early.id]


async def test_extend_leases_of_the_owner_only(world: World) -> None:
    mine = await world.start(await world.task(await world.session()), "me")
    also_mine = await world.start(await world.task(await world.session()), "me")
    theirs = await world.start(await world.task(await world.session()), "them")
    async with world.store.write() as tx:
        count = await tx.extend_leases("me", [mine.id, theirs.id, "tsk_missing"], at(100))
        assert await tx.extend_leases("me", [], at(100)) == 0
    assert count == 1
    assert (await world.get_task(mine)).lease_until == at(100)
    assert (await world.get_task(also_mine)).lease_until == T0 + LEASE
    assert (await world.get_task(theirs)).lease_until == T0 + LEASE


async def test_owned_tasks_are_running_tasks_by_owner(world: World) -> None:
    mine = await world.start(await world.task(await world.session(), at(1)), "me")
    theirs = await world.start(await world.task(await world.session(), at(2)), "them")
    await world.task(await world.session())
    async with world.store.write() as tx:
        assert [task.id for task in await tx.owned_tasks("me")] == [mine.id]
        assert [task.id for task in await tx.owned_tasks(None)] == [mine.id, theirs.id]
        assert await tx.owned_tasks("nobody") == []


async def test_check_fence_extends_a_current_lease(world: World) -> None:
    task = await world.start(await world.task(await world.session()))
    async with world.store.write() as tx:
        assert await tx.check_fence(Fence(task.id, task.lease_epoch), at(500))
        assert not await tx.check_fence(Fence(task.id, task.lease_epoch + 1), at(900))
        assert not await tx.check_fence(Fence("tsk_missing", 1), at(900))
    assert (await world.get_task(task)).lease_until == at(500)
    await world.change(task, TaskStatus.COMPLETED, clear_lease=True)
    async with world.store.write() as tx:
        assert not await tx.check_fence(Fence(task.id, task.lease_epoch), at(900))


# ---------------------------------------------------------------------------------------------
# Sessions


async def test_session_status_is_derived_when_read(store: SqlStore) -> None:
    world = await World.make(store, idle_timeout_s=60)
    session = await world.session(when=T0)
    assert (await world.get_session(session, at(59))).status is SessionStatus.IDLE
    assert (await world.get_session(session, at(60))).status is SessionStatus.DORMANT
    task = await world.task(session)
    assert (await world.get_session(session, at(600))).status is SessionStatus.WORKING
    running = await world.start(task)
    assert (await world.get_session(session, at(600))).status is SessionStatus.WORKING
    asked = question("Which file?")
    waiting = await world.change(running, TaskStatus.WAITING, question=asked, clear_lease=True)
    assert waiting is not None
    found = await world.get_session(session, at(600))
    assert (found.status, found.open_question) == (SessionStatus.WAITING, asked)
    await world.change(waiting, TaskStatus.CANCELLED)
    found = await world.get_session(session, at(30))
    assert (found.status, found.open_question) == (SessionStatus.IDLE, None)


async def test_create_session_needs_an_agent_of_the_space(world: World) -> None:
    with pytest.raises(NotFound):
        async with world.store.write() as tx:
            await tx.create_session(NewSession(world.space.id, "agt_missing"), T0)


async def test_create_get_rename_and_lock_a_session(world: World) -> None:
    session = await world.session("First", when=at(1), external_user_id="cust-7")
    assert (session.title, session.external_user_id, session.status) == (
        "First",
        "cust-7",
        SessionStatus.IDLE,
    )
    assert session.id.startswith("ses_")
    assert await world.get_session(session, at(1)) == session
    async with world.store.write() as tx:
        assert await tx.rename_session(world.space.id, session.id, "Renamed")
        assert not await tx.rename_session(world.space.id, "ses_missing", "x")
        locked = await tx.lock_session(world.space.id, session.id, at(1))
        assert await tx.lock_session(world.space.id, "ses_missing", at(1)) is None
    assert locked is not None and locked.title == "Renamed"


async def test_create_session_with_a_chosen_id(world: World) -> None:
    async with world.store.write() as tx:
        chosen = await tx.create_session(
            NewSession(world.space.id, world.agent.id, session_id="ses_chosen"), T0
        )
    assert chosen.id == "ses_chosen"


async def make_sessions_in_every_status(world: World) -> dict[SessionStatus, list[str]]:
    """Nine sessions, activity 100 s apart; read at 1000 s with a 600 s idle timeout.

    Newest first per status: working [5, 0], waiting [6, 1], dormant [4, 3, 2], idle [8, 7].
    """
    sessions = [await world.session(f"Session {n}", when=at(n * 100)) for n in range(9)]
    for n in (0, 5):
        await world.task_in(sessions[n], TaskStatus.QUEUED if n else TaskStatus.RUNNING)
    for n in (1, 6):
        await world.task_in(sessions[n], TaskStatus.WAITING)
    await world.task_in(sessions[2], TaskStatus.COMPLETED)

    def ids(*numbers: int) -> list[str]:
        return [sessions[n].id for n in numbers]

    return {
        SessionStatus.WORKING: ids(5, 0),
        SessionStatus.WAITING: ids(6, 1),
        SessionStatus.DORMANT: ids(4, 3, 2),
        SessionStatus.IDLE: ids(8, 7),
    }


async def all_pages(world: World, limit: int, **filters: Any) -> list[Session]:
    found: list[Session] = []
    cursor: str | None = None
    for _ in range(50):
        async with world.store.read() as tx:
            page = await tx.list_sessions(
                ListSessions(
                    world.space.id, world.agent.id, at(1000), limit=limit, cursor=cursor, **filters
                )
            )
        assert len(page.items) <= limit
        found += page.items
        cursor = page.next_cursor
        if cursor is None:
            return found
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("limit", [1, 2, 50])
async def test_list_sessions_filters_status_across_pages(store: SqlStore, limit: int) -> None:
    world = await World.make(store, idle_timeout_s=600)
    expected = await make_sessions_in_every_status(world)
    for status, ids in expected.items():
        found = await all_pages(world, limit, status=status)
        assert [session.id for session in found] == ids, status
        assert {session.status for session in found} == {status}
    everything = await all_pages(world, limit)
    assert [session.title for session in everything] == [f"Session {n}" for n in range(8, -1, -1)]


async def test_list_sessions_by_title_and_external_user(world: World) -> None:
    await world.session("Invoice 100% paid", external_user_id="u1")
    await world.session("invoice_2", external_user_id="u2")
    await world.session("Other", external_user_id="u1")

    async def titles(**filters: Any) -> list[str]:
        async with world.store.read() as tx:
            page = await tx.list_sessions(ListSessions(world.space.id, world.agent.id, T0, **filters))
        return sorted(session.title for session in page.items)

    assert await titles(query="INVOICE") == ["Invoice 100% paid", "invoice_2"]
    assert await titles(query="100%") == ["Invoice 100% paid"]
    assert await titles(query="e_") == ["invoice_2"]
    assert await titles(external_user_id="u1") == ["Invoice 100% paid", "Other"]
    assert await titles(external_user_id="u1", query="other") == ["Other"]
    assert await titles(query="nothing") == []


async def test_list_sessions_of_an_unknown_agent_is_empty(world: World) -> None:
    await world.session()
    async with world.store.read() as tx:
        page = await tx.list_sessions(ListSessions(world.space.id, "agt_missing", T0))
    assert (page.items, page.next_cursor) == ([], None)


@pytest.mark.parametrize(
    "cursor",
    ["not base64 !!", "bm90IGpzb24", "WyJ4Il0", "WyJzZXMiLDEsMl0", "", "WyJzZXMiLCIyMDI1IiwiaWQiXQ"],
)
async def test_malformed_cursors_are_invalid_requests(world: World, cursor: str) -> None:
    async with world.store.read() as tx:
        with pytest.raises(InvalidRequest):
            await tx.list_sessions(ListSessions(world.space.id, world.agent.id, T0, cursor=cursor))
        with pytest.raises(InvalidRequest):
            await tx.list_tasks(ListTasks(world.space.id, cursor=cursor))
        with pytest.raises(InvalidRequest):
            await tx.list_agents(world.space.id, 10, cursor)


async def test_a_cursor_of_another_list_is_invalid(world: World) -> None:
    for n in range(3):
        await world.task(await world.session(), at(n))
    async with world.store.read() as tx:
        page = await tx.list_tasks(ListTasks(world.space.id, limit=1))
        assert page.next_cursor is not None
        with pytest.raises(InvalidRequest):
            await tx.list_sessions(
                ListSessions(world.space.id, world.agent.id, T0, cursor=page.next_cursor)
            )
        with pytest.raises(InvalidRequest):
            await tx.list_tasks(ListTasks(world.space.id, limit=0))


async def test_delete_session_takes_its_events_and_tasks(world: World) -> None:
    doomed, kept = await world.session(), await world.session()
    for session in (doomed, kept):
        task = await world.task(session)
        async with world.store.write() as tx:
            await tx.append(world.space.id, session.id, [message("hi", task.id)], T0)
    async with world.store.write() as tx:
        assert await tx.delete_session(world.space.id, doomed.id)
        assert not await tx.delete_session(world.space.id, doomed.id)
    async with world.store.read() as tx:
        assert await tx.get_session(world.space.id, doomed.id, T0) is None
        assert (await tx.list_tasks(ListTasks(world.space.id, session_id=doomed.id))).items == []
        assert len((await tx.list_tasks(ListTasks(world.space.id))).items) == 1
    assert await world.events(doomed) == []
    assert len(await world.events(kept)) == 1


# ---------------------------------------------------------------------------------------------
# Tasks list


async def test_list_tasks_newest_first_with_filters(world: World) -> None:
    first, second = await world.session(), await world.session()
    old = await world.task(first, at(1))
    waiting = await world.task_in(second, TaskStatus.WAITING, at(2))
    new = await world.task(first, at(3))
    async with world.store.write() as tx:
        other_agent = await tx.create_agent(NewAgent(world.space.id, "other"), T0)
        elsewhere = await tx.create_session(NewSession(world.space.id, other_agent.id), T0)
        foreign = await tx.insert_task(
            NewTask(world.space.id, other_agent.id, elsewhere.id, new_id("task"), None, at(4))
        )

    async def ids(limit: int = 50, **filters: Any) -> list[str]:
        found: list[str] = []
        cursor: str | None = None
        while True:
            async with world.store.read() as tx:
                page = await tx.list_tasks(
                    ListTasks(world.space.id, limit=limit, cursor=cursor, **filters)
                )
            found += [task.id for task in page.items]
            if (cursor := page.next_cursor) is None:
                return found

    every = [foreign.id, new.id, waiting.id, old.id]
    assert await ids() == every
    assert await ids(limit=1) == every
    assert await ids(limit=3) == every
    assert await ids(status=TaskStatus.WAITING) == [waiting.id]
    assert await ids(session_id=first.id) == [new.id, old.id]
    assert await ids(agent_id=world.agent.id, limit=1) == [new.id, waiting.id, old.id]
    assert await ids(agent_id=other_agent.id) == [foreign.id]


# ---------------------------------------------------------------------------------------------
# Agents


async def test_agents_create_get_update_and_list(world: World) -> None:
    async with world.store.write() as tx:
        created = await tx.create_agent(
            NewAgent(
                world.space.id,
                "writer",
                description="Writes",
                instructions="Be terse.",
                model="openai:gpt-4o-mini",
                settings=AgentSettings(max_steps=7, tools=["shell"]),
            ),
            at(1),
        )
    async with world.store.read() as tx:
        assert await tx.get_agent(world.space.id, created.id) == created
    async with world.store.write() as tx:
        renamed = await tx.update_agent(
            world.space.id, created.id, AgentPatch(name="editor"), at(2)
        )
        cleared = await tx.update_agent(
            world.space.id,
            created.id,
            AgentPatch(set_model=True, settings=AgentSettings(idle_timeout_s=5)),
            at(3),
        )
        assert await tx.update_agent(world.space.id, "agt_missing", AgentPatch(), T0) is None
    assert renamed is not None and cleared is not None
    assert (renamed.name, renamed.model, renamed.updated_at) == (
        "editor",
        "openai:gpt-4o-mini",
        at(2),
    )
    assert (cleared.name, cleared.model, cleared.description) == ("editor", None, "Writes")
    assert cleared.settings == AgentSettings(idle_timeout_s=5)
    assert cleared.created_at == at(1)

    async with world.store.read() as tx:
        first = await tx.list_agents(world.space.id, 1, None)
        assert first.next_cursor is not None
        second = await tx.list_agents(world.space.id, 1, first.next_cursor)
    assert [agent.id for agent in first.items + second.items] == [world.agent.id, created.id]
    assert second.next_cursor is None


async def test_an_updated_idle_timeout_changes_session_status(world: World) -> None:
    session = await world.session(when=T0)
    assert (await world.get_session(session, at(100))).status is SessionStatus.IDLE
    async with world.store.write() as tx:
        patch = AgentPatch(settings=AgentSettings(idle_timeout_s=50))
        await tx.update_agent(world.space.id, world.agent.id, patch, T0)
    assert (await world.get_session(session, at(100))).status is SessionStatus.DORMANT
    async with world.store.read() as tx:
        page = await tx.list_sessions(
            ListSessions(world.space.id, world.agent.id, at(100), status=SessionStatus.DORMANT)
        )
    assert [found.id for found in page.items] == [session.id]


async def test_delete_agent_takes_its_sessions_tasks_and_events(world: World) -> None:
    session = await world.session()
    task = await world.task(session)
    async with world.store.write() as tx:
        await tx.append(world.space.id, session.id, [message("hi", task.id)], T0)
        other = await tx.create_agent(NewAgent(world.space.id, "other"), T0)
        kept = await tx.create_session(NewSession(world.space.id, other.id), T0)
        await tx.append(world.space.id, kept.id, [message("kept")], T0)
    async with world.store.write() as tx:
        assert await tx.delete_agent(world.space.id, world.agent.id)
        assert not await tx.delete_agent(world.space.id, world.agent.id)
    async with world.store.read() as tx:
        assert await tx.get_agent(world.space.id, world.agent.id) is None
        assert await tx.get_session(world.space.id, session.id, T0) is None
        assert await tx.get_task(world.space.id, task.id) is None
        assert await tx.get_session(world.space.id, kept.id, T0) is not None
    assert await world.events(session) == []
    assert len(await world.events(kept)) == 1


async def test_create_agent_needs_its_space(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        async with store.write() as tx:
            await tx.create_agent(NewAgent("spc_missing", "x"), T0)


# ---------------------------------------------------------------------------------------------
# Spaces, members and API keys


def key_request(world: World, secret_hash: str, **fields: Any) -> NewApiKey:
    values: dict[str, Any] = {
        "space_id": world.space.id,
        "member_id": world.member.id,
        "name": "ci",
        "role": Role.ADMIN,
        "secret_hash": secret_hash,
        "prefix": "ob_abcd",
        "expires_at": None,
    }
    values.update(fields)
    return NewApiKey(**values)


async def test_api_keys_lifecycle(store: SqlStore) -> None:
    async with store.read() as tx:
        assert not await tx.any_api_key()
    world = await World.make(store)
    async with store.write() as tx:
        await tx.lock_keys()
        key = await tx.create_api_key(key_request(world, "a" * 64, expires_at=at(3600)), at(1))
        other = await tx.create_api_key(key_request(world, "b" * 64, key_id="key_chosen"), at(2))
    assert (key.role, key.prefix, key.expires_at, key.last_used_at) == (
        Role.ADMIN,
        "ob_abcd",
        at(3600),
        None,
    )
    assert other.id == "key_chosen"
    async with store.read() as tx:
        assert await tx.any_api_key()
        assert await tx.get_space(world.space.id) == world.space
        found = await tx.find_api_key("a" * 64)
        assert found == (key, world.member)
        assert await tx.find_api_key("c" * 64) is None
    async with store.write() as tx:
        await tx.touch_api_key(key.id, at(50))
        assert await tx.revoke_api_key(world.space.id, other.id, at(60))
        assert not await tx.revoke_api_key(world.space.id, other.id, at(61))
    async with store.read() as tx:
        found = await tx.find_api_key("a" * 64)
        assert found is not None and found[0].last_used_at == at(50)
        assert await tx.find_api_key("b" * 64) is None, "revoked keys do not authenticate"
        listed = await tx.list_api_keys(world.space.id)
    assert [(k.id, k.revoked_at) for k in listed] == [(key.id, None), (other.id, at(60))]


async def test_keys_and_members_need_their_space_and_member(world: World) -> None:
    with pytest.raises(NotFound):
        async with world.store.write() as tx:
            await tx.create_member("spc_missing", "x", Role.MEMBER, T0)
    other = await World.make(world.store, "two")
    with pytest.raises(NotFound):
        async with world.store.write() as tx:
            await tx.create_api_key(key_request(world, "d" * 64, member_id=other.member.id), T0)


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
    for attempt in (
        lambda tx: tx.append(other, session.id, [message("x")], T0),
        lambda tx: tx.put_context(other, session.id, ContextProjection()),
        lambda tx: tx.insert_task(
            NewTask(other, mine.agent.id, session.id, new_id("task"), None, T0)
        ),
        lambda tx: tx.create_session(NewSession(other, mine.agent.id), T0),
    ):
        with pytest.raises(NotFound):
            async with store.write() as tx:
                await attempt(tx)

    found = await mine.get_session(session)
    assert (found.title, found.last_seq, found.status) == ("secret", 1, SessionStatus.WORKING)
    assert (await mine.get_task(task)).status is TaskStatus.RUNNING
