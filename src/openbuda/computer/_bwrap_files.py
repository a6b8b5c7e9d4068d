"""Host-side file access to a bubblewrap computer: ``SandboxFiles`` of a view.

``/agent``, ``/space`` and ``/session`` are host directories (``HostRoot``). A view's ``/tmp``
lives on the sandbox's own tmpfs and is reached through ``/proc/<sandbox init>/root/tmp/.s/
<session>``: a path only the daemon writes (no command can reach ``/tmp/.s``, sessions see
their own directory mounted on ``/tmp``); below it ``HostRoot`` walks without following links.
That tmpfs belongs to the sandbox's user namespace, where the kernel lets only ids mapped into
it create files: a root server therefore works there with the calling thread's file-system
uid and gid set to the sandbox's host ids (``setfsuid`` is per thread, restored after each call).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Awaitable, Callable, Generator, Sequence
from contextlib import contextmanager
from pathlib import Path

from openbuda.computer._files import HostFiles, RootsFor
from openbuda.computer._hostfs import HostRoot
from openbuda.computer._paths import Mount, parse_path
from openbuda.ports import FileEntry, SandboxView

__all__ = ["SandboxTmpRoot", "ViewFiles"]

_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def _file_ids(uid: int, gid: int) -> Generator[None]:
    """This thread's file-system ids set to ``uid``/``gid`` for the block."""
    old_gid = _libc.setfsgid(gid)
    old_uid = _libc.setfsuid(uid)
    try:
        if _libc.setfsuid(-1) != uid or _libc.setfsgid(-1) != gid:
            raise PermissionError(f"cannot act as uid {uid} on the computer's /tmp")
        yield
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)


class SandboxTmpRoot(HostRoot):
    """A view's ``/tmp`` on the sandbox's tmpfs; ``ids`` (root servers) are the sandbox's."""

    def __init__(self, root: Path, ids: tuple[int, int] | None) -> None:
        super().__init__(root, "/tmp")
        self._ids = ids

    @contextmanager
    def _acting(self) -> Generator[None]:
        if self._ids is None:
            yield
        else:
            with _file_ids(*self._ids):
                yield

    def read(self, parts: Sequence[str], max_bytes: int | None = None) -> bytes:
        with self._acting():
            return super().read(parts, max_bytes)

    def write(self, parts: Sequence[str], data: bytes) -> os.stat_result:
        with self._acting():
            return super().write(parts, data)

    def stat(self, parts: Sequence[str]) -> os.stat_result | None:
        with self._acting():
            return super().stat(parts)

    def list(self, parts: Sequence[str]) -> list[tuple[str, os.stat_result]]:
        with self._acting():
            return super().list(parts)

    def remove(self, parts: Sequence[str]) -> bool:
        with self._acting():
            return super().remove(parts)

    def usage(self) -> tuple[int, int]:
        with self._acting():
            return super().usage()


class ViewFiles:
    """``SandboxFiles`` of one view: each call first gets the view's roots from ``roots_for``
    (which wakes or starts the computer and prepares the mount), then uses ``HostFiles``."""

    def __init__(
        self, roots_for: Callable[[SandboxView, Mount], Awaitable[RootsFor]], view: SandboxView
    ) -> None:
        self._roots_for = roots_for
        self._view = view

    async def _files(self, path: str) -> HostFiles:
        roots = await self._roots_for(self._view, parse_path(path).mount)
        return HostFiles(roots, self._view)

    async def read(self, path: str, max_bytes: int | None = None) -> bytes:
        return await (await self._files(path)).read(path, max_bytes)

    async def write(self, path: str, data: bytes) -> FileEntry:
        return await (await self._files(path)).write(path, data)

    async def list(self, path: str = "/agent") -> list[FileEntry]:
        return await (await self._files(path)).list(path)

    async def stat(self, path: str) -> FileEntry | None:
        return await (await self._files(path)).stat(path)

    async def remove(self, path: str) -> bool:
        return await (await self._files(path)).remove(path)
