"""The one way a task changes status: a compare-and-set plus its ``task.status`` event, in the
caller's transaction."""

from __future__ import annotations

from dataclasses import replace

from openbuda.domain.errors import InvalidTransition, NotFound
from openbuda.domain.events import EventType, NewEvent
from openbuda.domain.records import Event, Task
from openbuda.domain.states import TaskStatus, check_transition, sources_for
from openbuda.ports import TaskChange, WriteTx

__all__ = ["status_event", "transition", "transition_or_raise"]


def status_event(
    task_id: str, status: TaskStatus, reason: str | None = None, *, lease: Task | None = None
) -> NewEvent:
    """The ``task.status`` event; a claim (``lease``: the claimed task) also names the worker
    and the lease epoch, so that the log shows which process ran each attempt."""
    data: dict[str, str | int] = {"status": status.value}
    if reason is not None:
        data["reason"] = reason
    if lease is not None and lease.lease_owner is not None:
        data["worker"] = lease.lease_owner
        data["epoch"] = lease.lease_epoch
    return NewEvent(EventType.TASK_STATUS, data, task_id=task_id)


async def transition(
    tx: WriteTx,
    change: TaskChange,
    *,
    session_id: str,
    reason: str | None = None,
    before: list[NewEvent] | None = None,
    after: list[NewEvent] | None = None,
) -> tuple[Task, list[Event]] | None:
    """Apply ``change`` and append ``before`` + its ``task.status`` event + ``after``.

    ``None`` when the compare-and-set lost (the task was not in ``change.sources``). The
    sources are always narrowed to those the transition table allows.
    """
    allowed = change.sources & sources_for(change.target)
    if allowed != change.sources:
        change = replace(change, sources=allowed)
    task = await tx.change_task(change)
    if task is None:
        return None
    claimed = task if change.lease_owner is not None else None
    status = status_event(task.id, change.target, reason, lease=claimed)
    events = [*(before or []), status, *(after or [])]
    stored = await tx.append(change.space_id, session_id, events, change.now)
    return task, stored


async def transition_or_raise(
    tx: WriteTx,
    change: TaskChange,
    *,
    session_id: str,
    reason: str | None = None,
    before: list[NewEvent] | None = None,
    after: list[NewEvent] | None = None,
) -> tuple[Task, list[Event]]:
    """Like ``transition``, but explain a lost compare-and-set with the right error."""
    outcome = await transition(
        tx, change, session_id=session_id, reason=reason, before=before, after=after
    )
    if outcome is not None:
        return outcome
    current = await tx.get_task(change.space_id, change.task_id)
    if current is None:
        raise NotFound.of("task", change.task_id)
    check_transition(current.id, current.status, change.target)
    raise InvalidTransition(
        f"task {current.id!r} is {current.status.value!r}",
        details={"task_id": current.id, "status": current.status.value},
    )
