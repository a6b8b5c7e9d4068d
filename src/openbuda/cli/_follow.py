"""Following a task through the session's event stream until it ends or waits for a person,
answering its questions on the way when someone can."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from rich.console import Console

from openbuda.cli._render import TaskView, ask, belongs_to
from openbuda.client import Client, Task
from openbuda.domain.states import TaskStatus

__all__ = ["Follower", "finish", "last_seq"]

_PAGE = 500


def last_seq(client: Client, session_id: str) -> int | None:
    """The ``seq`` of the session's last stored event (``None`` for an empty log)."""
    session = client.sessions.get(session_id)
    if session.last_seq is not None:
        return session.last_seq
    after: int | None = None
    while True:
        page = client.sessions.events(session_id, after=after, limit=_PAGE)
        if page.items:
            after = page.items[-1].seq
        if len(page.items) < _PAGE:
            return after


@dataclass
class Follower:
    """Follows one session's tasks; ``cursor`` moves on with every stream read."""

    client: Client
    session_id: str
    console: Console
    cursor: int | None = None
    json_lines: bool = False
    """Print every event of the task as a JSON line instead of the live view."""
    answers: list[str] = field(default_factory=list[str])
    interactive: bool = False
    prompts: Console | None = None
    """Where questions are asked (default ``console``; stderr when stdout carries JSON)."""

    def follow(self, task_id: str, view: TaskView | None = None) -> Task:
        """Stream the task's events until it is done, or waits on a question nobody here can
        answer; the task as it is then."""
        while True:
            with self.client.sessions.stream(
                self.session_id, after=self.cursor, until_idle=True
            ) as stream:
                for event in stream:
                    if not belongs_to(event, task_id):
                        continue
                    if self.json_lines:
                        self.console.file.write(json.dumps(event.to_json()) + "\n")
                        self.console.file.flush()
                    elif view is not None:
                        view.show(event)
                self.cursor = stream.last_seq
            task = self.client.tasks.get(task_id)
            if task.status is TaskStatus.WAITING and task.question is not None:
                if view is not None:
                    view.end_line()
                reply = ask(
                    task.question, self.answers, self.interactive, self.prompts or self.console
                )
                if reply is None:
                    return task
                self.client.tasks.answer(
                    task_id,
                    task.question.id,
                    text=reply.text,
                    choice=reply.choice,
                    approved=reply.approved,
                    note=reply.note,
                )
                continue
            if task.status.is_terminal:
                return task
            time.sleep(0.1)  # the stream ended while the task still runs: look again


def finish(view: TaskView, task: Task) -> None:
    view.finish(
        result=None if task.result is None else task.result.text,
        error=None if task.error is None else (task.error.code, task.error.message),
    )
