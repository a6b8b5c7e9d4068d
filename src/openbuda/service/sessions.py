"""Sessions and the messages sent to them, with the ``on_busy`` policy (ARCHITECTURE §3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from openbuda.domain.errors import NotFound, QuestionPending, SessionBusy, ValidationFailed
from openbuda.domain.events import EventType, NewEvent
from openbuda.domain.ids import new_id
from openbuda.domain.principal import Principal
from openbuda.domain.records import Event, QuestionKind, Session, Task
from openbuda.domain.states import SessionStatus, TaskStatus
from openbuda.domain.validation import check_limit, check_text
from openbuda.ports import ListSessions, NewSession, NewTask, Page, ReadEvents, TaskChange, WriteTx
from openbuda.service.deps import ServiceDeps
from openbuda.service.tasks import Answer, answer_in_tx, answer_text
from openbuda.service.transitions import status_event, transition

__all__ = [
    "HISTORY_LIMIT",
    "HistoryMessage",
    "MessageAccepted",
    "MessageItem",
    "OnBusy",
    "SessionService",
]

HISTORY_LIMIT = 100_000
_APPEND_CHUNK = 1_000
_OPEN = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.WAITING})


class OnBusy(StrEnum):
    QUEUE = "queue"
    STEER = "steer"
    INTERRUPT = "interrupt"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True, slots=True)
class MessageAccepted:
    message_id: str
    task_id: str
    session_id: str
    kind: Literal["task", "answer", "steer"]
    """``task``: a new task; ``answer``: it answered the waiting task's text question;
    ``steer``: it was given to the running task."""


@dataclass(frozen=True, slots=True)
class MessageItem:
    message_id: str
    seq: int
    role: str
    text: str
    task_id: str | None
    at: datetime


class SessionService:
    def __init__(self, deps: ServiceDeps) -> None:
        self._deps = deps

    # -- sessions ------------------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        agent_id: str,
        *,
        title: str = "",
        external_user_id: str | None = None,
        history: Sequence[HistoryMessage] = (),
    ) -> Session:
        check_text(title, "title", "session_title")
        if external_user_id is not None:
            check_text(external_user_id, "external_user_id", "external_user_id", allow_empty=False)
        if len(history) > HISTORY_LIMIT:
            raise ValidationFailed(
                f"history has {len(history)} messages; the limit is {HISTORY_LIMIT}",
                details={"field": "history", "limit": HISTORY_LIMIT},
            )
        imported: list[NewEvent] = []
        for index, item in enumerate(history):
            check_text(item.text, f"history[{index}].text", "message_text")
            if item.role not in ("user", "assistant"):
                raise ValidationFailed(
                    f"history[{index}].role must be 'user' or 'assistant', got {item.role!r}",
                    details={"field": f"history[{index}].role"},
                )
            imported.append(
                NewEvent(
                    EventType.MESSAGE,
                    {"role": item.role, "text": item.text, "message_id": new_id("message")},
                )
            )
        now = self._deps.clock.now()
        async with self._deps.store.write() as tx:
            if await tx.get_agent(principal.space_id, agent_id) is None:
                raise NotFound.of("agent", agent_id)
            session = await tx.create_session(
                NewSession(principal.space_id, agent_id, title, external_user_id), now
            )
            events = [NewEvent(EventType.SESSION_CREATED, {"title": title}), *imported]
            for start in range(0, len(events), _APPEND_CHUNK):
                await tx.append(
                    principal.space_id, session.id, events[start : start + _APPEND_CHUNK], now
                )
            created = await tx.get_session(principal.space_id, session.id, now)
        assert created is not None
        return created

    async def get(self, principal: Principal, session_id: str) -> Session:
        async with self._deps.store.read() as tx:
            session = await tx.get_session(principal.space_id, session_id, self._deps.clock.now())
        if session is None:
            raise NotFound.of("session", session_id)
        return session

    async def list(
        self,
        principal: Principal,
        agent_id: str,
        *,
        status: SessionStatus | None = None,
        external_user_id: str | None = None,
        query: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Session]:
        check_limit(limit)
        async with self._deps.store.read() as tx:
            if await tx.get_agent(principal.space_id, agent_id) is None:
                raise NotFound.of("agent", agent_id)
            return await tx.list_sessions(
                ListSessions(
                    principal.space_id,
                    agent_id,
                    self._deps.clock.now(),
                    status=status,
                    external_user_id=external_user_id,
                    query=query,
                    limit=limit,
                    cursor=cursor,
                )
            )

    async def rename(self, principal: Principal, session_id: str, title: str) -> Session:
        check_text(title, "title", "session_title")
        async with self._deps.store.write() as tx:
            if not await tx.rename_session(principal.space_id, session_id, title):
                raise NotFound.of("session", session_id)
            session = await tx.get_session(principal.space_id, session_id, self._deps.clock.now())
        assert session is not None
        return session

    async def delete(self, principal: Principal, session_id: str) -> None:
        cancelled: list[str] = []
        async with self._deps.store.write() as tx:
            session = await tx.lock_session(principal.space_id, session_id, self._deps.clock.now())
            if session is None:
                raise NotFound.of("session", session_id)
            cancelled = [
                t.id for t in await tx.session_tasks(principal.space_id, session_id, _OPEN)
            ]
            await tx.delete_session(principal.space_id, session_id)
        for task_id in cancelled:
            self._deps.on_cancelled(task_id)

    # -- messages ------------------------------------------------------------------------------

    async def send(
        self,
        principal: Principal,
        session_id: str,
        text: str,
        *,
        on_busy: OnBusy = OnBusy.QUEUE,
    ) -> MessageAccepted:
        """Store a user message and act on it per ``on_busy`` (ARCHITECTURE §3)."""
        check_text(text, "text", "message_text", allow_empty=False)
        now = self._deps.clock.now()
        space_id = principal.space_id
        interrupted: list[str] = []
        queued = False
        async with self._deps.store.write() as tx:
            session = await tx.lock_session(space_id, session_id, now)
            if session is None:
                raise NotFound.of("session", session_id)
            # Stamp the message and its task with the time the lock was ours: concurrent sends
            # take the lock in any order, and a session's queued tasks run in created_at order,
            # which must be the order of their messages' seqs.
            now = self._deps.clock.now()
            open_tasks = await tx.session_tasks(space_id, session_id, _OPEN)
            waiting = next((t for t in open_tasks if t.status is TaskStatus.WAITING), None)
            current = next((t for t in open_tasks if t.status is TaskStatus.RUNNING), None)
            stored: list[Event] = []
            if on_busy is OnBusy.INTERRUPT and open_tasks:
                for task in open_tasks:
                    outcome = await transition(
                        tx,
                        TaskChange(
                            space_id,
                            task.id,
                            _OPEN,
                            TaskStatus.CANCELLED,
                            now,
                            clear_lease=True,
                            clear_question=True,
                            set_finished=True,
                        ),
                        session_id=session_id,
                        reason="interrupted",
                    )
                    if outcome is not None:
                        interrupted.append(task.id)
                        stored += outcome[1]
                accepted, new_events = await self._new_task(tx, session, text, now)
                queued = True
            elif waiting is not None:
                question = waiting.question
                assert question is not None
                if question.kind is not QuestionKind.TEXT:
                    raise QuestionPending(
                        f"task {waiting.id!r} waits on a {question.kind.value} question; "
                        "answer it with POST /v1/tasks/{task_id}/answer",
                        details={"task_id": waiting.id, "question": _question_json(waiting)},
                    )
                message_id = new_id("message")
                new_events = await answer_in_tx(
                    tx,
                    waiting,
                    Answer(question_id=question.id, text=text),
                    by=principal.actor,
                    now=now,
                    message_id=message_id,
                )
                accepted = MessageAccepted(message_id, waiting.id, session_id, "answer")
                queued = True
            elif on_busy is OnBusy.REJECT and open_tasks:
                raise SessionBusy(
                    f"session {session_id!r} is busy with task {open_tasks[0].id!r}",
                    details={"task_id": open_tasks[0].id},
                )
            elif on_busy is OnBusy.STEER and current is not None:
                await tx.add_steer(space_id, current.id)
                message_id = new_id("message")
                new_events = await tx.append(
                    space_id,
                    session_id,
                    [
                        NewEvent(
                            EventType.MESSAGE,
                            {"role": "user", "text": text, "message_id": message_id, "steer": True},
                            task_id=current.id,
                        )
                    ],
                    now,
                )
                accepted = MessageAccepted(message_id, current.id, session_id, "steer")
            else:
                accepted, new_events = await self._new_task(tx, session, text, now)
                queued = True
            stored += new_events
        for task_id in interrupted:
            self._deps.on_cancelled(task_id)
        await self._deps.publish(session_id, stored)
        if queued:
            self._deps.on_queued()
        return accepted

    async def _new_task(
        self, tx: WriteTx, session: Session, text: str, now: datetime
    ) -> tuple[MessageAccepted, list[Event]]:
        task_id = new_id("task")
        message_id = new_id("message")
        await tx.insert_task(
            NewTask(session.space_id, session.agent_id, session.id, task_id, message_id, now)
        )
        events = await tx.append(
            session.space_id,
            session.id,
            [
                NewEvent(
                    EventType.MESSAGE,
                    {"role": "user", "text": text, "message_id": message_id},
                    task_id=task_id,
                ),
                status_event(task_id, TaskStatus.QUEUED),
            ],
            now,
        )
        return MessageAccepted(message_id, task_id, session.id, "task"), events

    async def messages(
        self, principal: Principal, session_id: str, *, after_seq: int = 0, limit: int = 50
    ) -> list[MessageItem]:
        """The conversation, oldest first: user and assistant messages and answers."""
        check_limit(limit)
        items: list[MessageItem] = []
        async with self._deps.store.read() as tx:
            if await tx.get_session(principal.space_id, session_id, self._deps.clock.now()) is None:
                raise NotFound.of("session", session_id)
            cursor = after_seq
            while len(items) < limit:
                batch = await tx.read_events(
                    ReadEvents(
                        principal.space_id,
                        session_id,
                        after_seq=cursor,
                        limit=limit,
                        types=frozenset({EventType.MESSAGE, EventType.ANSWER}),
                    )
                )
                for event in batch:
                    items.append(_message_item(event))
                if len(batch) < limit:
                    break
                cursor = batch[-1].seq
        return items[:limit]

    async def events(
        self, principal: Principal, session_id: str, *, after_seq: int = 0, limit: int = 50
    ) -> list[Event]:
        check_limit(limit)
        async with self._deps.store.read() as tx:
            if await tx.get_session(principal.space_id, session_id, self._deps.clock.now()) is None:
                raise NotFound.of("session", session_id)
            return await tx.read_events(
                ReadEvents(principal.space_id, session_id, after_seq=after_seq, limit=limit)
            )


def _question_json(task: Task) -> dict[str, Any]:
    assert task.question is not None
    return task.question.to_json()


def _message_item(event: Event) -> MessageItem:
    data = event.data
    if event.type == EventType.ANSWER:
        return MessageItem(
            message_id=str(data.get("message_id") or event.id),
            seq=event.seq,
            role="user",
            text=answer_text(data),
            task_id=event.task_id,
            at=event.at,
        )
    return MessageItem(
        message_id=str(data["message_id"]),
        seq=event.seq,
        role=str(data["role"]),
        text=str(data["text"]),
        task_id=event.task_id,
        at=event.at,
    )
