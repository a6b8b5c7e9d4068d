"""Sandbox paths: what the agent and members name, checked before anything touches a disk.

A relative path is under ``/agent``; an absolute one must lie in one of the computer's mounts.
``..`` is refused rather than resolved, so a path means the same thing to everyone who checks
it. Names are normalised to Unicode NFC.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Final, Literal

from openbuda.domain.errors import InvalidPath

__all__ = ["MAX_NAME_BYTES", "MAX_PATH_BYTES", "MOUNTS", "Mount", "SandboxPath", "parse_path"]

Mount = Literal["agent", "space", "session", "tmp"]
MOUNTS: Final[tuple[Mount, ...]] = ("agent", "space", "session", "tmp")
MAX_PATH_BYTES: Final = 4096
MAX_NAME_BYTES: Final = 255


@dataclass(frozen=True, slots=True)
class SandboxPath:
    mount: Mount
    parts: tuple[str, ...]
    """The names below the mount's root; empty for the root itself."""

    def __str__(self) -> str:
        return "/" + "/".join((self.mount, *self.parts))

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else self.mount

    def child(self, name: str) -> SandboxPath:
        return SandboxPath(self.mount, (*self.parts, name))


def parse_path(path: str) -> SandboxPath:
    """The checked form of ``path``; ``InvalidPath`` says what is wrong with it."""
    if not isinstance(path, str):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise InvalidPath("a path must be a string")
    if "\x00" in path:
        raise InvalidPath(
            "a path must not contain a NUL character", details={"path": path.replace("\x00", "\\0")}
        )
    if "\\" in path:
        raise InvalidPath(f"{path!r}: backslashes are not allowed in paths", details={"path": path})
    if path != path.strip():
        raise InvalidPath(
            f"{path!r}: a path must not start or end with whitespace", details={"path": path[:200]}
        )
    path = unicodedata.normalize("NFC", path)
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidPath(
            f"a path may be at most {MAX_PATH_BYTES} bytes long", details={"path": path[:200]}
        )
    absolute = path.startswith("/")
    names = [name for name in path.split("/") if name not in ("", ".")]
    for name in names:
        if name == "..":
            raise InvalidPath(f"{path!r}: '..' is not allowed in paths", details={"path": path})
        if len(name.encode()) > MAX_NAME_BYTES:
            raise InvalidPath(
                f"{path!r}: a name may be at most {MAX_NAME_BYTES} bytes long",
                details={"path": path[:200]},
            )
    if not absolute:
        return SandboxPath("agent", tuple(names))
    if not names or names[0] not in MOUNTS:
        raise InvalidPath(
            f"{path!r} is outside the computer's files: use a path in /agent, /space, /session "
            "or /tmp (a relative path is under /agent)",
            details={"path": path},
        )
    mount: Mount = names[0]  # type: ignore[assignment]
    return SandboxPath(mount, tuple(names[1:]))
