"""Store conformance: the processes of a deployment, computer placements, the claim counts and
``cluster_status`` (scale-out)."""

from __future__ import annotations

import anyio
import pytest

from openbuda.domain.ids import new_id
from openbuda.domain.states import TaskStatus
from openbuda.ports import NewAgent, NewSession, NewTask, ProcessInfo, TaskChange, WriteTx

from .store_world import T0, World, at, question

pytestmark = pytest.mark.anyio


def process(process_id: str, seen: float = 0, kind: str = "worker") -> ProcessInfo:
    return ProcessInfo(
        id=process_id,
        kind=kind,  # pyright: ignore[reportArgumentType]
        host="box-1",
        pid=4242,
        version="0.test",
        started_at=T0,
        seen_at=at(seen),
    )


async def test_processes_register_heartbeat_and_leave(world: World) -> None:
    async with world.store.write() as tx:
        await tx.register_process(process("w1"))
        await tx.register_process(process("api-1", kind="api"))
        assert await tx.heartbeat_process("w1", at(5))
        assert not await tx.heartbeat_process("w-unknown", at(5))
    async with world.store.read() as tx:
        status = await tx.cluster_status(at(6))
    assert [(p.id, p.kind, p.seen_at) for p in status.processes] == [
        ("w1", "worker", at(5)),
        ("api-1", "api", T0),
    ]
    async with world.store.write() as tx:
        await tx.register_process(process("w1", seen=9))  # a restart takes the row over
        await tx.remove_process("api-1")
    async with world.store.read() as tx:
        status = await tx.cluster_status(at(10))
    assert [(p.id, p.seen_at, p.pid) for p in status.processes] == [("w1", at(9), 4242)]
    async with world.store.write() as tx:
        await tx.register_process(process("w-old", seen=-3600))
        assert await tx.prune_processes(at(-60)) == 1  # only the one not seen since
    async with world.store.read() as tx:
        assert [p.id for p in (await tx.cluster_status(at(10))).processes] == ["w1"]


async def test_a_placement_is_taken_extended_and_taken_over_only_once_expired(
    world: World,
) -> None:
    space, agent = world.space.id, world.agent.id
    async with world.store.write() as tx:
        assert await tx.place_computers("w1", [(space, agent)], at(30), T0) == {agent}
        # another worker cannot take it while the lease holds
        assert await tx.place_computers("w2", [(space, agent)], at(40), at(10)) == set()
        # its holder extends it
        assert await tx.place_computers("w1", [(space, agent)], at(60), at(20)) == {agent}
        assert await tx.place_computers("w2", [(space, agent)], at(70), at(50)) == set()
        # once the lease ran out, another worker takes it over; the old holder has lost it
        assert await tx.place_computers("w2", [(space, agent)], at(100), at(61)) == {agent}
        assert await tx.place_computers("w1", [], at(100), at(62)) == set()
        assert await tx.place_computers("w1", [(space, agent)], at(100), at(62)) == set()
    async with world.store.read() as tx:
        status = await tx.cluster_status(at(63))
    assert status.processes == []  # placements do not register processes
    async with world.store.write() as tx:
        await tx.register_process(process("w2", seen=63))
    async with world.store.read() as tx:
        (w2,) = (await tx.cluster_status(at(63))).processes
    assert w2.computers == 1
    async with world.store.write() as tx:
        assert await tx.release_computers("w1", None) == 0
        assert await tx.release_computers("w2", []) == 0
        assert await tx.release_computers("w2", [agent]) == 1
        assert await tx.place_computers("w1", [(space, agent)], at(200), at(64)) == {agent}


async def test_claims_leave_the_tasks_of_computers_placed_elsewhere(world: World) -> None:
    async with world.store.write() as tx:
        other = await tx.create_agent(NewAgent(world.space.id, "other"), T0)
        session = await tx.create_session(NewSession(world.space.id, other.id, "", None), T0)
    mine = await world.task(await world.session(), at(1))
    async with world.store.write() as tx:
        request = NewTask(
            world.space.id, other.id, session.id, new_id("task"), new_id("message"), at(2)
        )
        theirs = await tx.insert_task(request)
    async with world.store.write() as tx:
        await tx.place_computers("w2", [(world.space.id, other.id)], at(30), T0)
    async with world.store.write() as tx:
        seen_by = {
            worker: [t.id for t in await tx.claimable_tasks(at(5), 10, worker)]
            for worker in ("w1", "w2", None)
        }
        expired = [t.id for t in await tx.claimable_tasks(at(31), 10, "w1")]
    assert seen_by == {"w1": [mine.id], "w2": [mine.id, theirs.id], None: [mine.id, theirs.id]}
    assert expired == [mine.id, theirs.id]


async def test_running_counts_and_cluster_status_count_every_process(world: World) -> None:
    a, b = await world.session(), await world.session()
    first = await world.start(await world.task(a, at(1)), owner="w1")
    await world.task(a, at(2))  # queued behind the running one
    await world.start(await world.task(b, at(3)), owner="w2", when=at(-40))  # lease ran out
    waiting_session = await world.session()
    waiting = await world.start(await world.task(waiting_session, at(4)), owner="w1")
    await world.change(waiting, TaskStatus.WAITING, question=question(), clear_lease=True)
    async with world.store.write() as tx:
        per_space, per_agent = await tx.running_counts()
        await tx.register_process(process("w1"))
    assert per_space == {world.space.id: 2}
    assert per_agent == {world.agent.id: 2}
    async with world.store.read() as tx:
        status = await tx.cluster_status(at(10))
    (queue,) = status.spaces
    assert (queue.space_id, queue.queued, queue.running, queue.waiting) == (
        world.space.id,
        1,
        2,
        1,
    )
    assert queue.oldest_queued_at == at(2)
    assert status.expired_leases == 1
    (w1,) = status.processes
    assert (w1.id, w1.running) == ("w1", 1)
    assert first.lease_owner == "w1"


async def test_claim_counts_wait_for_the_claim_in_progress(world: World) -> None:
    """On PostgreSQL a second claim's counts wait until the first claim committed, so both
    cannot start against the same free slot; SQLite's single writer does the same."""
    session = await world.session()
    task = await world.task(session, T0)
    seen: list[int] = []
    first_locked = anyio.Event()

    async def claim(tx: WriteTx) -> None:
        change = TaskChange(
            world.space.id,
            task.id,
            frozenset({TaskStatus.QUEUED}),
            TaskStatus.RUNNING,
            T0,
            lease_owner="w1",
            lease_until=at(30),
        )
        assert await tx.change_task(change) is not None

    async def first() -> None:
        async with world.store.write() as tx:
            await tx.running_counts()
            first_locked.set()
            await anyio.sleep(0.2)  # a claim that takes a while
            await claim(tx)

    async def second() -> None:
        await first_locked.wait()
        async with world.store.write() as tx:
            per_space, _ = await tx.running_counts()
            seen.append(per_space.get(world.space.id, 0))

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        group.start_soon(second)
    assert seen == [1]  # it counted the task the first claim started
