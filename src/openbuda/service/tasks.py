"""Tasks: read them, cancel them, answer their questions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from openbuda.domain.errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from openbuda.domain.events import EventType, NewEvent
from openbuda.domain.principal import Principal
from openbuda.domain.records import Event, QuestionKind, Task
from openbuda.domain.states import TaskStatus
from openbuda.domain.validation import check_limit, check_text
from openbuda.ports import ListTasks, Page, TaskChange, WriteTx
from openbuda.service.deps import ServiceDeps
from openbuda.service.transitions import transition, transition_or_raise

__all__ = ["Answer", "TaskService", "answer_in_tx", "answer_text", "tool_result_for_answer"]

_CANCELLABLE = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.WAITING})


@dataclass(frozen=True, slots=True)
class Answer:
    question_id: str
    text: str | None = None
    choice: str | None = None
    approved: bool | None = None
    note: str | None = None


class TaskService:
    def __init__(self, deps: ServiceDeps) -> None:
        self._deps = deps

    async def get(self, principal: Principal, task_id: str) -> Task:
        async with self._deps.store.read() as tx:
            task = await tx.get_task(principal.space_id, task_id)
        if task is None:
            raise NotFound.of("task", task_id)
        return task

    async def list(
        self,
        principal: Principal,
        *,
        status: TaskStatus | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Task]:
        """Tasks newest first; ``status=waiting`` is the inbox of everything that needs a person."""
        check_limit(limit)
        async with self._deps.store.read() as tx:
            return await tx.list_tasks(
                ListTasks(principal.space_id, status, session_id, agent_id, limit, cursor)
            )

    async def cancel(self, principal: Principal, task_id: str) -> Task:
        now = self._deps.clock.now()
        async with self._deps.store.write() as tx:
            found = await tx.get_task(principal.space_id, task_id)
            if found is None:
                raise NotFound.of("task", task_id)
            await tx.lock_session(principal.space_id, found.session_id, now)
            task, events = await transition_or_raise(
                tx,
                TaskChange(
                    principal.space_id,
                    task_id,
                    _CANCELLABLE,
                    TaskStatus.CANCELLED,
                    now,
                    clear_lease=True,
                    clear_question=True,
                    set_finished=True,
                ),
                session_id=found.session_id,
                reason="cancelled",
            )
        self._deps.on_cancelled(task_id)
        await self._deps.publish(task.session_id, events)
        self._deps.on_queued()  # the session's next queued task may start now
        return task

    async def answer(self, principal: Principal, task_id: str, answer: Answer) -> Task:
        now = self._deps.clock.now()
        async with self._deps.store.write() as tx:
            found = await tx.get_task(principal.space_id, task_id)
            if found is None:
                raise NotFound.of("task", task_id)
            await tx.lock_session(principal.space_id, found.session_id, now)
            task = await tx.get_task(principal.space_id, task_id)
            assert task is not None
            events = await answer_in_tx(tx, task, answer, by=principal.actor, now=now)
            updated = await tx.get_task(principal.space_id, task_id)
        assert updated is not None
        await self._deps.publish(task.session_id, events)
        self._deps.on_queued()
        return updated


async def answer_in_tx(
    tx: WriteTx,
    task: Task,
    answer: Answer,
    *,
    by: str,
    now: datetime,
    message_id: str | None = None,
) -> list[Event]:
    """Store the answer to ``task``'s open question and re-queue it, in the caller's transaction.

    The answer becomes the result of the tool call that asked (``ask_user``); an approval of a
    gated tool lets it run at the task's next step, a denial becomes that tool's result.
    """
    question = task.question
    if task.status is not TaskStatus.WAITING or question is None:
        raise InvalidTransition(
            f"task {task.id!r} is {task.status.value!r}, not waiting for an answer",
            details={"task_id": task.id, "status": task.status.value},
        )
    if answer.question_id != question.id:
        raise Conflict(
            f"question {answer.question_id!r} is not the open question of task {task.id!r}",
            details={"task_id": task.id, "question": question.to_json()},
        )
    data: dict[str, Any] = {"question_id": question.id, "call_id": question.call_id, "by": by}
    if message_id is not None:
        data["message_id"] = message_id
    match question.kind:
        case QuestionKind.TEXT:
            if answer.text is None:
                raise ValidationFailed("a text question needs `text`", details={"field": "text"})
            data["text"] = check_text(answer.text, "text", "answer_text")
        case QuestionKind.CHOICE:
            options = question.options or []
            if answer.choice is None or answer.choice not in options:
                raise ValidationFailed(
                    f"`choice` must be one of the options {options!r}, got {answer.choice!r}",
                    details={"field": "choice", "options": options},
                )
            data["choice"] = answer.choice
        case QuestionKind.APPROVAL:
            if answer.approved is None:
                raise ValidationFailed(
                    "an approval question needs `approved` (true or false)",
                    details={"field": "approved"},
                )
            data["approved"] = answer.approved
            if answer.note is not None:
                data["note"] = check_text(answer.note, "note", "answer_text")
    before = [NewEvent(EventType.ANSWER, data, task_id=task.id)]
    result = tool_result_for_answer(question.tool_name, data)
    if result is not None:
        before.append(
            NewEvent(
                EventType.TOOL_RESULT,
                {"call_id": question.call_id, "duration_ms": 0, **result},
                task_id=task.id,
            )
        )
    outcome = await transition(
        tx,
        TaskChange(
            task.space_id,
            task.id,
            frozenset({TaskStatus.WAITING}),
            TaskStatus.QUEUED,
            now,
            clear_question=True,
        ),
        session_id=task.session_id,
        reason="answered",
        before=before,
    )
    if outcome is None:
        raise InvalidTransition(
            f"task {task.id!r} is no longer waiting", details={"task_id": task.id}
        )
    return outcome[1]


def tool_result_for_answer(tool_name: str | None, data: dict[str, Any]) -> dict[str, Any] | None:
    """The ``tool.result`` an answer makes, or ``None`` when the gated tool should now run."""
    if tool_name is None or tool_name == "ask_user":
        return {"status": "ok", "output": answer_text(data)}
    if data.get("approved"):
        return None
    note = data.get("note")
    output = f"The user denied running {tool_name!r}." + (f" Their note: {note}" if note else "")
    return {"status": "error", "output": output}


def answer_text(data: dict[str, Any]) -> str:
    """How an answer reads as a line of the conversation and as ``ask_user``'s result."""
    if data.get("text") is not None:
        return str(data["text"])
    if data.get("choice") is not None:
        return str(data["choice"])
    verdict = "approved" if data.get("approved") else "denied"
    note = data.get("note")
    return f"{verdict}: {note}" if note else verdict
