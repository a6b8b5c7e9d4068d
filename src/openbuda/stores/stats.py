"""Instance-wide counts for monitoring (``/metrics``): tasks by status and busy sessions.

These are the only reads that cross spaces on purpose: they return numbers, never rows, and
serve the operator's Prometheus gauges. ``read_stats`` gives ``None`` for a store that is not a
``SqlStore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import distinct, func, select

from openbuda.domain.states import TaskStatus
from openbuda.ports import Store
from openbuda.stores.schema import tasks
from openbuda.stores.sql import SqlStore

__all__ = ["StoreStats", "read_stats"]

_TASKS_BY_STATUS: Final = select(tasks.c.status, func.count().label("total")).group_by(
    tasks.c.status
)
_SESSIONS_WITH: Final = select(func.count(distinct(tasks.c.session_id)))


@dataclass(frozen=True, slots=True)
class StoreStats:
    tasks_by_status: dict[str, int]
    """Every ``TaskStatus`` value, with 0 for the absent ones."""
    working_sessions: int
    """Sessions with a queued or running task."""
    waiting_sessions: int
    """Sessions with a task waiting for an answer."""


async def read_stats(store: Store) -> StoreStats | None:
    if not isinstance(store, SqlStore):
        return None
    async with store._connect(write=False) as runner:
        counts = {status.value: 0 for status in TaskStatus}
        for row in (await runner.execute(_TASKS_BY_STATUS)).all():
            counts[str(row.status)] = int(row.total)
        working = await runner.execute(
            _SESSIONS_WITH.where(tasks.c.status.in_(("queued", "running")))
        )
        waiting = await runner.execute(_SESSIONS_WITH.where(tasks.c.status == "waiting"))
    return StoreStats(counts, int(working.scalar() or 0), int(waiting.scalar() or 0))
