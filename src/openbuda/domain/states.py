"""Task and session states, and the one table of legal task transitions.

::

    queued ──> running ──> completed
       │          │  ├───> failed
       │          │  ├───> cancelled
       │          │  └───> queued   (lease lost or process restarted: reason lease_expired)
       │          └──> waiting ──(answer)──> queued
       └──> cancelled            waiting ──> cancelled

Stores enforce the table with compare-and-set updates (``WHERE status IN sources``); this module
is the only place that says which sources a target accepts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from openbuda.domain.errors import InvalidTransition

__all__ = [
    "ACTIVE_TASK_STATUSES",
    "TERMINAL_TASK_STATUSES",
    "TRANSITIONS",
    "SessionStatus",
    "TaskStatus",
    "check_transition",
    "derive_session_status",
    "sources_for",
]


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_TASK_STATUSES


class SessionStatus(StrEnum):
    WORKING = "working"
    WAITING = "waiting"
    IDLE = "idle"
    DORMANT = "dormant"


TERMINAL_TASK_STATUSES: Final = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
)
ACTIVE_TASK_STATUSES: Final = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})

TRANSITIONS: Final[dict[TaskStatus, frozenset[TaskStatus]]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED}),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.QUEUED,
            TaskStatus.WAITING,
        }
    ),
    TaskStatus.WAITING: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def sources_for(target: TaskStatus) -> frozenset[TaskStatus]:
    """Every status from which ``target`` may be reached."""
    return frozenset(source for source, targets in TRANSITIONS.items() if target in targets)


def check_transition(task_id: str, source: TaskStatus, target: TaskStatus) -> None:
    """Raise ``InvalidTransition`` unless ``source -> target`` is in the table."""
    if target not in TRANSITIONS[source]:
        raise InvalidTransition(
            f"task {task_id!r} cannot go from {source.value!r} to {target.value!r}",
            details={"task_id": task_id, "status": source.value, "target": target.value},
        )


def derive_session_status(
    *,
    has_active_task: bool,
    has_waiting_task: bool,
    last_activity_at: datetime,
    now: datetime,
    idle_timeout_s: int,
) -> SessionStatus:
    """A session's status, computed when read: nothing sweeps sessions."""
    if has_active_task:
        return SessionStatus.WORKING
    if has_waiting_task:
        return SessionStatus.WAITING
    if now - last_activity_at >= timedelta(seconds=idle_timeout_s):
        return SessionStatus.DORMANT
    return SessionStatus.IDLE
