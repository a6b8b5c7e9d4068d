"""Shortcuts for the store conformance suite: a space with an agent, sessions and tasks in any
status, reached only through legal transitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from openbuda.domain.events import EventType, NewEvent
from openbuda.domain.ids import new_id
from openbuda.domain.records import (
    Agent,
    AgentSettings,
    Member,
    Question,
    QuestionKind,
    Role,
    Session,
    Space,
    Task,
    TaskError,
    TaskResult,
)
from openbuda.domain.states import TaskStatus, sources_for
from openbuda.ports import NewAgent, NewApiKey, NewSession, NewTask, ReadEvents, TaskChange
from openbuda.stores import SqlStore

__all__ = ["LEASE", "T0", "World", "at", "key_request", "message", "question"]

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def message(text: str, task_id: str | None = None) -> NewEvent:
    return NewEvent(EventType.MESSAGE, {"role": "user", "text": text}, task_id=task_id)


def question(prompt: str = "Which one?") -> Question:
    return Question(new_id("question"), QuestionKind.TEXT, prompt, "call_1", T0)


@dataclass
class World:
    """A space with one member and one agent, and shortcuts to build sessions and tasks."""

    store: SqlStore
    space: Space
    member: Member
    agent: Agent

    @classmethod
    async def make(cls, store: SqlStore, name: str = "one", idle_timeout_s: int = 900) -> World:
        async with store.write() as tx:
            space = await tx.create_space(name, T0)
            member = await tx.create_member(space.id, "owner", Role.OWNER, T0)
            settings = AgentSettings(idle_timeout_s=idle_timeout_s)
            agent = await tx.create_agent(NewAgent(space.id, "helper", settings=settings), T0)
        return cls(store, space, member, agent)

    async def session(
        self, title: str = "", when: datetime = T0, external_user_id: str | None = None
    ) -> Session:
        async with self.store.write() as tx:
            request = NewSession(self.space.id, self.agent.id, title, external_user_id)
            return await tx.create_session(request, when)

    async def task(self, session: Session, when: datetime = T0) -> Task:
        async with self.store.write() as tx:
            request = NewTask(
                self.space.id, self.agent.id, session.id, new_id("task"), new_id("message"), when
            )
            return await tx.insert_task(request)

    async def change(self, task: Task, target: TaskStatus, **fields: Any) -> Task | None:
        change = TaskChange(
            self.space.id, task.id, sources_for(target), target, fields.pop("now", T0), **fields
        )
        async with self.store.write() as tx:
            return await tx.change_task(change)

    async def start(self, task: Task, owner: str = "worker-1", when: datetime = T0) -> Task:
        started = await self.change(
            task,
            TaskStatus.RUNNING,
            now=when,
            lease_owner=owner,
            lease_until=when + LEASE,
            set_started=True,
        )
        assert started is not None
        return started

    async def task_in(self, session: Session, status: TaskStatus, when: datetime = T0) -> Task:
        """A task of ``session`` driven through legal transitions to ``status``."""
        task = await self.task(session, when)
        if status is TaskStatus.QUEUED:
            return task
        if status is TaskStatus.CANCELLED:
            result = await self.change(task, TaskStatus.CANCELLED, set_finished=True)
            assert result is not None
            return result
        task = await self.start(task, when=when)
        extra: dict[str, Any] = {
            TaskStatus.RUNNING: {},
            TaskStatus.WAITING: {"question": question(), "clear_lease": True},
            TaskStatus.COMPLETED: {"result": TaskResult("done"), "clear_lease": True},
            TaskStatus.FAILED: {"error": TaskError("boom", "it broke"), "clear_lease": True},
        }[status]
        if status is TaskStatus.RUNNING:
            return task
        result = await self.change(task, status, **extra)
        assert result is not None
        return result

    async def events(self, session: Session, **options: Any) -> list[Any]:
        async with self.store.read() as tx:
            return await tx.read_events(ReadEvents(self.space.id, session.id, **options))

    async def get_session(self, session: Session, now: datetime = T0) -> Session:
        async with self.store.read() as tx:
            found = await tx.get_session(self.space.id, session.id, now)
        assert found is not None
        return found

    async def get_task(self, task: Task) -> Task:
        async with self.store.read() as tx:
            found = await tx.get_task(self.space.id, task.id)
        assert found is not None
        return found


def key_request(world: World, secret_hash: str, **fields: Any) -> NewApiKey:
    values: dict[str, Any] = {
        "space_id": world.space.id,
        "member_id": world.member.id,
        "name": "ci",
        "role": Role.ADMIN,
        "secret_hash": secret_hash,
        "prefix": "ob_abcd",
        "expires_at": None,
    }
    values.update(fields)
    return NewApiKey(**values)
