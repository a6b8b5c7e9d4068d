"""Store conformance: task transitions (the domain's table, compare-and-set), fences, claims
and leases."""

from __future__ import annotations

from datetime import datetime

import anyio
import anyio.lowlevel
import pytest

from openbuda.domain.errors import NotFound
from openbuda.domain.ids import new_id
from openbuda.domain.records import Session, Task, TaskError, TaskResult
from openbuda.domain.states import TRANSITIONS, TaskStatus, sources_for
from openbuda.ports import (
    Fence,
    NewTask,
    TaskChange,
)

from .store_world import LEASE, T0, World, at, message, question

pytestmark = pytest.mark.anyio


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
    assert waiting is not None
    assert waiting.question == asked
    assert (waiting.lease_owner, waiting.lease_until) == (None, None)
    requeued = await world.change(waiting, TaskStatus.QUEUED, clear_question=True)
    assert requeued is not None
    assert requeued.question is None
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
    assert failed is not None
    assert failed.error == TaskError("max_steps", "too long")
    assert await world.get_task(failed) == failed


async def test_a_fenced_change_needs_the_current_epoch(world: World) -> None:
    task = await world.start(await world.task(await world.session()))
    stale = Fence(task.id, task.lease_epoch - 1)
    assert await world.change(task, TaskStatus.COMPLETED, fence=stale) is None
    current = Fence(task.id, task.lease_epoch)
    done = await world.change(task, TaskStatus.COMPLETED, fence=current)
    assert done is not None
    assert done.status is TaskStatus.COMPLETED


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
        result = await world.change(task, TaskStatus.RUNNING, lease_owner=owner, lease_until=at(30))
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


async def test_claimable_tasks_take_turns_across_spaces(world: World) -> None:
    """A space with a backlog cannot crowd out another: each space's oldest, then the next."""
    other = await World.make(world.store, "two")
    busy = [await world.task(await world.session(), at(n)) for n in range(1, 4)]
    quiet = await other.task(await other.session(), at(9))
    assert await claimable(world) == [busy[0].id, quiet.id, busy[1].id, busy[2].id]
    assert await claimable(world, limit=2) == [busy[0].id, quiet.id]


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
            await anyio.lowlevel.checkpoint()

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
