"""The agent's computer tools: ``shell``, ``read_file``, ``write_file``, ``edit_file`` and
``list_files`` (API.md, Built-in agent tools).

Each tool runs in the agent's own computer (``Computers.get``), seen through the session's view
(``Computers.view_for``): its own ``/session``, and ``/agent`` and ``/space`` read-only in the
sessions of external users unless the agent lets them write. Paths follow the sandbox rules: a
relative path is under ``/agent``; an absolute one lies in ``/agent``, ``/space``, ``/session``
or ``/tmp``.

``shell`` streams its output live (ephemeral ``tool.output`` events) and keeps at most
``STREAM_CAP`` bytes of each stream in its result: the head and the tail, with a marker in
between. When more was written, the whole output (stdout and stderr as they came, up to
``LOG_CAP``) is saved to ``/session/.outputs/<call_id>.log`` and the result says so.

Errors (a bad path, a missing file, a read-only mount, a computer that cannot start) are
``status="error"`` outcomes carrying the message: the model reads them and corrects itself.
``write_file`` and ``edit_file`` list the files they changed in ``/agent`` and ``/space``, so
that the task's result names them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from openbuda.computer._paths import parse_path
from openbuda.computer.manager import Computers
from openbuda.domain.conversation import ToolSpec
from openbuda.domain.errors import OpenbudaError, TooLarge, Unavailable
from openbuda.domain.records import AgentLimits
from openbuda.engine.tools import Tool, ToolContext, ToolOutcome
from openbuda.ports import (
    ExecRequest,
    ExecResult,
    FileEntry,
    LimitName,
    OutputStream,
    Sandbox,
    SandboxFiles,
    SandboxView,
)

__all__ = [
    "LOG_CAP",
    "READ_MAX_BYTES",
    "STREAM_CAP",
    "EditFileTool",
    "ListFilesTool",
    "ReadFileTool",
    "ShellTool",
    "WriteFileTool",
    "computer_tools",
    "describe_limit",
]

STREAM_CAP: Final = 16 * 1024
"""Bytes of each output stream that a ``shell`` result keeps (half head, half tail)."""
LOG_CAP: Final = 8 * 1024 * 1024
"""Bytes of output saved to the log file of a ``shell`` call."""
READ_MAX_BYTES: Final = 60_000
"""The largest file ``read_file`` returns (a tool result is stored up to 64 KiB)."""
EDIT_MAX_BYTES: Final = 10 * 1024 * 1024
LIST_MAX_ENTRIES: Final = 1000
OUTPUTS_DIR: Final = "/session/.outputs"
log = logging.getLogger("openbuda.computer")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _error(error: OpenbudaError) -> ToolOutcome:
    return ToolOutcome(error.message, "error")


def _changed(entry: FileEntry) -> tuple[str, ...]:
    """The path when it is one the task's result lists (``/agent`` and ``/space``)."""
    return (entry.path,) if parse_path(entry.path).mount in ("agent", "space") else ()


@dataclass(frozen=True, slots=True)
class _ComputerTool:
    computers: Computers
    uses_computer = True
    """The agent's tasks are claimed where its computer lives (``engine.tools.uses_computer``)."""

    async def _open(self, context: ToolContext) -> tuple[Sandbox, SandboxView]:
        """The agent's computer and the session's view of it (``Unavailable``: it cannot
        start; ``Forbidden``: this backend does not serve the session)."""
        view = self.computers.view_for(context.agent, context.session)
        try:
            return await self.computers.get(context.agent), view
        except OpenbudaError:
            raise
        except Exception as error:
            log.exception("the computer of %r cannot start", context.agent.id)
            raise Unavailable(f"the computer cannot start: {error}") from error

    async def _files(self, context: ToolContext) -> SandboxFiles:
        sandbox, view = await self._open(context)
        return sandbox.files(view)


def _spec(name: str, description: str, properties: dict[str, Any], *required: str) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=description,
        parameters={"type": "object", "properties": properties, "required": list(required)},
    )


_PATH_HELP = (
    "A relative path is under /agent (your persistent files); absolute paths may be in /agent, "
    "/space (shared with the space's other agents), /session (this conversation's scratch) "
    "or /tmp."
)


# ---------------------------------------------------------------------------------------------
# shell


def describe_limit(limit: LimitName, limits: AgentLimits, timeout_s: float) -> str:
    """What a ``limit`` of an ``ExecResult`` means, with the agent's value."""
    match limit:
        case "memory":
            return f"memory limit {limits.memory_mb} MB"
        case "pids":
            return f"process limit {limits.pids}"
        case "cpu":
            return "CPU limit"
        case "file_size":
            return f"file size limit {limits.file_size_mb} MB"
        case "open_files":
            return "open files limit"
        case "tmp":
            return f"/tmp size limit {limits.tmp_mb} MB"
        case "disk":
            return f"disk limit {limits.disk_mb} MB of /agent"
        case "timeout":
            return f"timeout {timeout_s:g} s"


class _Stream:
    """One output stream: the first and last bytes of it, and how many there were."""

    __slots__ = ("head", "tail", "total")

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = STREAM_CAP // 2 - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > STREAM_CAP:
                del self.tail[: len(self.tail) - STREAM_CAP // 2]

    def render(self, saved_to: str | None) -> str:
        if self.total <= STREAM_CAP:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", errors="replace")
        tail = bytes(self.tail[-(STREAM_CAP // 2) :])
        omitted = self.total - len(self.head) - len(tail)
        where = f"; the whole output is in {saved_to}" if saved_to else ""
        head_text = bytes(self.head).decode("utf-8", errors="ignore")
        tail_text = tail.decode("utf-8", errors="ignore")
        return f"{head_text}\n… [{omitted} bytes omitted{where}] …\n{tail_text}"


class _Output:
    """Collects a command's output as it streams (the live events are sent by the caller)."""

    def __init__(self) -> None:
        self.streams: dict[OutputStream, _Stream] = {"stdout": _Stream(), "stderr": _Stream()}
        self.log: list[bytes] = []
        self.logged = 0

    def feed(self, stream: OutputStream, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        self.streams[stream].feed(data)
        if self.logged < LOG_CAP:
            kept = data[: LOG_CAP - self.logged]
            self.log.append(kept)
            self.logged += len(kept)

    @property
    def total(self) -> int:
        return sum(stream.total for stream in self.streams.values())

    @property
    def capped(self) -> bool:
        return any(stream.total > STREAM_CAP for stream in self.streams.values())

    def log_bytes(self) -> bytes:
        data = b"".join(self.log)
        if self.total > self.logged:
            data += f"\n… [{self.total - self.logged} more bytes not saved]\n".encode()
        return data


def _log_name(call_id: str) -> str:
    name = _SAFE_NAME.sub("_", call_id)[:100].strip(".") or "call"
    return f"{OUTPUTS_DIR}/{name}.log"


def _shell_text(
    result: ExecResult, output: _Output, limits: AgentLimits, timeout_s: float, saved: str | None
) -> str:
    if result.limit is not None:
        head = f"exit code {result.exit_code} (killed: {describe_limit(result.limit, limits, timeout_s)})"
    elif result.timed_out:
        head = f"exit code {result.exit_code} (killed: timeout {timeout_s:g} s)"
    else:
        head = f"exit code {result.exit_code}"
    parts = [head]
    for name in ("stdout", "stderr"):
        stream = output.streams[name]
        if stream.total:
            parts.append(f"--- {name} ---\n{stream.render(saved).rstrip(chr(10))}")
    if not output.total:
        parts.append("(no output)")
    if saved is not None:
        parts.append(f"(the whole output, {output.total} bytes, is saved in {saved})")
    return "\n".join(parts)


class ShellTool(_ComputerTool):
    """``shell {command, timeout_s?}``: run a command with ``bash -c`` in ``/agent``."""

    @property
    def spec(self) -> ToolSpec:
        return _spec(
            "shell",
            "Run a shell command (bash -c) in your computer, a Linux machine with bash, "
            "coreutils, python3 and git. The working directory is /agent, your persistent "
            "files; /session is this conversation's scratch, /tmp is cleared on restart. "
            "Background processes (`cmd &`) keep running between calls. Returns the exit code "
            "and the output (long output is cut in the middle and saved to a file).",
            {
                "command": {"type": "string", "description": "The command line."},
                "timeout_s": {
                    "type": "number",
                    "description": "Seconds before the command is killed (default and maximum: "
                    "the agent's exec timeout).",
                },
            },
            "command",
        )

    @property
    def idempotent(self) -> bool:
        return False

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        command = str(args["command"])
        if not command.strip():
            return ToolOutcome("shell: the command is empty", "error")
        limits = context.agent.settings.limits
        timeout_s: float = float(limits.exec_timeout_s)
        requested = args.get("timeout_s")
        if requested is not None:
            if not isinstance(requested, int | float) or requested <= 0:
                return ToolOutcome("shell: timeout_s must be a positive number", "error")
            timeout_s = min(float(requested), timeout_s)
        try:
            sandbox, view = await self._open(context)
        except OpenbudaError as error:
            return _error(error)
        output = _Output()

        async def on_output(stream: OutputStream, text: str) -> None:
            output.feed(stream, text)
            await context.emit_output(stream, text)

        request = ExecRequest(command, view=view, timeout_s=timeout_s, capture_bytes=0)
        try:
            result = await sandbox.exec(request, on_output)
        except OpenbudaError as error:
            return _error(error)
        saved: str | None = None
        if output.capped:
            saved = await self._save_log(sandbox.files(view), context.call_id, output)
        text = _shell_text(result, output, limits, timeout_s, saved)
        failed = result.limit is not None or result.timed_out
        return ToolOutcome(text, "error" if failed else "ok")

    async def _save_log(self, files: SandboxFiles, call_id: str, output: _Output) -> str | None:
        path = _log_name(call_id)
        try:
            entry = await files.write(path, output.log_bytes())
        except OpenbudaError:
            return None
        return entry.path


# ---------------------------------------------------------------------------------------------
# files


class ReadFileTool(_ComputerTool):
    """``read_file {path}``: a text file's content."""

    @property
    def spec(self) -> ToolSpec:
        return _spec(
            "read_file",
            f"Read a text file. {_PATH_HELP} Files over {READ_MAX_BYTES} bytes and binary "
            "files are refused: use shell (head, sed -n, grep, xxd) for those.",
            {"path": {"type": "string", "description": "The file to read."}},
            "path",
        )

    @property
    def idempotent(self) -> bool:
        return True

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        path = shown = str(args["path"])
        try:
            shown = str(parse_path(path))
            files = await self._files(context)
            data = await files.read(path, max_bytes=READ_MAX_BYTES)
        except TooLarge as error:
            size = error.details.get("size")
            has = f"has {size} bytes" if isinstance(size, int) else "is too large"
            return ToolOutcome(
                f"{shown!r} {has}, more than read_file returns ({READ_MAX_BYTES} bytes): read "
                "parts of it with shell (head -c, sed -n '1,200p', grep)",
                "error",
            )
        except OpenbudaError as error:
            return _error(error)
        text = _text(data)
        if text is None:
            return ToolOutcome(
                f"{shown!r} is a binary file ({len(data)} bytes): inspect it with shell "
                "(file, xxd | head)",
                "error",
            )
        return ToolOutcome(text if text else f"({shown} is empty)")


def _text(data: bytes) -> str | None:
    """``data`` as text; ``None`` when it is binary (a NUL byte, or not UTF-8)."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class WriteFileTool(_ComputerTool):
    """``write_file {path, content}``: create or replace a file (parents created)."""

    @property
    def spec(self) -> ToolSpec:
        return _spec(
            "write_file",
            f"Create or replace a text file with `content`; missing directories are created. "
            f"{_PATH_HELP}",
            {
                "path": {"type": "string", "description": "The file to write."},
                "content": {"type": "string", "description": "The whole new content."},
            },
            "path",
            "content",
        )

    @property
    def idempotent(self) -> bool:
        return True

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        path = str(args["path"])
        data = str(args["content"]).encode("utf-8", errors="replace")
        limit_mb = context.agent.settings.limits.file_size_mb
        if len(data) > limit_mb * 1024 * 1024:
            return ToolOutcome(
                f"write_file: {len(data)} bytes is more than the file size limit ({limit_mb} MB)",
                "error",
            )
        try:
            files = await self._files(context)
            entry = await files.write(path, data)
        except OpenbudaError as error:
            return _error(error)
        return ToolOutcome(f"wrote {entry.path} ({entry.size} bytes)", files=_changed(entry))


class EditFileTool(_ComputerTool):
    """``edit_file {path, old, new}``: replace the one exact occurrence of ``old``."""

    @property
    def spec(self) -> ToolSpec:
        return _spec(
            "edit_file",
            "Replace an exact piece of text in a file: `old` must appear exactly once (include "
            f"enough surrounding lines to make it unique). {_PATH_HELP}",
            {
                "path": {"type": "string", "description": "The file to change."},
                "old": {"type": "string", "description": "The exact text to replace."},
                "new": {"type": "string", "description": "The text to put in its place."},
            },
            "path",
            "old",
            "new",
        )

    @property
    def idempotent(self) -> bool:
        return False

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        path, old, new = str(args["path"]), str(args["old"]), str(args["new"])
        shown = path
        if not old:
            return ToolOutcome("edit_file: `old` is empty; give the exact text to replace", "error")
        if old == new:
            return ToolOutcome(
                "edit_file: `old` and `new` are the same; nothing to change", "error"
            )
        try:
            shown = str(parse_path(path))
            files = await self._files(context)
            data = await files.read(path, max_bytes=EDIT_MAX_BYTES)
        except TooLarge:
            return ToolOutcome(
                f"edit_file: {path!r} is larger than {EDIT_MAX_BYTES} bytes; edit it with shell",
                "error",
            )
        except OpenbudaError as error:
            return _error(error)
        text = _text(data)
        if text is None:
            return ToolOutcome(f"edit_file: {shown!r} is a binary file", "error")
        count = text.count(old)
        if count == 0:
            return ToolOutcome(
                f"edit_file: the text of `old` does not appear in {shown} (check whitespace, "
                "indentation and line breaks; read_file shows the current content)",
                "error",
            )
        if count > 1:
            return ToolOutcome(
                f"edit_file: the text of `old` appears {count} times in {shown}; include more "
                "surrounding lines so that it appears exactly once",
                "error",
            )
        try:
            entry = await files.write(path, text.replace(old, new, 1).encode())
        except OpenbudaError as error:
            return _error(error)
        return ToolOutcome(f"edited {entry.path} ({entry.size} bytes)", files=_changed(entry))


class ListFilesTool(_ComputerTool):
    """``list_files {path?}``: the entries of a directory (default ``/agent``)."""

    @property
    def spec(self) -> ToolSpec:
        return _spec(
            "list_files",
            f"List a directory (default /agent); directories end with '/'. {_PATH_HELP}",
            {"path": {"type": "string", "description": "The directory to list."}},
        )

    @property
    def idempotent(self) -> bool:
        return True

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        path = str(args.get("path") or "/agent")
        try:
            shown = str(parse_path(path))
            files = await self._files(context)
            entries = await files.list(path)
        except OpenbudaError as error:
            return _error(error)
        if not entries:
            return ToolOutcome(f"{shown}/ is empty")
        entries.sort(key=lambda entry: (entry.kind != "dir", entry.path))
        lines = [f"{shown}/"]
        for entry in entries[:LIST_MAX_ENTRIES]:
            name = entry.path.rsplit("/", 1)[-1]
            match entry.kind:
                case "dir":
                    lines.append(f"  {name}/")
                case "file":
                    lines.append(f"  {name}  ({entry.size} bytes)")
                case "symlink":
                    lines.append(f"  {name}@  (symbolic link)")
                case _:
                    lines.append(f"  {name}  (special file)")
        if len(entries) > LIST_MAX_ENTRIES:
            lines.append(f"  … and {len(entries) - LIST_MAX_ENTRIES} more")
        return ToolOutcome("\n".join(lines))


ToolFactory = Callable[[Computers], Tool]
_TOOLS: Final[tuple[ToolFactory, ...]] = (
    ShellTool,
    ReadFileTool,
    WriteFileTool,
    EditFileTool,
    ListFilesTool,
)


def computer_tools(computers: Computers) -> list[Tool]:
    """The built-in tools that work in the agents' computers."""
    return [make(computers) for make in _TOOLS]
