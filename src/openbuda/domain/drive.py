"""Drive: the durable, versioned files of an agent (the Agent Drive) and of a space (the Space
Drive), ARCHITECTURE §7.

A Drive maps paths to a history of versions. Every write, delete (a *tombstone*) and restore
adds a version, numbered per path from 1; content lives in a blob store addressed by its
sha256, so identical content is stored once. A version records who made it: a member, or an
agent with its task and session.

Paths (API.md, Drive) are relative, ``/``-separated and NFC-normalised; ``drive_path`` refuses
everything else with ``InvalidPath`` before anything touches a store.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from openbuda.domain.errors import InvalidPath

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MEMORY_INDEX",
    "Actor",
    "DriveFile",
    "DriveRef",
    "DriveVersion",
    "VersionOp",
    "drive_path",
    "drive_prefix",
]

MAX_PATH_BYTES: Final = 4096
MAX_NAME_BYTES: Final = 255
MEMORY_INDEX: Final = "MEMORY.md"
"""The memory index at the root of the Agent Drive, read into the context before each task."""

VersionOp = Literal["write", "delete", "restore"]
DriveMount = Literal["agent", "space"]

_LOOK_ALIKE_DOTS: Final = frozenset({".", ".."})


def _refuse(path: str, why: str) -> InvalidPath:
    shown = path.replace("\x00", "\\0")[:200]
    return InvalidPath(f"{shown!r}: {why}", details={"path": shown})


def drive_path(path: str) -> str:
    """The checked, NFC-normalised form of a Drive path; ``InvalidPath`` says what is wrong.

    Refused: empty, absolute, a backslash, NUL or another control character, U+FFFD, a segment
    that is empty, ``.`` or ``..`` (also after NFKC normalisation: fullwidth and leader-dot
    look-alikes), a segment over 255 bytes, a path over 4,096 bytes.
    """
    if not isinstance(path, str):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise InvalidPath("a path must be a string")
    if not path:
        raise InvalidPath("a path must not be empty", details={"path": path})
    if path.startswith("/"):
        raise _refuse(path, "a Drive path is relative (no leading '/')")
    if "\\" in path:
        raise _refuse(path, "backslashes are not allowed in paths")
    if "\ufffd" in path:
        raise _refuse(path, "U+FFFD (a character that could not be decoded) is not allowed")
    for char in path:
        if unicodedata.category(char) == "Cc":
            raise _refuse(path, f"control character U+{ord(char):04X} is not allowed")
    path = unicodedata.normalize("NFC", path)
    if len(path.encode()) > MAX_PATH_BYTES:
        raise _refuse(path, f"a path may be at most {MAX_PATH_BYTES} bytes long")
    for segment in path.split("/"):
        if not segment:
            raise _refuse(path, "empty segments ('//' or a trailing '/') are not allowed")
        if segment in _LOOK_ALIKE_DOTS or unicodedata.normalize("NFKC", segment) in (
            _LOOK_ALIKE_DOTS
        ):
            raise _refuse(path, "'.' and '..' segments are not allowed")
        if len(segment.encode()) > MAX_NAME_BYTES:
            raise _refuse(path, f"a name may be at most {MAX_NAME_BYTES} bytes long")
    return path


def drive_prefix(prefix: str | None) -> str:
    """A folder prefix for listings: ``""`` (the root) or a checked path ending in ``/``."""
    if prefix is None:
        return ""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    return drive_path(stripped) + "/"


@dataclass(frozen=True, slots=True)
class DriveRef:
    """Which Drive: an agent's (``agent_id``) or its space's (``agent_id`` None)."""

    space_id: str
    agent_id: str | None = None

    @property
    def key(self) -> str:
        """The ``drive`` column: the agent's id, or ``"space"``."""
        return self.agent_id or "space"

    @property
    def mount(self) -> DriveMount:
        """Where the Drive's working copy is mounted in a computer."""
        return "space" if self.agent_id is None else "agent"

    def shown(self, path: str) -> str:
        """The path as tools, results and ``drive.changed`` show it: ``/agent/<path>`` or
        ``/space/<path>``."""
        return f"/{self.mount}/{path}"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a version: a member (``member_id``), or an agent with its task and session."""

    member_id: str | None = None
    agent_id: str | None = None
    task_id: str | None = None
    session_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "agent_id": self.agent_id,
            "task_id": self.task_id,
            "session_id": self.session_id,
        }


@dataclass(frozen=True, slots=True)
class DriveVersion:
    """One version of one path. ``sha256`` is ``None`` for a tombstone (``op == "delete"``)."""

    path: str
    version: int
    op: VersionOp
    sha256: str | None
    size: int
    actor: Actor
    at: datetime
    change_seq: int
    """The Drive-wide order of changes: each version of any path of a Drive takes the next one."""
    restored_from: int | None = None

    @property
    def deleted(self) -> bool:
        return self.sha256 is None


@dataclass(frozen=True, slots=True)
class DriveFile:
    """The latest version of a path (``deleted`` when that is a tombstone)."""

    path: str
    version: int
    sha256: str | None
    size: int
    updated_at: datetime
    change_seq: int

    @property
    def deleted(self) -> bool:
        return self.sha256 is None
