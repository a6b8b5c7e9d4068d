"""Tools for tests: they record every execution so tests can check what ran, and how often."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from openbuda.domain.conversation import ToolSpec
from openbuda.engine.tools import ToolContext, ToolOutcome

__all__ = ["RecordingTool", "append_line"]


@dataclass
class RecordingTool:
    """A tool named ``name`` that answers ``echo: <text>`` and records each run.

    Each run is appended to ``calls`` (in memory) and, when ``log_path`` is given, as one line
    ``<idempotency key> <text>`` to that file, flushed and fsynced before the tool returns, so
    that a test can count executions across processes that were killed.
    """

    name: str = "record"
    idempotent: bool = False
    delay_s: float = 0.0
    log_path: Path | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(
        default_factory=list[tuple[str, dict[str, Any]]]
    )

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name,
            description="Record a line of text and echo it back.",
            parameters={
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        )

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        text = str(args["text"])
        self.calls.append((context.idempotency_key, args))
        if self.log_path is not None:
            line = f"{context.idempotency_key} {text}\n".encode()
            await anyio.to_thread.run_sync(append_line, self.log_path, line)
        await context.emit_output("stdout", text)
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        return ToolOutcome(f"echo: {text}")


def append_line(path: Path, line: bytes) -> None:
    """One ``O_APPEND`` write and an fsync: a line that survives a kill right after it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
