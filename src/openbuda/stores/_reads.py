"""Reads of the SQL store (``ReadTx``, ``EventReader``, ``KeyReader``, and ``DriveReader`` from
``_drive``), scoped by ``space_id``.

``SqlReadTx`` runs statements on one connection inside a transaction (``_connections``); the write transaction extends
it. An id of another space is simply not found: every statement filters on ``space_id``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Executable, select

from openbuda.domain.records import Agent, ApiKey, Event, Member, Role, Session, Space, Task
from openbuda.domain.states import SessionStatus, TaskStatus
from openbuda.ports import ContextProjection, ListSessions, ListTasks, Page, ReadEvents
from openbuda.stores._cluster import ClusterReads
from openbuda.stores._codec import (
    agent_from_row,
    api_key_from_row,
    check_limit,
    decode_cursor,
    encode_cursor,
    event_from_row,
    session_from_row,
    space_from_row,
    task_from_row,
)
from openbuda.stores._connections import Parameters, Rows, StatementRunner
from openbuda.stores._drive import DriveReads
from openbuda.stores._queries import (
    AGENT_IDLE_TIMEOUT,
    SESSION_BY_ID,
    SESSION_SELECT,
    DialectTraits,
    after_key,
    before_key,
    has_active_task,
    has_waiting_task,
    p_str,
)
from openbuda.stores.schema import agents, api_keys, events, members, sessions, spaces, tasks

__all__ = ["SqlReadTx"]

_SPACE: Final = select(spaces).where(spaces.c.id == p_str("space"))
_AGENT: Final = select(agents).where(
    agents.c.id == p_str("agent"), agents.c.space_id == p_str("space")
)
_TASK: Final = select(tasks).where(tasks.c.id == p_str("task"), tasks.c.space_id == p_str("space"))
_CONTEXT: Final = select(
    sessions.c.context_summary, sessions.c.context_through_seq, sessions.c.context_tokens
).where(sessions.c.id == p_str("session"), sessions.c.space_id == p_str("space"))
_KEY_BY_HASH: Final = (
    select(
        api_keys,
        members.c.name.label("member_name"),
        members.c.role.label("member_role"),
        members.c.created_at.label("member_created_at"),
    )
    .select_from(api_keys.join(members, members.c.id == api_keys.c.member_id))
    .where(api_keys.c.secret_hash == p_str("hash"), api_keys.c.revoked_at.is_(None))
)
_KEYS_OF_SPACE: Final = (
    select(api_keys)
    .where(api_keys.c.space_id == p_str("space"))
    .order_by(api_keys.c.created_at, api_keys.c.id)
)
_ANY_KEY: Final = select(api_keys.c.id).limit(1)

_AGENT_CURSOR: Final = "agt"
_SESSION_CURSOR: Final = "ses"
_TASK_CURSOR: Final = "tsk"


class SqlReadTx(DriveReads, ClusterReads):
    """The read primitives over one connection in a transaction."""

    def __init__(self, runner: StatementRunner, traits: DialectTraits) -> None:
        self._runner = runner
        self._traits = traits

    async def _execute(self, statement: Executable, parameters: Parameters = None) -> Rows:
        return await self._runner.execute(statement, parameters)

    # -- spaces and agents ------------------------------------------------------------------

    async def get_space(self, space_id: str) -> Space | None:
        row = (await self._execute(_SPACE, {"space": space_id})).first()
        return None if row is None else space_from_row(row)

    async def get_agent(self, space_id: str, agent_id: str) -> Agent | None:
        row = (await self._execute(_AGENT, {"agent": agent_id, "space": space_id})).first()
        return None if row is None else agent_from_row(row)

    async def list_agents(self, space_id: str, limit: int, cursor: str | None) -> Page[Agent]:
        check_limit(limit)
        statement = select(agents).where(agents.c.space_id == space_id)
        if cursor is not None:
            moment, agent_id = decode_cursor(_AGENT_CURSOR, cursor)
            statement = statement.where(
                after_key(agents.c.created_at, agents.c.id, moment, agent_id)
            )
        statement = statement.order_by(agents.c.created_at, agents.c.id).limit(limit + 1)
        rows = (await self._execute(statement)).all()
        items = [agent_from_row(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(_AGENT_CURSOR, last.created_at, last.id)
        return Page(items, next_cursor)

    # -- sessions ---------------------------------------------------------------------------

    async def get_session(self, space_id: str, session_id: str, now: datetime) -> Session | None:
        parameters = {"session": session_id, "space": space_id}
        row = (await self._execute(SESSION_BY_ID, parameters)).first()
        return None if row is None else session_from_row(row, now)

    async def list_sessions(self, request: ListSessions) -> Page[Session]:
        check_limit(request.limit)
        position = None
        if request.cursor is not None:
            position = decode_cursor(_SESSION_CURSOR, request.cursor)
        idle_timeout_s = (
            await self._execute(
                AGENT_IDLE_TIMEOUT, {"agent": request.agent_id, "space": request.space_id}
            )
        ).scalar()
        if idle_timeout_s is None:
            return Page([], None)
        statement = SESSION_SELECT.where(
            sessions.c.agent_id == request.agent_id, sessions.c.space_id == request.space_id
        )
        if request.external_user_id is not None:
            statement = statement.where(sessions.c.external_user_id == request.external_user_id)
        if request.query:
            statement = statement.where(sessions.c.title.icontains(request.query, autoescape=True))
        if request.status is not None:
            dormant_since = request.now - timedelta(seconds=idle_timeout_s)
            statement = statement.where(*_status_filter(request.status, dormant_since))
        if position is not None:
            moment, session_id = position
            statement = statement.where(
                before_key(sessions.c.last_activity_at, sessions.c.id, moment, session_id)
            )
        statement = statement.order_by(
            sessions.c.last_activity_at.desc(), sessions.c.id.desc()
        ).limit(request.limit + 1)
        rows = (await self._execute(statement)).all()
        items = [session_from_row(row, request.now) for row in rows[: request.limit]]
        next_cursor = None
        if len(rows) > request.limit:
            last = items[-1]
            next_cursor = encode_cursor(_SESSION_CURSOR, last.last_activity_at, last.id)
        return Page(items, next_cursor)

    # -- tasks ------------------------------------------------------------------------------

    async def get_task(self, space_id: str, task_id: str) -> Task | None:
        row = (await self._execute(_TASK, {"task": task_id, "space": space_id})).first()
        return None if row is None else task_from_row(row)

    async def list_tasks(self, request: ListTasks) -> Page[Task]:
        check_limit(request.limit)
        statement = select(tasks).where(tasks.c.space_id == request.space_id)
        if request.status is not None:
            statement = statement.where(tasks.c.status == request.status.value)
        if request.session_id is not None:
            statement = statement.where(tasks.c.session_id == request.session_id)
        if request.agent_id is not None:
            statement = statement.where(tasks.c.agent_id == request.agent_id)
        if request.cursor is not None:
            moment, task_id = decode_cursor(_TASK_CURSOR, request.cursor)
            statement = statement.where(before_key(tasks.c.created_at, tasks.c.id, moment, task_id))
        statement = statement.order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(
            request.limit + 1
        )
        rows = (await self._execute(statement)).all()
        items = [task_from_row(row) for row in rows[: request.limit]]
        next_cursor = None
        if len(rows) > request.limit:
            last = items[-1]
            next_cursor = encode_cursor(_TASK_CURSOR, last.created_at, last.id)
        return Page(items, next_cursor)

    async def session_tasks(
        self, space_id: str, session_id: str, statuses: frozenset[TaskStatus]
    ) -> list[Task]:
        if not statuses:
            return []
        statement = (
            select(tasks)
            .where(
                tasks.c.session_id == session_id,
                tasks.c.space_id == space_id,
                tasks.c.status.in_(sorted(status.value for status in statuses)),
            )
            .order_by(tasks.c.created_at, tasks.c.id)
        )
        return [task_from_row(row) for row in (await self._execute(statement)).all()]

    # -- events and context -----------------------------------------------------------------

    async def read_events(self, request: ReadEvents) -> list[Event]:
        statement = select(events).where(
            events.c.session_id == request.session_id,
            events.c.space_id == request.space_id,
            events.c.seq > request.after_seq,
        )
        if request.task_id is not None:
            statement = statement.where(events.c.task_id == request.task_id)
        if request.types is not None:
            if not request.types:
                return []
            statement = statement.where(events.c.type.in_(sorted(request.types)))
        statement = statement.order_by(events.c.seq)
        if request.limit is not None:
            if request.limit < 1:
                return []
            statement = statement.limit(request.limit)
        return [event_from_row(row) for row in (await self._execute(statement)).all()]

    async def get_context(self, space_id: str, session_id: str) -> ContextProjection | None:
        parameters = {"session": session_id, "space": space_id}
        row = (await self._execute(_CONTEXT, parameters)).first()
        if row is None:
            return None
        return ContextProjection(
            summary=row.context_summary,
            through_seq=row.context_through_seq,
            tokens_after=row.context_tokens,
        )

    # -- keys -------------------------------------------------------------------------------

    async def find_api_key(self, secret_hash: str) -> tuple[ApiKey, Member] | None:
        row = (await self._execute(_KEY_BY_HASH, {"hash": secret_hash})).first()
        if row is None:
            return None
        member = Member(
            id=row.member_id,
            space_id=row.space_id,
            name=row.member_name,
            role=Role(row.member_role),
            created_at=row.member_created_at,
        )
        return api_key_from_row(row), member

    async def list_api_keys(self, space_id: str) -> list[ApiKey]:
        rows = (await self._execute(_KEYS_OF_SPACE, {"space": space_id})).all()
        return [api_key_from_row(row) for row in rows]

    async def any_api_key(self) -> bool:
        return (await self._execute(_ANY_KEY)).first() is not None


def _status_filter(status: SessionStatus, dormant_since: datetime) -> list[Any]:
    """SQL conditions equivalent to ``derive_session_status(...) == status``."""
    if status is SessionStatus.WORKING:
        return [has_active_task()]
    if status is SessionStatus.WAITING:
        return [~has_active_task(), has_waiting_task()]
    idle_or_dormant = [~has_active_task(), ~has_waiting_task()]
    if status is SessionStatus.DORMANT:
        return [*idle_or_dormant, sessions.c.last_activity_at <= dormant_since]
    return [*idle_or_dormant, sessions.c.last_activity_at > dormant_since]
