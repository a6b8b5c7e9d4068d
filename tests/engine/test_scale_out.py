"""Several organizers on one store, as several worker processes would be: the limits per space
and per agent hold across them, fair turns count every worker's runs, an agent's tasks go to
the worker its computer is placed on, and a worker that lost a placement stops that computer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent, AgentSettings, Task
from openbuda.ports import Store
from openbuda.runtime import Runtime
from openbuda.testing import FakeClock
from tests.harness import engine_settings, make_principal

pytestmark = pytest.mark.anyio

LEASE_S = 30.0


@dataclass
class KeptComputers:
    """The computers a worker keeps (the organizer's ``ComputerHost``), recorded."""

    kept: dict[str, str] = field(default_factory=dict)
    forgotten: list[str] = field(default_factory=list)

    def placed(self) -> Iterable[tuple[str, str]]:
        return [(space, agent) for agent, space in self.kept.items()]

    async def forget(self, agent_id: str) -> None:
        self.kept.pop(agent_id, None)
        self.forgotten.append(agent_id)


@dataclass
class Cluster:
    store: Store
    home: Path
    clock: FakeClock

    def worker(
        self, worker_id: str, computers: KeptComputers | None = None, **limits: Any
    ) -> Runtime:
        settings = engine_settings(
            self.home, embedded=False, lease_seconds=LEASE_S, worker_id=worker_id, **limits
        )
        runtime = Runtime.build(settings, self.store, clock=self.clock, worker_id=worker_id)
        if computers is not None:
            runtime.organizer.computers = computers
        return runtime

    async def queue(self, principal: Principal, agent: Agent, count: int) -> list[str]:
        """``count`` sessions of ``agent``, one queued task each."""
        services = self.worker("client")
        task_ids: list[str] = []
        for index in range(count):
            session = await services.sessions.create(principal, agent.id)
            accepted = await services.sessions.send(principal, session.id, f"task {index}")
            task_ids.append(accepted.task_id)
        return task_ids

    async def agent(self, principal: Principal, name: str) -> Agent:
        return await self.worker("client").agents.create(principal, name=name, model="test:x")


@pytest.fixture
async def cluster(store: Store, tmp_path: Path) -> Cluster:
    return Cluster(store, tmp_path, FakeClock())


def ids(tasks: list[Task]) -> list[str]:
    return [task.id for task in tasks]


async def test_the_limit_per_space_holds_across_workers(cluster: Cluster) -> None:
    space = await make_principal(cluster.store, "busy")
    agents = [await cluster.agent(space, f"a{n}") for n in range(3)]
    for agent in agents:
        await cluster.queue(space, agent, 2)
    one = cluster.worker("w1", max_tasks_per_space=3)
    two = cluster.worker("w2", max_tasks_per_space=3)
    first = await one.organizer.claim(10)
    second = await two.organizer.claim(10)
    assert len(first) == 3
    assert second == [], "the space's three slots are taken, on another worker"


async def test_the_limit_per_agent_holds_and_other_agents_go_on(cluster: Cluster) -> None:
    space = await make_principal(cluster.store)
    busy, quiet = await cluster.agent(space, "busy"), await cluster.agent(space, "quiet")
    busy_ids = await cluster.queue(space, busy, 3)
    quiet_ids = await cluster.queue(space, quiet, 1)
    worker = cluster.worker("w1", max_tasks_per_agent=2)
    claimed = await worker.organizer.claim(10)
    assert sorted(ids(claimed)) == sorted([*busy_ids[:2], *quiet_ids])
    assert await worker.organizer.claim(10) == []


async def test_fair_turns_count_the_runs_of_every_worker(cluster: Cluster) -> None:
    big, small = (
        await make_principal(cluster.store, "big"),
        await make_principal(cluster.store, "small"),
    )
    big_agent, small_agent = await cluster.agent(big, "b"), await cluster.agent(small, "s")
    await cluster.queue(big, big_agent, 3)
    small_ids = await cluster.queue(small, small_agent, 1)
    elsewhere = cluster.worker("w2")
    assert len(await elsewhere.organizer.claim(1)) == 1  # the big space's oldest, on w2
    # w1 runs nothing, yet the big space already has a task running: the small space's turn
    here = cluster.worker("w1")
    assert ids(await here.organizer.claim(1)) == small_ids


async def test_an_agents_tasks_go_to_the_worker_its_computer_lives_on(cluster: Cluster) -> None:
    space = await make_principal(cluster.store)
    agent = await cluster.agent(space, "placed")
    task_ids = await cluster.queue(space, agent, 3)
    one, two = cluster.worker("w1"), cluster.worker("w2")
    assert ids(await one.organizer.claim(1)) == task_ids[:1]
    assert await two.organizer.claim(10) == [], "the computer lives on w1"
    assert ids(await one.organizer.claim(10)) == task_ids[1:]
    async with cluster.store.read() as tx:
        status = await tx.cluster_status(cluster.clock.now())
    assert status.processes == []  # not started: nothing registered, only placed
    # once w1's placement lease ran out (it died), w2 takes the computer over
    cluster.clock.advance(LEASE_S + 1)
    async with cluster.store.write() as tx:
        reaped = await tx.expired_leases(cluster.clock.now(), 10)
    assert len(reaped) == 3
    await two.organizer.reap()
    assert sorted(ids(await two.organizer.claim(10))) == sorted(task_ids)


async def test_an_agent_without_computer_tools_runs_on_every_worker(cluster: Cluster) -> None:
    """Only agents that may use their computer are tied to one worker: an agent serving many
    people with no computer tool spreads over all of them."""
    space = await make_principal(cluster.store)
    agent = await cluster.worker("client").agents.create(
        space, name="chat-only", model="test:x", settings=AgentSettings(tools=["remember"])
    )
    task_ids = await cluster.queue(space, agent, 4)
    one, two = cluster.worker("w1"), cluster.worker("w2")
    assert ids(await one.organizer.claim(2)) == task_ids[:2]
    assert ids(await two.organizer.claim(2)) == task_ids[2:]
    async with cluster.store.write() as tx:
        assert await tx.release_computers(None, None) == 0, "nothing was placed"


async def test_a_worker_that_lost_a_placement_stops_that_computer(cluster: Cluster) -> None:
    space = await make_principal(cluster.store)
    agent = await cluster.agent(space, "moved")
    await cluster.queue(space, agent, 2)
    kept = KeptComputers({agent.id: space.space_id})
    stalled = cluster.worker("w1", kept)
    await stalled.organizer.heartbeat()  # keeps its idle computer placed
    assert await cluster.worker("w2").organizer.claim(10) == []
    cluster.clock.advance(LEASE_S + 1)  # w1 stalled past its lease
    taken = await cluster.worker("w2").organizer.claim(1)
    assert len(taken) == 1
    await stalled.organizer.heartbeat()
    assert kept.forgotten == [agent.id]
    assert kept.kept == {}


async def test_a_process_registers_and_a_clean_stop_gives_back_its_placements(
    store: Store, tmp_path: Path
) -> None:
    space = await make_principal(store)
    settings = engine_settings(tmp_path, embedded=False, worker_id="w1")
    async with Runtime.start(settings, store=store, worker_id="w1") as runtime:
        async with store.read() as tx:
            (process,) = (await tx.cluster_status(runtime.clock.now())).processes
        assert (process.id, process.kind) == ("w1", "api+worker")
        agent = await runtime.agents.create(space, name="a", model="test:none")
        session = await runtime.sessions.create(space, agent.id)
        accepted = await runtime.sessions.send(space, session.id, "go")
        with anyio.fail_after(10):
            while (await runtime.tasks.get(space, accepted.task_id)).status.value != "failed":
                await anyio.sleep(0.01)  # the test model does not exist: it fails at once
        async with store.read() as tx:
            (process,) = (await tx.cluster_status(runtime.clock.now())).processes
        assert process.computers == 1, "the claim placed the agent's computer here"
    async with store.read() as tx:
        status = await tx.cluster_status(runtime.clock.now())
    assert status.processes == []
    async with store.write() as tx:
        assert await tx.release_computers(None, None) == 0, "the stop released its placement"
