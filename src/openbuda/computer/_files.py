"""``SandboxFiles`` over host directories: the one file API both backends serve."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping

import anyio.to_thread

from openbuda.computer._hostfs import HostRoot
from openbuda.computer._paths import Mount, SandboxPath, parse_path
from openbuda.domain.errors import InvalidPath
from openbuda.ports import FileEntry, SandboxView

__all__ = ["HostFiles", "RootsFor", "roots_from"]

RootsFor = Callable[[Mount], HostRoot | None]


class HostFiles:
    """The files of one computer as one view sees them.

    ``roots`` gives the host directory of each mount (``None``: the view has no such mount, as
    the members' console has no ``/session``). Before each call ``before`` runs (it wakes a
    sleeping computer).
    """

    def __init__(
        self,
        roots: RootsFor,
        view: SandboxView,
        *,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._roots = roots
        self._view = view
        self._before = before

    def _root(self, path: SandboxPath, *, write: bool = False) -> HostRoot:
        if write and not self._view.shared_writable and path.mount in ("agent", "space"):
            raise InvalidPath(
                f"'/{path.mount}' is read-only in this session", details={"path": str(path)}
            )
        root = self._roots(path.mount)
        if root is None:
            raise InvalidPath(
                f"'/{path.mount}' is not available here (only sessions have a /session)",
                details={"path": str(path)},
            )
        return root

    async def _ready(self) -> None:
        if self._before is not None:
            await self._before()

    def _entry(self, path: SandboxPath, root: HostRoot, st: os.stat_result) -> FileEntry:
        return FileEntry(
            path=str(path),
            kind=root.kind(st),
            size=st.st_size,
            modified_at=root.modified_at(st),
        )

    async def read(self, path: str, max_bytes: int | None = None) -> bytes:
        parsed = parse_path(path)
        root = self._root(parsed)
        await self._ready()
        return await anyio.to_thread.run_sync(root.read, parsed.parts, max_bytes)

    async def write(self, path: str, data: bytes) -> FileEntry:
        parsed = parse_path(path)
        root = self._root(parsed, write=True)
        await self._ready()
        st = await anyio.to_thread.run_sync(root.write, parsed.parts, data)
        return self._entry(parsed, root, st)

    async def list(self, path: str = "/agent") -> list[FileEntry]:
        parsed = parse_path(path)
        root = self._root(parsed)
        await self._ready()
        entries = await anyio.to_thread.run_sync(root.list, parsed.parts)
        return [self._entry(parsed.child(name), root, st) for name, st in entries]

    async def stat(self, path: str) -> FileEntry | None:
        parsed = parse_path(path)
        root = self._root(parsed)
        await self._ready()
        st = await anyio.to_thread.run_sync(root.stat, parsed.parts)
        return None if st is None else self._entry(parsed, root, st)

    async def remove(self, path: str) -> bool:
        parsed = parse_path(path)
        root = self._root(parsed, write=True)
        await self._ready()
        return await anyio.to_thread.run_sync(root.remove, parsed.parts)


def roots_from(mapping: Mapping[Mount, HostRoot | None]) -> RootsFor:
    return lambda mount: mapping.get(mount)
