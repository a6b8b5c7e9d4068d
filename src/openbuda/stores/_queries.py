"""Statements and fragments shared by the read and write transactions, built once at import.

SQLAlchemy caches the compiled form of each statement by its structure, so building them here
keeps the per-call cost to binding parameters. ``FOR UPDATE`` clauses are rendered on
PostgreSQL and dropped by the SQLite compiler (where the single writer makes them moot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Executable,
    Integer,
    String,
    and_,
    bindparam,
    exists,
    or_,
    select,
)

from openbuda.ports import StoreCapabilities
from openbuda.stores.schema import UtcDateTime, agents, sessions, tasks

__all__ = [
    "ACTIVE",
    "AGENT_IDLE_TIMEOUT",
    "BLOCKING",
    "SESSION_BY_ID",
    "SESSION_FOR_UPDATE",
    "SESSION_SELECT",
    "TASK_SESSION_LOCK",
    "DialectTraits",
    "after_key",
    "before_key",
    "has_active_task",
    "has_waiting_task",
    "p_int",
    "p_str",
    "p_time",
]

ACTIVE: Final = ("queued", "running")
"""Task statuses that make a session ``working``."""
BLOCKING: Final = ("running", "waiting")
"""A session with a task in one of these statuses starts no other task."""


@dataclass(frozen=True, slots=True)
class DialectTraits:
    """What differs between the dialects inside a transaction."""

    capabilities: StoreCapabilities
    row_locks: bool
    """Take row locks explicitly (PostgreSQL): a task's session row is locked before the task
    row, so that concurrent transactions always lock in the same order."""
    keys_lock: Executable | None = None
    """A statement that serialises key creation until the transaction ends (``None`` when the
    single writer already does)."""


def p_str(name: str) -> Any:
    return bindparam(name, type_=String())


def p_int(name: str) -> Any:
    return bindparam(name, type_=Integer())


def p_time(name: str) -> Any:
    return bindparam(name, type_=UtcDateTime())


# ---------------------------------------------------------------------------------------------
# Session status


def has_active_task() -> ColumnElement[bool]:
    """``EXISTS`` a queued or running task of the enclosing ``sessions`` row."""
    other = tasks.alias("active_task")
    return exists().where(other.c.session_id == sessions.c.id, other.c.status.in_(ACTIVE))


def has_waiting_task() -> ColumnElement[bool]:
    other = tasks.alias("waiting_task")
    return exists().where(other.c.session_id == sessions.c.id, other.c.status == "waiting")


def _waiting_question() -> Any:
    other = tasks.alias("open_task")
    return (
        select(other.c.question)
        .where(other.c.session_id == sessions.c.id, other.c.status == "waiting")
        .order_by(other.c.created_at)
        .limit(1)
        .scalar_subquery()
    )


SESSION_SELECT: Final = select(
    sessions.c.id,
    sessions.c.space_id,
    sessions.c.agent_id,
    sessions.c.title,
    sessions.c.external_user_id,
    sessions.c.created_at,
    sessions.c.last_activity_at,
    sessions.c.last_seq,
    sessions.c.task_count,
    agents.c.idle_timeout_s,
    has_active_task().label("has_active"),
    has_waiting_task().label("has_waiting"),
    _waiting_question().label("waiting_question"),
).select_from(sessions.join(agents, agents.c.id == sessions.c.agent_id))
"""Sessions with what ``session_from_row`` needs to compute their status."""

AGENT_IDLE_TIMEOUT: Final = select(agents.c.idle_timeout_s).where(
    agents.c.id == p_str("agent"), agents.c.space_id == p_str("space")
)
"""An agent's ``idle_timeout_s`` (``None`` when the agent is not in the space)."""

SESSION_BY_ID: Final = SESSION_SELECT.where(
    sessions.c.id == p_str("session"), sessions.c.space_id == p_str("space")
)
SESSION_FOR_UPDATE: Final = SESSION_BY_ID.with_for_update(of=sessions)

TASK_SESSION_LOCK: Final = (
    select(sessions.c.id)
    .select_from(sessions.join(tasks, tasks.c.session_id == sessions.c.id))
    .where(tasks.c.id == p_str("task"))
    .with_for_update(of=sessions)
)
"""Locks the session row of a task (PostgreSQL) before the task row is locked."""


# ---------------------------------------------------------------------------------------------
# Keyset pagination


def after_key(time_column: Any, id_column: Any, moment: Any, object_id: str) -> ColumnElement[bool]:
    """Rows after ``(moment, object_id)`` in ascending ``(time, id)`` order."""
    return or_(
        time_column > _typed_time(moment),
        and_(time_column == _typed_time(moment), id_column > object_id),
    )


def before_key(
    time_column: Any, id_column: Any, moment: Any, object_id: str
) -> ColumnElement[bool]:
    """Rows after ``(moment, object_id)`` in descending ``(time, id)`` order."""
    return or_(
        time_column < _typed_time(moment),
        and_(time_column == _typed_time(moment), id_column < object_id),
    )


def _typed_time(moment: Any) -> Any:
    return bindparam(None, moment, type_=UtcDateTime())
