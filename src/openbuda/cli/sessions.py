"""``openbuda sessions list|show|rename|delete|save``."""

from __future__ import annotations

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
    handle_errors,
    listing,
    one_line,
    print_json,
    resolve_agent,
    when,
)
from openbuda.cli._render import describe
from openbuda.client import Agent, Client, Message, Session

__all__ = ["sessions_app"]

sessions_app = typer.Typer(
    help="List, show, rename, delete sessions, and save them to Drive.", no_args_is_help=True
)

SessionArgument = Annotated[str, typer.Argument(help="Session id (ses_…).")]


class StatusChoice(StrEnum):
    WORKING = "working"
    WAITING = "waiting"
    IDLE = "idle"
    DORMANT = "dormant"


@sessions_app.command("list")
@handle_errors
def list_sessions(
    agent: AgentOption = None,
    status: Annotated[StatusChoice | None, typer.Option(help="Only this status.")] = None,
    external_user_id: Annotated[
        str | None, typer.Option("--user", help="Only this external user's sessions.")
    ] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="Title search.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many per agent.")] = 50,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List sessions: an agent's (--agent), else every agent's."""
    found: list[tuple[Agent, Session]] = []
    with Target(url, api_key, home).client() as client:
        agents = [resolve_agent(client, agent)] if agent else list(client.agents.iterate())
        for each_agent in agents:
            sessions = client.sessions.iterate(
                each_agent.id,
                status=None if status is None else status.value,
                external_user_id=external_user_id,
                q=search,
                page_size=min(limit, 500),
            )
            found += [(each_agent, session) for session in each(sessions, limit)]
    if as_json:
        print_json([session for _, session in found])
        return
    if not found:
        console.print("[dim]no sessions[/]")
        return
    table = listing("id", "agent", "title", "status", "tasks", "last activity")
    for owner, session in found:
        table.add_row(
            session.id,
            escape(owner.name),
            escape(one_line(session.title, 40)),
            _status(session),
            str(session.task_count),
            when(session.last_activity_at),
        )
    console.print(table)


@sessions_app.command("show")
@handle_errors
def show(
    session_id: SessionArgument,
    limit: Annotated[int, typer.Option(help="Show the conversation's first N messages.")] = 500,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a session and its conversation."""
    with Target(url, api_key, home).client() as client:
        session = client.sessions.get(session_id)
        messages = conversation(client, session_id, limit)
    if as_json:
        print_json({**session.to_json(), "messages": [m.to_json() for m in messages]})
        return
    table = details()
    table.add_row("id", session.id)
    table.add_row("agent", session.agent_id)
    table.add_row("title", escape(session.title))
    table.add_row("status", _status(session))
    if session.external_user_id:
        table.add_row("external user", escape(session.external_user_id))
    table.add_row("created", when(session.created_at))
    table.add_row("last activity", when(session.last_activity_at))
    table.add_row("tasks", str(session.task_count))
    if session.open_question is not None:
        table.add_row("question", escape(describe(session.open_question)))
    console.print(table)
    for message in messages:
        style = "bold" if message.role == "user" else "bold green"
        name = "you" if message.role == "user" else "agent"
        console.print(f"[{style}]{name}[/] {escape(message.text)}", highlight=False)


@sessions_app.command("rename")
@handle_errors
def rename(
    session_id: SessionArgument,
    title: Annotated[str, typer.Argument(help="The new title.")],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a session a new title."""
    with Target(url, api_key, home).client() as client:
        session = client.sessions.rename(session_id, title)
    if as_json:
        print_json(session)
    else:
        console.print(f"renamed {session.id} to {escape(session.title)!r}", highlight=False)


@sessions_app.command("delete")
@handle_errors
def delete(
    session_id: SessionArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a session (its open tasks are cancelled)."""
    if not yes:
        typer.confirm(f"Delete session {session_id}?", abort=True)
    with Target(url, api_key, home).client() as client:
        client.sessions.delete(session_id)
    if as_json:
        print_json({"deleted": session_id})
    else:
        console.print(f"deleted session {session_id}")


def conversation(client: Client, session_id: str, limit: int) -> list[Message]:
    """The first ``limit`` messages of the conversation, fetching page after page."""
    messages: list[Message] = []
    after: int | None = None
    while len(messages) < limit:
        page = client.sessions.messages(session_id, after=after, limit=min(500, limit))
        messages += page.items
        if len(page.items) < min(500, limit) or not page.items:
            break
        after = page.items[-1].seq
    return messages[:limit]


def _status(session: Session) -> str:
    colour = {"working": "cyan", "waiting": "yellow", "idle": "green"}.get(session.status, "dim")
    return f"[{colour}]{session.status}[/]"


@sessions_app.command("save")
@handle_errors
def save(
    session_id: SessionArgument,
    path: Annotated[str, typer.Argument(help="Where in the Drive, e.g. notes/session.md.")],
    space: Annotated[
        bool, typer.Option("--space", help="The Space Drive instead of the agent's Drive.")
    ] = False,
    task: Annotated[
        str | None,
        typer.Option("--task", help="Save this task's result (with its files) instead."),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Save the session's transcript as Markdown in its agent's Drive (or the Space Drive)."""
    with Target(url, api_key, home).client() as client:
        entry = client.sessions.save(
            session_id, path, drive="space" if space else "agent", task_id=task
        )
    if as_json:
        print_json(entry)
        return
    where = "the Space Drive" if space else "the agent's Drive"
    console.print(
        f"saved {session_id} to {escape(entry.path)} in {where} (version {entry.version})",
        highlight=False,
    )
