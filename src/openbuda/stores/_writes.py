"""The write transaction of the SQL store: the event log, its context projection, sessions.

``SqlWriteTx`` adds these to the account writes (``_accounts``), the task writes (``_tasks``),
the Drive writes (``_drive``) and the reads (``_reads``).

``append`` is the hot path of the agent loop. It allocates seqs with one
``UPDATE sessions SET last_seq = last_seq + :n … RETURNING last_seq`` and inserts the new rows
in one batch, both in the caller's transaction, so seqs are gapless and a step writes only its
own events, however long the history. With a fence it first checks the lease (on PostgreSQL
after locking the session row, then the task row: the store's lock order).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, delete, select, update

from openbuda.domain.errors import LeaseLost, NotFound
from openbuda.domain.events import EPHEMERAL_TYPES, SCHEMA_VERSION, NewEvent
from openbuda.domain.ids import new_id
from openbuda.domain.records import Event, Session
from openbuda.domain.states import derive_session_status
from openbuda.ports import ContextProjection, Fence, NewSession
from openbuda.stores._accounts import AccountWrites
from openbuda.stores._cluster import ClusterWrites
from openbuda.stores._codec import dump_json, session_from_row, token_estimate
from openbuda.stores._drive import DriveWrites
from openbuda.stores._queries import AGENT_IDLE_TIMEOUT, SESSION_FOR_UPDATE, p_int, p_str, p_time
from openbuda.stores._tasks import FENCE_CHECK
from openbuda.stores.schema import events, sessions, tasks

__all__ = ["SqlWriteTx"]

_EPHEMERAL: Final = frozenset(str(kind) for kind in EPHEMERAL_TYPES)

_SESSION_ROW_LOCK: Final = (
    select(sessions.c.id)
    .where(sessions.c.id == p_str("session"), sessions.c.space_id == p_str("space"))
    .with_for_update()
)
_ALLOCATE_SEQS: Final = (
    update(sessions)
    .where(sessions.c.id == p_str("session"), sessions.c.space_id == p_str("space"))
    .values(
        last_seq=sessions.c.last_seq + p_int("count"),
        last_activity_at=p_time("now"),
        context_tokens=sessions.c.context_tokens + p_int("tokens"),
    )
    .returning(sessions.c.last_seq)
)
_INSERT_EVENTS: Final = events.insert()
_FENCE_IN_SESSION: Final = FENCE_CHECK.where(tasks.c.session_id == p_str("session"))
_PUT_CONTEXT: Final = (
    update(sessions)
    .where(sessions.c.id == p_str("session"), sessions.c.space_id == p_str("space"))
    .values(
        context_summary=p_str("summary"),
        context_through_seq=p_int("through_seq"),
        context_tokens=p_int("tokens"),
    )
)


class SqlWriteTx(DriveWrites, ClusterWrites, AccountWrites):
    """Everything ``WriteTx`` can do, over one write transaction."""

    # -- events -----------------------------------------------------------------------------

    async def append(
        self,
        space_id: str,
        session_id: str,
        events: Sequence[NewEvent],
        now: datetime,
        *,
        fence: Fence | None = None,
    ) -> list[Event]:
        if not events:
            return []
        ids: list[str] = []
        rows: list[dict[str, Any]] = []
        tokens = 0
        for event in events:
            if event.type in _EPHEMERAL:
                raise ValueError(f"ephemeral event type {event.type!r} is never stored")
            payload = dump_json(event.data)
            tokens += token_estimate(event.type, payload)
            ids.append(new_id("event"))
            rows.append(
                {
                    "session_id": session_id,
                    "id": ids[-1],
                    "space_id": space_id,
                    "type": str(event.type),
                    "task_id": event.task_id,
                    "at": now,
                    "data": payload,
                    "schema_version": SCHEMA_VERSION,
                }
            )
        allocation = {
            "session": session_id,
            "space": space_id,
            "count": len(events),
            "now": now,
            "tokens": tokens,
        }
        row_locks = self._traits.row_locks

        def write(connection: Connection) -> int:
            """The statements of the append, in one hop of the runner (one thread call)."""
            scope = {"session": session_id, "space": space_id}
            if fence is not None:
                if row_locks and connection.execute(_SESSION_ROW_LOCK, scope).first() is None:
                    raise NotFound.of("session", session_id)
                holds = {**scope, "task": fence.task_id, "epoch": fence.epoch}
                if connection.execute(_FENCE_IN_SESSION, holds).first() is None:
                    raise LeaseLost(
                        f"task {fence.task_id!r} no longer holds lease epoch {fence.epoch}",
                        details={"task_id": fence.task_id, "epoch": fence.epoch},
                    )
            last_seq = connection.execute(_ALLOCATE_SEQS, allocation).scalar()
            if last_seq is None:
                raise NotFound.of("session", session_id)
            first_seq: int = last_seq - len(rows) + 1
            for index, row in enumerate(rows):
                row["seq"] = first_seq + index
            connection.execute(_INSERT_EVENTS, rows)
            return first_seq

        first_seq = await self._runner.run_sync(write)
        return [
            Event(
                seq=first_seq + index,
                id=event_id,
                session_id=session_id,
                type=str(event.type),
                at=now,
                data=event.data,
                task_id=event.task_id,
            )
            for index, (event, event_id) in enumerate(zip(events, ids, strict=True))
        ]

    async def put_context(self, space_id: str, session_id: str, context: ContextProjection) -> None:
        parameters = {
            "session": session_id,
            "space": space_id,
            "summary": context.summary,
            "through_seq": context.through_seq,
            "tokens": context.tokens_after,
        }
        if (await self._execute(_PUT_CONTEXT, parameters)).rowcount != 1:
            raise NotFound.of("session", session_id)

    # -- sessions ---------------------------------------------------------------------------

    async def lock_session(self, space_id: str, session_id: str, now: datetime) -> Session | None:
        parameters = {"session": session_id, "space": space_id}
        row = (await self._execute(SESSION_FOR_UPDATE, parameters)).first()
        return None if row is None else session_from_row(row, now)

    async def create_session(self, request: NewSession, now: datetime) -> Session:
        scope = {"agent": request.agent_id, "space": request.space_id}
        idle_timeout_s = (await self._execute(AGENT_IDLE_TIMEOUT, scope)).scalar()
        if idle_timeout_s is None:
            raise NotFound.of("agent", request.agent_id)
        session_id = request.session_id or new_id("session")
        await self._execute(
            sessions.insert(),
            {
                "id": session_id,
                "space_id": request.space_id,
                "agent_id": request.agent_id,
                "title": request.title,
                "external_user_id": request.external_user_id,
                "created_at": now,
                "last_activity_at": now,
                "last_seq": 0,
                "task_count": 0,
                "context_summary": "",
                "context_through_seq": 0,
                "context_tokens": 0,
            },
        )
        return Session(
            id=session_id,
            space_id=request.space_id,
            agent_id=request.agent_id,
            title=request.title,
            external_user_id=request.external_user_id,
            created_at=now,
            last_activity_at=now,
            last_seq=0,
            task_count=0,
            status=derive_session_status(
                has_active_task=False,
                has_waiting_task=False,
                last_activity_at=now,
                now=now,
                idle_timeout_s=idle_timeout_s,
            ),
        )

    async def rename_session(self, space_id: str, session_id: str, title: str) -> bool:
        statement = (
            update(sessions)
            .where(sessions.c.id == session_id, sessions.c.space_id == space_id)
            .values(title=title)
        )
        return (await self._execute(statement)).rowcount == 1

    async def delete_session(self, space_id: str, session_id: str) -> bool:
        if self._traits.row_locks:
            scope = {"session": session_id, "space": space_id}
            if (await self._execute(_SESSION_ROW_LOCK, scope)).first() is None:
                return False
        await self._execute(
            delete(events).where(events.c.session_id == session_id, events.c.space_id == space_id)
        )
        await self._execute(
            delete(tasks).where(tasks.c.session_id == session_id, tasks.c.space_id == space_id)
        )
        statement = delete(sessions).where(
            sessions.c.id == session_id, sessions.c.space_id == space_id
        )
        return (await self._execute(statement)).rowcount == 1
