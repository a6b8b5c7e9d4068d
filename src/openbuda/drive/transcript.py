"""Sessions saved to Drive as Markdown (``POST /v1/sessions/{id}/save``).

Chat history alone is not durable knowledge: what should outlive a session goes to Drive. Two
documents: the whole *transcript* (every message, question and answer, with the tools the agent
used and the files it changed), or one *task's result* (the request, the answer and the files,
listed). Both are rendered as a stream of chunks from pages of the session's log, so a long
session is never held in memory at once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Final

from openbuda.domain.events import EventType
from openbuda.domain.records import Event, Session, Task

__all__ = ["EventPages", "render_result", "render_transcript"]

PAGE: Final = 1000
EventPages = Callable[[int, int], Awaitable[list[Event]]]
"""Reads up to ``limit`` events after ``seq``: ``pages(after_seq, limit)``."""

_TYPES: Final = frozenset(
    {
        EventType.MESSAGE,
        EventType.TOOL_CALL,
        EventType.TOOL_RESULT,
        EventType.QUESTION,
        EventType.ANSWER,
        EventType.DRIVE_CHANGED,
        EventType.TASK_RESULT,
    }
)
TYPES: Final = frozenset(str(t) for t in _TYPES)
"""The event types the documents are made from."""


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.splitlines() or [""])


def _args(args: Any) -> str:
    text = json.dumps(args, ensure_ascii=False)
    return text if len(text) <= 300 else text[:299] + "…"


def _event_lines(event: Event) -> Iterable[str]:
    data = event.data
    match event.type:
        case EventType.MESSAGE:
            who = "User" if data.get("role") == "user" else "Agent"
            yield f"### {who} · {_when(event.at)}\n\n{data.get('text') or ''}\n"
        case EventType.TOOL_CALL:
            yield f"- tool `{data.get('name')}` {_args(data.get('args'))}\n"
        case EventType.TOOL_RESULT if data.get("status") != "ok":
            yield f"  - {data.get('status')}: {str(data.get('output') or '')[:300]}\n"
        case EventType.QUESTION:
            options = data.get("options") or []
            listed = f" (options: {', '.join(map(str, options))})" if options else ""
            yield f"**The agent asked** ({data.get('kind')}){listed}:\n\n{_quote(str(data.get('prompt') or ''))}\n"
        case EventType.ANSWER:
            if data.get("approved") is not None:
                answer = "approved" if data.get("approved") else "denied"
                if data.get("note"):
                    answer += f" — {data.get('note')}"
            else:
                answer = str(data.get("choice") or data.get("text") or "")
            yield f"**Answer:**\n\n{_quote(answer)}\n"
        case EventType.DRIVE_CHANGED:
            paths = ", ".join(f"`{p}`" for p in data.get("paths") or [])
            yield f"- files changed: {paths}\n"
        case _:
            return


async def _events(pages: EventPages) -> AsyncIterator[Event]:
    after = 0
    while True:
        page = await pages(after, PAGE)
        for event in page:
            yield event
        if len(page) < PAGE:
            return
        after = page[-1].seq


async def render_transcript(session: Session, pages: EventPages) -> AsyncIterator[bytes]:
    """The whole conversation as Markdown, oldest first."""
    title = session.title or "Untitled session"
    yield (
        f"# {title}\n\nSession `{session.id}` of agent `{session.agent_id}`, started "
        f"{_when(session.created_at)}.\n\n"
    ).encode()
    async for event in _events(pages):
        lines = "".join(_event_lines(event))
        if lines:
            yield (lines + "\n").encode()


async def render_result(session: Session, task: Task, pages: EventPages) -> AsyncIterator[bytes]:
    """One task: what was asked, the agent's answer and the files it wrote."""
    yield (
        f"# {session.title or 'Untitled session'} — result\n\nTask `{task.id}` of session "
        f"`{session.id}`, {task.status.value}"
        + (f" {_when(task.finished_at)}" if task.finished_at else "")
        + ".\n\n"
    ).encode()
    request: list[str] = []
    async for event in _events(pages):
        if event.task_id != task.id or event.type != EventType.MESSAGE:
            continue
        if event.data.get("role") == "user":
            request.append(str(event.data.get("text") or ""))
    if request:
        yield ("## Request\n\n" + "\n\n".join(_quote(text) for text in request) + "\n\n").encode()
    if task.result is not None:
        yield f"## Result\n\n{task.result.text}\n\n".encode()
        if task.result.files:
            listed = "".join(f"- `{path}`\n" for path in task.result.files)
            yield f"## Files\n\n{listed}\n".encode()
    elif task.error is not None:
        yield f"## Error\n\n`{task.error.code}`: {task.error.message}\n".encode()
    else:
        yield b"## Result\n\nThe task has no result yet.\n"
