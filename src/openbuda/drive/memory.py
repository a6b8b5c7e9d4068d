"""The agent's memory: ``MEMORY.md`` at the root of its Drive, and the ``remember`` tool.

``MEMORY.md`` is an index the agent reads before each task (``MemoryReader``): the first
``Settings.memory_max_bytes`` of it go into the context, after the instructions. ``remember``
writes what it is told to a memory file of its own (``memory/<date>-<words>-<id>.md``) and adds a
line pointing to it to the index. Both are Drive versions by the agent at once, so they outlive
the session and reach the computer's ``/agent`` before the next tool call. The agent may also
edit ``MEMORY.md`` with any program: it is an ordinary file of its Drive.

In external users' sessions memory is read-only unless the agent allows them to write
(``external_users_can_write``): a stranger must not be able to plant instructions in what the
agent reads before every task of everyone.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import AsyncGenerator
from typing import Any, Final

import anyio

from openbuda.domain.conversation import ToolSpec
from openbuda.domain.drive import MEMORY_INDEX, Actor, DriveRef
from openbuda.domain.errors import NotFound, OpenbudaError
from openbuda.domain.records import Agent
from openbuda.engine.tools import ToolContext, ToolOutcome
from openbuda.service.drive import DriveService, iterate_bytes

__all__ = ["MEMORY_DIR", "REMEMBER_MAX_CHARS", "DriveMemory", "RememberTool"]

MEMORY_DIR: Final = "memory"
REMEMBER_MAX_CHARS: Final = 16_000
INDEX_MAX_BYTES: Final = 4 * 1024 * 1024
"""``remember`` refuses to grow an index past this (the agent should tidy it)."""
_INDEX_HEADER: Final = (
    "# Memory\n\nWhat I keep across sessions. Each line points to a memory file.\n\n"
)
_WORD: Final = re.compile(r"[^\W_]+", re.UNICODE)


class DriveMemory:
    """Reads ``MEMORY.md`` from an agent's Drive (a ``MemoryReader``)."""

    def __init__(self, drive: DriveService, max_bytes: int) -> None:
        self._drive = drive
        self._max_bytes = max_bytes

    async def __call__(self, agent: Agent) -> str | None:
        ref = DriveRef(agent.space_id, agent.id)
        try:
            found, chunks = await self._drive.open(ref, MEMORY_INDEX)
        except NotFound:
            return None
        head = await _head(chunks, self._max_bytes)
        text = head.decode(errors="ignore")
        if found.size > self._max_bytes:
            text += (
                f"\n\n[MEMORY.md is {found.size} bytes; only the first {self._max_bytes} are "
                "shown. Keep it short: move details into memory files.]"
            )
        return text


async def _head(chunks: AsyncGenerator[bytes], limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            parts.append(chunk[: limit - size])
            size += len(parts[-1])
            if size >= limit:
                break
    finally:
        await chunks.aclose()
    return b"".join(parts)


def _title(text: str) -> str:
    first = next((line.strip(" #-*>\t") for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= 80 else first[:79] + "…"


def _slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.lower())
    words = _WORD.findall(folded.encode("ascii", "ignore").decode())
    return "-".join(words[:6])[:48].strip("-") or "note"


class RememberTool:
    """``remember {text}``: a memory file and a line in ``MEMORY.md`` (API.md, agent tools).

    Idempotent: the file name derives from the call's idempotency key and the index line is
    added only once, so running it again after a crash changes nothing more.
    """

    def __init__(self, drive: DriveService) -> None:
        self._drive = drive
        self._locks: dict[str, anyio.Lock] = {}

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="remember",
            description=(
                "Remember something across sessions and tasks: a fact, a preference, a decision. "
                "It is saved as a memory file in /agent/memory/ and listed in /agent/MEMORY.md, "
                "which you read before every task. Write it so that it makes sense on its own."
            ),
            parameters={
                "type": "object",
                "properties": {"text": {"type": "string", "description": "What to remember."}},
                "required": ["text"],
            },
        )

    @property
    def idempotent(self) -> bool:
        return True

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        agent = context.agent
        if context.is_external and not agent.settings.external_users_can_write:
            return ToolOutcome(
                "remember is not available in this conversation: memory is read-only in "
                "external users' sessions (the agent's external_users_can_write is off)",
                "error",
            )
        text = str(args.get("text") or "").strip()
        if not text:
            return ToolOutcome("remember: 'text' must not be empty", "error")
        if len(text) > REMEMBER_MAX_CHARS:
            return ToolOutcome(
                f"remember: 'text' may be at most {REMEMBER_MAX_CHARS} characters; save long "
                "material with write_file and remember where it is",
                "error",
            )
        ref = DriveRef(agent.space_id, agent.id)
        actor = Actor(agent_id=agent.id, task_id=context.task_id, session_id=context.session.id)
        key = hashlib.sha256(context.idempotency_key.encode()).hexdigest()[:8]
        day = context.session.last_activity_at.strftime("%Y-%m-%d")
        name = f"{MEMORY_DIR}/{day}-{_slug(text)}-{key}.md"
        line = f"- [{_title(text)}]({name})\n"
        try:
            await self._drive.write(ref, name, iterate_bytes((text + "\n").encode()), actor)
            async with self._locks.setdefault(agent.id, anyio.Lock()):
                index = await self._index(ref)
                if f"]({name})" not in index:
                    if len(index.encode()) + len(line.encode()) > INDEX_MAX_BYTES:
                        return ToolOutcome(
                            f"remember: {MEMORY_INDEX} is over {INDEX_MAX_BYTES} bytes; tidy it "
                            f"(the memory was saved in /agent/{name})",
                            "error",
                            files=(ref.shown(name),),
                        )
                    index = index or _INDEX_HEADER
                    if not index.endswith("\n"):
                        index += "\n"
                    await self._drive.write(
                        ref, MEMORY_INDEX, iterate_bytes((index + line).encode()), actor
                    )
        except OpenbudaError as error:
            return ToolOutcome(f"remember: {error.message}", "error")
        return ToolOutcome(
            f"Remembered in /agent/{name} and listed in /agent/{MEMORY_INDEX}.",
            files=(ref.shown(name), ref.shown(MEMORY_INDEX)),
        )

    async def _index(self, ref: DriveRef) -> str:
        try:
            _found, data = await self._drive.read(ref, MEMORY_INDEX, max_bytes=INDEX_MAX_BYTES)
        except NotFound:
            return ""
        return data.decode(errors="replace")
