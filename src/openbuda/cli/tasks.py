"""``openbuda inbox``, ``answer``, ``cancel`` and ``tasks show|list``."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer
from rich.markup import escape

from openbuda.cli._common import (
    AgentOption,
    ApiKeyOption,
    HomeOption,
    JsonOption,
    Target,
    UrlOption,
    console,
    details,
    each,
    errors,
    handle_errors,
    listing,
    print_json,
    resolve_agent,
    when,
)
from openbuda.cli._render import Reply, answer_hint, ask, describe, reply_from
from openbuda.client import Task
from openbuda.domain.errors import Conflict, InvalidRequest
from openbuda.domain.records import QuestionKind

__all__ = ["register", "tasks_app"]

tasks_app = typer.Typer(help="Show and list tasks.", no_args_is_help=True)

TaskArgument = Annotated[str, typer.Argument(help="Task id (tsk_…).")]


class TaskStatusChoice(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@tasks_app.command("show")
@handle_errors
def show(
    task_id: TaskArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a task: its status, question, result or error."""
    with Target(url, api_key, home).client() as client:
        task = client.tasks.get(task_id)
    if as_json:
        print_json(task)
        return
    table = details()
    table.add_row("id", task.id)
    table.add_row("session", task.session_id)
    table.add_row("status", _status(task))
    table.add_row("created", when(task.created_at))
    if task.started_at is not None:
        table.add_row("started", when(task.started_at))
    if task.finished_at is not None:
        table.add_row("finished", when(task.finished_at))
    if task.question is not None:
        table.add_row("question", escape(describe(task.question)))
    if task.error is not None:
        table.add_row("error", f"[red]{escape(task.error.code)}: {escape(task.error.message)}[/]")
    if task.result is not None and task.result.files:
        table.add_row("files", escape(", ".join(task.result.files)))
    console.print(table)
    if task.result is not None:
        console.print("[bold]result[/]")
        console.print(task.result.text, markup=False, highlight=False)


@tasks_app.command("list")
@handle_errors
def list_tasks(
    status: Annotated[TaskStatusChoice | None, typer.Option(help="Only this status.")] = None,
    session_id: Annotated[
        str | None, typer.Option("--session", help="Only this session's tasks.")
    ] = None,
    agent: AgentOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    with Target(url, api_key, home).client() as client:
        agent_id = None if agent is None else resolve_agent(client, agent).id
        tasks = each(
            client.tasks.iterate(
                status=None if status is None else status.value,
                session_id=session_id,
                agent_id=agent_id,
                page_size=min(limit, 500),
            ),
            limit,
        )
    if as_json:
        print_json(tasks)
        return
    if not tasks:
        console.print("[dim]no tasks[/]")
        return
    table = listing("id", "session", "status", "created", "finished")
    for task in tasks:
        table.add_row(
            task.id, task.session_id, _status(task), when(task.created_at), when(task.finished_at)
        )
    console.print(table)


@handle_errors
def inbox(
    agent: AgentOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 100,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The tasks waiting for a person: their questions, across agents."""
    with Target(url, api_key, home).client() as client:
        agent_id = None if agent is None else resolve_agent(client, agent).id
        tasks = each(
            client.tasks.iterate(status="waiting", agent_id=agent_id, page_size=min(limit, 500)),
            limit,
        )
    if as_json:
        print_json(tasks)
        return
    if not tasks:
        console.print("[green]inbox is empty[/]: no task waits for an answer")
        return
    table = listing("task", "session", "kind", "question", "asked")
    for task in tasks:
        question = task.question
        table.add_row(
            task.id,
            task.session_id,
            "" if question is None else question.kind.value,
            "" if question is None else escape(describe(question)),
            "" if question is None else when(question.asked_at),
        )
    console.print(table)
    console.print("[dim]answer with: openbuda answer TASK ANSWER[/]")


@handle_errors
def answer(
    task_id: TaskArgument,
    given: Annotated[
        str | None,
        typer.Argument(
            metavar="[ANSWER]",
            help="The answer: text; a choice's number or text; approve/yes or deny/no. "
            "Without it you are asked at the prompt.",
            show_default=False,
        ),
    ] = None,
    choice: Annotated[
        str | None, typer.Option(help="The chosen option's text.", show_default=False)
    ] = None,
    approve: Annotated[
        bool | None,
        typer.Option("--approve/--deny", help="Approve or deny.", show_default=False),
    ] = None,
    note: Annotated[
        str | None, typer.Option(help="A note with an approval or denial.", show_default=False)
    ] = None,
    question_id: Annotated[
        str | None,
        typer.Option(help="The question (default: the task's open question).", show_default=False),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer the question a task waits on; the task goes on."""
    if sum(x is not None for x in (given, choice, approve)) > 1:
        raise InvalidRequest("give one answer: ANSWER, --choice or --approve/--deny")
    with Target(url, api_key, home).client() as client:
        task = client.tasks.get(task_id)
        question = task.question
        if question is None:
            raise Conflict(
                f"task {task_id!r} has no open question (it is {task.status.value})",
                details={"task_id": task_id, "status": task.status.value},
            )
        if choice is not None:
            reply = Reply(choice=choice)
        elif approve is not None:
            reply = Reply(approved=approve)
        elif given is not None:
            reply = reply_from(question, given)
        else:
            asked = ask(question, [], sys.stdin.isatty(), errors if as_json else console)
            if asked is None:
                raise InvalidRequest(
                    f"give the answer: openbuda answer {task_id} {answer_hint(question)}"
                )
            reply = asked
        if note is not None and question.kind is not QuestionKind.APPROVAL:
            raise InvalidRequest("--note goes with an approval question")
        updated = client.tasks.answer(
            task_id,
            question_id or question.id,
            text=reply.text,
            choice=reply.choice,
            approved=reply.approved,
            note=note,
        )
    if as_json:
        print_json(updated)
    else:
        console.print(f"answered: task {updated.id} is {updated.status.value}", highlight=False)


@handle_errors
def cancel(
    task_id: TaskArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a queued, running or waiting task."""
    with Target(url, api_key, home).client() as client:
        task = client.tasks.cancel(task_id)
    if as_json:
        print_json(task)
    else:
        console.print(f"task {task.id} is {task.status.value}", highlight=False)


def _status(task: Task) -> str:
    colour = {
        "completed": "green",
        "failed": "red",
        "cancelled": "dim",
        "waiting": "yellow",
        "running": "cyan",
    }.get(task.status.value, "")
    return f"[{colour}]{task.status.value}[/]" if colour else task.status.value


def register(app: typer.Typer) -> None:
    app.command("inbox")(inbox)
    app.command("answer")(answer)
    app.command("cancel")(cancel)
    app.add_typer(tasks_app, name="tasks")
