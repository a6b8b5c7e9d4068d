"""The organizer: decides what runs when, in one engine process.

- claims queued tasks with a lease (``lease_owner``, ``lease_until``, a fencing
  ``lease_epoch``): a bounded pool of concurrent runs per process; limits per space and per
  agent counted over *every* process's running tasks in the claim's transaction (under the
  store's claim lock, so they hold across processes); fair turns across spaces (each slot goes
  to the space with the fewest tasks running anywhere) so one busy tenant never starves others;
- honours the placement of computers: an agent's tasks are claimed by the worker its computer
  lives on while that placement's lease holds; a claim places the computer here otherwise;
- heartbeats the leases of the runs it holds and the placements of the computers it keeps; a
  computer whose placement another worker took over (this one stalled) is stopped here;
- reaps leases that expired anywhere (``running -> queued``, reason ``lease_expired``);
- at start re-queues what an earlier incarnation of this worker held (in the embedded mode:
  every running task), so recovery after a restart takes well under a second; on a clean stop
  gives back its tasks and its placements.

A waiting task costs nothing here: it holds no lease and no coroutine. Model calls are I/O, so
one process keeps many runs in flight as coroutines of one task group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.abc import TaskStatus as AnyioTaskStatus

from openbuda.domain.errors import Unavailable
from openbuda.domain.ids import new_id
from openbuda.domain.records import Event, Task, TaskError
from openbuda.domain.states import TaskStatus
from openbuda.engine.loop import EngineDeps, TaskRunner
from openbuda.ports import Fence, TaskChange, WriteTx
from openbuda.service.transitions import transition

__all__ = ["ComputerHost", "Organizer"]

log = logging.getLogger("openbuda.engine")

LEASE_EXPIRED = "lease_expired"


class ComputerHost(Protocol):
    """The computers this process keeps (``computer.Computers``)."""

    def placed(self) -> Iterable[tuple[str, str]]:
        """``(space_id, agent_id)`` of every computer connected here."""
        ...

    async def forget(self, agent_id: str) -> None:
        """Stop the agent's computer here (its ``/agent`` files stay)."""
        ...


class _NoComputers:
    def placed(self) -> Iterable[tuple[str, str]]:
        return ()

    async def forget(self, agent_id: str) -> None:
        return None


def new_worker_id() -> str:
    return new_id("task").replace("tsk_", "wrk_")


class Organizer:
    def __init__(
        self,
        deps: EngineDeps,
        *,
        worker_id: str | None = None,
        computers: ComputerHost | None = None,
    ) -> None:
        self.deps = deps
        settings = deps.settings
        self.worker_id = worker_id or settings.worker_id or new_worker_id()
        self.max_concurrent = settings.max_concurrent_tasks
        self.max_per_space = settings.max_tasks_per_space
        self.max_per_agent = settings.max_tasks_per_agent
        self.runner = TaskRunner(deps)
        self.computers: ComputerHost = computers or _NoComputers()
        self.announce: Callable[[], None] = self.wake
        """Tells every process's workers that tasks were queued (the bus; default: here)."""
        self._wake = anyio.Event()
        self._running: dict[str, anyio.CancelScope] = {}
        self._placed: dict[str, tuple[str, str]] = {}
        """``(space_id, agent_id)`` of each task running here whose agent's computer is placed
        here (its heartbeat extends the placement)."""
        self.started = anyio.Event()

    # -- hooks for services --------------------------------------------------------------------

    def wake(self) -> None:
        """Look for queued tasks now (a message was stored, a slot freed)."""
        self._wake.set()

    def cancel_task(self, task_id: str) -> None:
        """Stop this process's run of ``task_id`` at once (it was cancelled in the store)."""
        scope = self._running.get(task_id)
        if scope is not None:
            scope.cancel()

    @property
    def running_count(self) -> int:
        return len(self._running)

    # -- main ----------------------------------------------------------------------------------

    async def run(self, *, task_status: AnyioTaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; on the way out re-queue the tasks this worker still holds."""
        await self.recover()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat_loop)
                group.start_soon(self._reaper_loop)
                self.started.set()
                task_status.started()
                await self._claim_loop(group)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._requeue_owned(self.worker_id)
                    async with self.deps.store.write() as tx:
                        await tx.release_computers(self.worker_id, None)
                except Exception:  # the store may be gone already; the reaper will see to it
                    log.exception("could not re-queue the tasks of worker %s", self.worker_id)

    async def recover(self) -> int:
        """Re-queue the running tasks of an earlier incarnation (embedded: all of them, and
        every computer placement goes: no other process runs anything)."""
        embedded = self.deps.settings.is_embedded()
        if embedded:
            async with self.deps.store.write() as tx:
                await tx.release_computers(None, None)
        count = await self._requeue_owned(None if embedded else self.worker_id)
        if count:
            log.info("re-queued %d task(s) left running by an earlier process", count)
        return count

    async def _requeue_owned(self, owner: str | None) -> int:
        published: list[Event] = []
        async with self.deps.store.write() as tx:
            for task in await tx.owned_tasks(owner):
                published += await self._requeue_one(tx, task)
        await self._publish(published)
        if published:
            self.announce()
        return sum(1 for e in published if e.type == "task.status")

    async def _requeue_one(self, tx: WriteTx, task: Task) -> list[Event]:
        outcome = await transition(
            tx,
            TaskChange(
                task.space_id,
                task.id,
                frozenset({TaskStatus.RUNNING}),
                TaskStatus.QUEUED,
                self.deps.clock.now(),
                fence=Fence(task.id, task.lease_epoch),
                clear_lease=True,
            ),
            session_id=task.session_id,
            reason=LEASE_EXPIRED,
        )
        return outcome[1] if outcome else []

    # -- claims --------------------------------------------------------------------------------

    async def _claim_loop(self, group: TaskGroup) -> None:
        poll = self.deps.settings.poll_seconds
        while True:
            self._wake = anyio.Event()
            free = self.max_concurrent - len(self._running)
            claimed: list[Task] = []
            if free > 0:
                try:
                    claimed = await self.claim(free)
                except Exception:
                    log.exception("claiming tasks failed; retrying")
            for task in claimed:
                scope = anyio.CancelScope()
                self._running[task.id] = scope
                group.start_soon(self._run_one, task, scope)
            if claimed and len(claimed) == free:
                continue
            with anyio.move_on_after(poll):
                await self._wake.wait()

    async def claim(self, limit: int) -> list[Task]:
        """Claim up to ``limit`` queued tasks, in fair turns across spaces, within the limits
        per space and per agent counted over every process's running tasks."""
        claimed: list[Task] = []
        published: list[Event] = []
        async with self.deps.store.write() as tx:
            # the claim lock first (PostgreSQL): the counts stay true until this commits
            per_space, per_agent = await tx.running_counts()
            # the time once the locks are ours: a claim that waited for the session's
            # previous task to finish must not start before it ended
            now = self.deps.clock.now()
            lease_until = now + timedelta(seconds=self.deps.settings.lease_seconds)
            candidates = await tx.claimable_tasks(now, max(limit * 4, 16), self.worker_id)
            chosen = self._fair_order(candidates, limit, per_space, per_agent)
            if not chosen:
                return []
            agents = await self._computer_users(tx, chosen)
            pairs = sorted((space, agent) for agent, space in agents.items())
            placed = await tx.place_computers(self.worker_id, pairs, lease_until, now)
            for task in chosen:
                if task.agent_id in agents and task.agent_id not in placed:
                    continue  # its computer was placed on another worker since the read
                outcome = await transition(
                    tx,
                    TaskChange(
                        task.space_id,
                        task.id,
                        frozenset({TaskStatus.QUEUED}),
                        TaskStatus.RUNNING,
                        now,
                        lease_owner=self.worker_id,
                        lease_until=lease_until,
                        set_started=True,
                    ),
                    session_id=task.session_id,
                )
                if outcome is not None:
                    claimed.append(outcome[0])
                    published += outcome[1]
        await self._publish(published)
        for task in claimed:
            if task.agent_id in agents:
                self._placed[task.id] = (task.space_id, task.agent_id)
        return claimed

    async def _computer_users(self, tx: WriteTx, tasks: Sequence[Task]) -> dict[str, str]:
        """The agents among ``tasks``' that may use their computer (a ``uses_computer`` tool
        enabled), as ``agent_id -> space_id``: only their tasks are tied to a placement."""
        found: dict[str, str] = {}
        for space_id, agent_id in {(task.space_id, task.agent_id) for task in tasks}:
            agent = await tx.get_agent(space_id, agent_id)
            if agent is not None and self.deps.tools.needs_computer(agent):
                found[agent_id] = space_id
        return found

    def _fair_order(
        self,
        candidates: Sequence[Task],
        limit: int,
        per_space: dict[str, int],
        per_agent: dict[str, int],
    ) -> list[Task]:
        """Fair turns across spaces within the limits: each slot goes to the space with the
        fewest tasks running anywhere (ties: the order of the candidates), oldest first within
        a space, skipping agents at their limit. A space that just freed one of many slots
        does not take it back before a space with nothing running got its turn."""
        queues: dict[str, list[Task]] = {}
        for task in candidates:
            queues.setdefault(task.space_id, []).append(task)
        space_load = {space: per_space.get(space, 0) for space in queues}
        agent_load = dict(per_agent)
        chosen: list[Task] = []
        while len(chosen) < limit:
            for queue in queues.values():  # drop what an agent at its limit cannot start
                queue[:] = [t for t in queue if agent_load.get(t.agent_id, 0) < self.max_per_agent]
            ready = [s for s, q in queues.items() if q and space_load[s] < self.max_per_space]
            if not ready:
                break
            space = min(ready, key=space_load.__getitem__)
            task = queues[space].pop(0)
            chosen.append(task)
            space_load[space] += 1
            agent_load[task.agent_id] = agent_load.get(task.agent_id, 0) + 1
        return chosen

    async def _run_one(self, task: Task, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await self.runner.run(task)
        except Unavailable as error:
            # the store is overloaded or briefly gone: not the task's fault. Give it back to
            # the queue now if we can; otherwise its lease expires and the reaper does.
            log.warning("task %s: store unavailable (%s); re-queueing it", task.id, error.message)
            with anyio.CancelScope(shield=True):
                try:
                    async with self.deps.store.write() as tx:
                        events = await self._requeue_one(tx, task)
                    await self._publish(events)
                except Exception:
                    log.exception("could not re-queue task %s; its lease will expire", task.id)
        except Exception as error:
            log.exception("task %s crashed the engine", task.id)
            await self._fail_internal(task, error)
        finally:
            self._running.pop(task.id, None)
            self._placed.pop(task.id, None)
            self.wake()

    async def _fail_internal(self, task: Task, error: Exception) -> None:
        with anyio.CancelScope(shield=True):
            try:
                async with self.deps.store.write() as tx:
                    outcome = await transition(
                        tx,
                        TaskChange(
                            task.space_id,
                            task.id,
                            frozenset({TaskStatus.RUNNING}),
                            TaskStatus.FAILED,
                            self.deps.clock.now(),
                            fence=Fence(task.id, task.lease_epoch),
                            clear_lease=True,
                            error=TaskError("internal", f"{type(error).__name__}: {error}"),
                            set_finished=True,
                        ),
                        session_id=task.session_id,
                        reason="internal",
                    )
                if outcome is not None:
                    await self._publish(outcome[1])
            except Exception:
                log.exception("could not mark task %s failed", task.id)

    # -- leases --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await anyio.sleep(self.deps.settings.heartbeat_seconds)
            try:
                await self.heartbeat()
            except Exception:
                log.exception("heartbeat failed")

    async def heartbeat(self) -> None:
        """Extend the leases of the runs held here and the placements of the computers kept
        here; stop the computers whose placement another worker took over meanwhile."""
        now = self.deps.clock.now()
        until = now + timedelta(seconds=self.deps.settings.lease_seconds)
        kept = list(self.computers.placed())
        agents = {*kept, *self._placed.values()}
        if not self._running and not agents:
            return  # nothing to extend: an idle process writes nothing
        async with self.deps.store.write() as tx:
            if self._running:
                await tx.extend_leases(self.worker_id, list(self._running), until)
            placed = await tx.place_computers(self.worker_id, sorted(agents), until, now)
        for _space, agent_id in kept:
            if agent_id not in placed:
                log.warning("the computer of agent %s now lives elsewhere: stopping it", agent_id)
                await self.computers.forget(agent_id)

    async def _reaper_loop(self) -> None:
        settings = self.deps.settings
        while True:
            await anyio.sleep(max(settings.heartbeat_seconds, settings.lease_seconds / 4))
            try:
                await self.reap()
            except Exception:
                log.exception("reaping expired leases failed")

    async def reap(self) -> int:
        """Re-queue running tasks whose lease expired (their worker died or stalled)."""
        published: list[Event] = []
        count = 0
        async with self.deps.store.write() as tx:
            for task in await tx.expired_leases(self.deps.clock.now(), 100):
                events = await self._requeue_one(tx, task)
                if events:
                    count += 1
                    published += events
        await self._publish(published)
        if count:
            log.warning("re-queued %d task(s) whose lease expired", count)
            self.announce()
        return count

    async def _publish(self, events: Sequence[Event]) -> None:
        for event in events:
            await self.deps.broadcaster.publish(event.session_id, event.to_json())
