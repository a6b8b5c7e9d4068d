"""Task writes of the SQL store (``TaskWriter``): inserts, compare-and-set transitions, leases.

A transition is one ``UPDATE … WHERE id AND space_id AND status IN (sources) RETURNING *``:
two concurrent transitions of a task can never both win. On SQLite the single writer
serialises them; on PostgreSQL the row lock does, and ``READ COMMITTED`` re-checks the
``WHERE`` clause against the winner's row.

Lock order on PostgreSQL: a transaction that locks a task row locks its session row first
(``TASK_SESSION_LOCK``), and claims lock both rows with ``SKIP LOCKED``. Every write of the
service then takes session → task locks in the same order and two of them cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import exists, func, select, update

from openbuda.domain.errors import NotFound
from openbuda.domain.records import Task
from openbuda.domain.states import TaskStatus
from openbuda.ports import Fence, NewTask, TaskChange
from openbuda.stores._changes import change_statement
from openbuda.stores._codec import task_from_row
from openbuda.stores._queries import BLOCKING, TASK_SESSION_LOCK, p_int, p_str, p_time
from openbuda.stores._reads import SqlReadTx
from openbuda.stores.schema import computer_placements, sessions, tasks

__all__ = ["FENCE_CHECK", "TaskWrites"]

_COUNT_TASK: Final = (
    update(sessions)
    .where(
        sessions.c.id == p_str("session"),
        sessions.c.space_id == p_str("space"),
        sessions.c.agent_id == p_str("agent"),
    )
    .values(task_count=sessions.c.task_count + 1)
)
_INSERT_TASK: Final = tasks.insert()

FENCE_CHECK: Final = (
    select(tasks.c.id)
    .where(
        tasks.c.id == p_str("task"),
        tasks.c.status == "running",
        tasks.c.lease_epoch == p_int("epoch"),
    )
    .with_for_update()
)
"""The fenced task row while its lease is current (locked on PostgreSQL)."""

_CHECK_FENCE: Final = (
    update(tasks)
    .where(
        tasks.c.id == p_str("task"),
        tasks.c.status == "running",
        tasks.c.lease_epoch == p_int("epoch"),
    )
    .values(lease_until=p_time("until"))
)
_ADD_STEER: Final = (
    update(tasks)
    .where(
        tasks.c.id == p_str("task"),
        tasks.c.space_id == p_str("space"),
        tasks.c.status.in_(("queued", "running")),
    )
    .values(steer_count=tasks.c.steer_count + 1)
)


def _claimable() -> Any:
    blocking = tasks.alias("blocking_task")
    older = tasks.alias("older_task")
    # Each space's claimable tasks numbered oldest first; the result takes turns across spaces
    # (every space's oldest, then every space's second oldest, …) so that a space with a long
    # backlog cannot fill the whole window the organizer looks at.
    free = (
        select(
            tasks.c.id.label("task_id"),
            func.row_number()
            .over(partition_by=tasks.c.space_id, order_by=(tasks.c.created_at, tasks.c.id))
            .label("turn"),
        )
        .where(
            tasks.c.status == "queued",
            ~exists().where(
                blocking.c.session_id == tasks.c.session_id, blocking.c.status.in_(BLOCKING)
            ),
            ~exists().where(
                older.c.session_id == tasks.c.session_id,
                older.c.status == "queued",
                (older.c.created_at < tasks.c.created_at)
                | ((older.c.created_at == tasks.c.created_at) & (older.c.id < tasks.c.id)),
            ),
        )
        .subquery("free_task")
    )
    placed = computer_placements
    return (
        select(tasks)
        .select_from(
            tasks.join(free, free.c.task_id == tasks.c.id).join(
                sessions, sessions.c.id == tasks.c.session_id
            )
        )
        .where(
            tasks.c.status == "queued",
            # the agent's computer lives on another worker: its tasks are that worker's (a
            # ``NULL`` worker compares unknown, so a claim without one sees every task)
            ~exists().where(
                placed.c.agent_id == tasks.c.agent_id,
                placed.c.worker_id != p_str("worker"),
                placed.c.lease_until >= p_time("now"),
            ),
        )
        .order_by(free.c.turn, tasks.c.created_at, tasks.c.id)
        .limit(p_int("limit"))
        .with_for_update(skip_locked=True, of=[tasks, sessions])
    )


_CLAIMABLE: Final = _claimable()
_EXPIRED: Final = (
    select(tasks)
    .select_from(tasks.join(sessions, sessions.c.id == tasks.c.session_id))
    .where(tasks.c.status == "running", tasks.c.lease_until < p_time("now"))
    .order_by(tasks.c.lease_until, tasks.c.id)
    .limit(p_int("limit"))
    .with_for_update(skip_locked=True, of=[tasks, sessions])
)
_RUNNING: Final = select(tasks).where(tasks.c.status == "running")
_OWNED: Final = _RUNNING.where(tasks.c.lease_owner == p_str("worker")).order_by(
    tasks.c.created_at, tasks.c.id
)
_ALL_RUNNING: Final = _RUNNING.order_by(tasks.c.created_at, tasks.c.id)


class TaskWrites(SqlReadTx):
    """``TaskWriter`` over one write transaction."""

    async def _lock_task_session(self, task_id: str) -> bool:
        """Lock the session of the task first (PostgreSQL); whether the task exists."""
        if not self._traits.row_locks:
            return True
        return (await self._execute(TASK_SESSION_LOCK, {"task": task_id})).first() is not None

    async def _fence_holds(self, fence: Fence) -> bool:
        parameters = {"task": fence.task_id, "epoch": fence.epoch}
        return (await self._execute(FENCE_CHECK, parameters)).first() is not None

    async def insert_task(self, request: NewTask) -> Task:
        counted = await self._execute(
            _COUNT_TASK,
            {
                "session": request.session_id,
                "space": request.space_id,
                "agent": request.agent_id,
            },
        )
        if counted.rowcount != 1:
            raise NotFound.of("session", request.session_id)
        task = Task(
            id=request.task_id,
            space_id=request.space_id,
            agent_id=request.agent_id,
            session_id=request.session_id,
            status=TaskStatus.QUEUED,
            created_at=request.created_at,
            message_id=request.message_id,
        )
        await self._execute(
            _INSERT_TASK,
            {
                "id": task.id,
                "space_id": task.space_id,
                "agent_id": task.agent_id,
                "session_id": task.session_id,
                "status": task.status.value,
                "message_id": task.message_id,
                "created_at": task.created_at,
                "started_at": None,
                "finished_at": None,
                "question": None,
                "result": None,
                "error_code": None,
                "error_message": None,
                "lease_owner": None,
                "lease_until": None,
                "lease_epoch": 0,
                "steer_count": 0,
                "attempts": 0,
            },
        )
        return task

    async def change_task(self, change: TaskChange) -> Task | None:
        if change.lease_owner is not None and change.lease_until is None:
            raise ValueError("a new lease needs lease_until")
        if not change.sources:
            return None
        if not await self._lock_task_session(change.task_id):
            return None
        fenced = False
        if change.fence is not None:
            if change.fence.task_id == change.task_id:
                fenced = True
            elif not await self._fence_holds(change.fence):
                return None
        statement, parameters = change_statement(change, fenced=fenced)
        row = (await self._execute(statement, parameters)).first()
        return None if row is None else task_from_row(row)

    async def check_fence(self, fence: Fence, lease_until: datetime) -> bool:
        await self._lock_task_session(fence.task_id)
        parameters = {"task": fence.task_id, "epoch": fence.epoch, "until": lease_until}
        return (await self._execute(_CHECK_FENCE, parameters)).rowcount == 1

    async def add_steer(self, space_id: str, task_id: str) -> bool:
        await self._lock_task_session(task_id)
        parameters = {"task": task_id, "space": space_id}
        return (await self._execute(_ADD_STEER, parameters)).rowcount == 1

    async def claimable_tasks(
        self, now: datetime, limit: int, worker_id: str | None = None
    ) -> list[Task]:
        if limit < 1:
            return []
        parameters = {"limit": limit, "worker": worker_id, "now": now}
        rows = (await self._execute(_CLAIMABLE, parameters)).all()
        return [task_from_row(row) for row in rows]

    async def expired_leases(self, now: datetime, limit: int) -> list[Task]:
        if limit < 1:
            return []
        rows = (await self._execute(_EXPIRED, {"now": now, "limit": limit})).all()
        return [task_from_row(row) for row in rows]

    async def owned_tasks(self, worker_id: str | None) -> list[Task]:
        if worker_id is None:
            result = await self._execute(_ALL_RUNNING)
        else:
            result = await self._execute(_OWNED, {"worker": worker_id})
        return [task_from_row(row) for row in result.all()]

    async def extend_leases(self, worker_id: str, task_ids: Sequence[str], until: datetime) -> int:
        if not task_ids:
            return 0
        statement = (
            update(tasks)
            .where(
                tasks.c.lease_owner == worker_id,
                tasks.c.status == "running",
                tasks.c.id.in_(list(task_ids)),
            )
            .values(lease_until=until)
        )
        return (await self._execute(statement)).rowcount
