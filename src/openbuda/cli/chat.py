"""``openbuda chat`` (a conversation at the terminal) and ``openbuda send`` (one message)."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.prompt import Prompt

from openbuda.cli._common import (
    AgentOption,
    ApiKeyOption,
    HomeOption,
    JsonOption,
    Target,
    UrlOption,
    console,
    errors,
    handle_errors,
    print_json,
    resolve_agent,
)
from openbuda.cli._follow import Follower, finish, last_seq
from openbuda.cli._render import TaskView, answer_hint
from openbuda.client import Client, Session, Task
from openbuda.domain.errors import InvalidRequest
from openbuda.domain.states import TaskStatus

__all__ = ["register"]

WAITING_EXIT = 3
"""Exit status of ``send --wait`` (and ``chat``) when a task waits for an answer."""


class OnBusyChoice(StrEnum):
    QUEUE = "queue"
    STEER = "steer"
    INTERRUPT = "interrupt"
    REJECT = "reject"


SessionOption = Annotated[
    str | None,
    typer.Option(
        "--session", envvar="OPENBUDA_SESSION", help="Session id (ses_…).", show_default=False
    ),
]
TitleOption = Annotated[
    str | None, typer.Option(help="Title of a new session.", show_default=False)
]


def chat(
    agent: AgentOption = None,
    session_id: SessionOption = None,
    message: Annotated[
        list[str] | None,
        typer.Option("--message", "-m", help="Send this message (repeatable); then stop."),
    ] = None,
    answer: Annotated[
        list[str] | None,
        typer.Option("--answer", "-a", help="Answer the agent's questions with these, in order."),
    ] = None,
    title: TitleOption = None,
    interactive: Annotated[
        bool | None,
        typer.Option(
            "--interactive/--no-interactive",
            help="Prompt for messages and answers (default: when stdin is a terminal and no "
            "--message is given).",
            show_default=False,
        ),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", envvar="OPENBUDA_JSON", help="Print events as JSON lines.")
    ] = False,
) -> None:
    """Chat with an agent: text and steps stream live, questions are asked inline.

    AGENT is an id or a unique name; --session continues a session (first asking the question
    its task waits on, if any). An empty line ends. Exit status: 0, 1 when a task failed, 3
    when a task waits for an answer nobody gave.
    """
    handle_errors(_chat)(
        agent=agent,
        session_id=session_id,
        messages=list(message or []),
        answers=list(answer or []),
        title=title,
        interactive=(sys.stdin.isatty() and not message) if interactive is None else interactive,
        target=Target(url, api_key, home),
        as_json=as_json,
    )


def _chat(
    *,
    agent: str | None,
    session_id: str | None,
    messages: list[str],
    answers: list[str],
    title: str | None,
    interactive: bool,
    target: Target,
    as_json: bool,
) -> None:
    if not messages and not interactive and session_id is None:
        raise InvalidRequest("nothing to send: give --message, or run chat in a terminal")
    with target.client() as client:
        session = _session(client, agent, session_id, title)
        follower = Follower(
            client,
            session.id,
            console,
            cursor=None if session_id is None else last_seq(client, session.id),
            json_lines=as_json,
            answers=answers,
            interactive=interactive,
            prompts=errors if as_json else None,
        )
        notes = errors if as_json else console
        notes.print(f"[dim]session {session.id} · agent {session.agent_id}[/]", highlight=False)
        failures = 0
        if session.open_question is not None:  # a task of this session waits for an answer
            waiting = client.tasks.list(status="waiting", session_id=session.id, limit=1).items
            for task in waiting:
                if _turn(follower, task.id, as_json) is TaskStatus.WAITING:
                    raise typer.Exit(WAITING_EXIT)
        while True:
            if messages:
                text = messages.pop(0)
            elif interactive:
                try:
                    text = Prompt.ask("[bold]you[/]", default="", console=notes).strip()
                except EOFError:
                    break
                if not text:
                    break
            else:
                break
            accepted = client.sessions.send(session.id, text)
            status = _turn(follower, accepted.task_id, as_json)
            if status is TaskStatus.WAITING:
                raise typer.Exit(WAITING_EXIT)
            failures += status is not TaskStatus.COMPLETED
    if failures:
        raise typer.Exit(1)


def _turn(follower: Follower, task_id: str, as_json: bool) -> TaskStatus:
    view = None if as_json else TaskView(follower.console)
    task = follower.follow(task_id, view)
    if view is not None:
        finish(view, task)
    if task.status is TaskStatus.WAITING and task.question is not None:
        _waits(task, errors if as_json else follower.console)
    return task.status


def send(
    text: Annotated[str, typer.Argument(help="The message; - reads it from stdin.")],
    session_id: SessionOption = None,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            envvar="OPENBUDA_AGENT",
            help="Start a new session with this agent (id or unique name).",
            show_default=False,
        ),
    ] = None,
    title: TitleOption = None,
    on_busy: Annotated[
        OnBusyChoice | None,
        typer.Option(
            help="When a task of the session is running: queue (default), steer, interrupt, "
            "reject.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Follow the task until it is done and print the result (exit 1 if it failed, "
            f"{WAITING_EXIT} if it waits for an answer).",
        ),
    ] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Sending again with the same key sends nothing new.", show_default=False),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send one message to a session (--session) or to a new session of an agent (--agent)."""
    if text == "-":
        text = sys.stdin.read()
    handle_errors(_send)(
        text=text,
        session_id=session_id,
        agent=agent,
        title=title,
        on_busy=on_busy,
        wait=wait,
        idempotency_key=idempotency_key,
        target=Target(url, api_key, home),
        as_json=as_json,
    )


def _send(
    *,
    text: str,
    session_id: str | None,
    agent: str | None,
    title: str | None,
    on_busy: OnBusyChoice | None,
    wait: bool,
    idempotency_key: str | None,
    target: Target,
    as_json: bool,
) -> None:
    if session_id is not None and agent is not None:
        raise InvalidRequest("give --session or --agent, not both")
    with target.client() as client:
        session = _session(client, agent, session_id, title)
        cursor = last_seq(client, session.id) if wait and session_id is not None else None
        accepted = client.sessions.send(
            session.id,
            text,
            on_busy=None if on_busy is None else on_busy.value,
            idempotency_key=idempotency_key,
        )
        if not wait:
            if as_json:
                print_json(accepted)
            else:
                console.print(
                    f"sent: task {accepted.task_id} in session {accepted.session_id}",
                    highlight=False,
                )
            return
        # with --json, stdout carries only the task's JSON: the question goes to stderr
        follower = Follower(
            client, session.id, console, cursor=cursor, prompts=errors if as_json else None
        )
        view = None if as_json else TaskView(console)
        task = follower.follow(accepted.task_id, view)
    if as_json:
        print_json(task)
    elif view is not None:
        finish(view, task)
        if task.status is TaskStatus.WAITING:
            _waits(task, console)
    if task.status is TaskStatus.WAITING:
        raise typer.Exit(WAITING_EXIT)
    if task.status is not TaskStatus.COMPLETED:
        raise typer.Exit(1)


def _session(
    client: Client, agent: str | None, session_id: str | None, title: str | None
) -> Session:
    if session_id is not None:
        session = client.sessions.get(session_id)
        if agent is not None:
            wanted = resolve_agent(client, agent)
            if wanted.id != session.agent_id:
                raise InvalidRequest(
                    f"session {session_id!r} belongs to agent {session.agent_id!r}, "
                    f"not {wanted.id!r}"
                )
        return session
    if agent is None:
        raise InvalidRequest("give --agent (an id or a unique name) or --session")
    found = resolve_agent(client, agent)
    return client.sessions.create(found.id, title=title)


def _waits(task: Task, out: Console) -> None:
    assert task.question is not None
    out.print(
        f"[yellow]task {task.id} waits for an answer[/]\n"
        f"[dim]answer with: openbuda answer {task.id} {answer_hint(task.question)}[/]",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
    app.command("send")(send)
