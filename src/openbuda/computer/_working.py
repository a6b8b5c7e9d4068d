"""``WorkingCopy`` over a host directory: a Drive's files as a computer sees them.

Built on ``HostRoot``, so nothing follows a link the agent made: the scan walks directory
descriptors and skips links, FIFOs, sockets and devices; reads open regular files only with
``O_NOFOLLOW``; writes replace files atomically (a new inode renamed over the old one), so a
writer killed half-way leaves the previous content. The root is pinned to the filesystem it was
on when the copy was made (``HostRoot.pinned``): should the computer's disk image be unmounted
meanwhile, every call fails instead of seeing an empty directory (every file deleted).

Names that are no Drive path (``domain.drive.drive_path`` refuses them, they are not in NFC,
or they are not UTF-8) are left out of the scan: Drive could not hold them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import BinaryIO, Final

from openbuda.computer._hostfs import HostRoot
from openbuda.domain.drive import MAX_NAME_BYTES, MAX_PATH_BYTES, drive_path
from openbuda.domain.errors import InvalidPath, NotFound
from openbuda.ports import WorkingFile

__all__ = ["HostWorkingCopy", "drive_name"]

log = logging.getLogger("openbuda.drive")

_LOGGED_MAX: Final = 1000
"""Skipped names are logged once each, up to this many per working copy."""


def drive_name(name: str) -> bool:
    """Whether ``name`` can be one segment of a Drive path as it is (checked and NFC)."""
    if name.isascii():  # the common case, without drive_path's per-character checks
        return (
            name.isprintable()
            and name not in (".", "..")
            and "\\" not in name
            and len(name) <= MAX_NAME_BYTES
        )
    try:
        name.encode()  # a name that is not UTF-8 holds surrogate escapes
        return drive_path(name) == name and "/" not in name
    except (InvalidPath, UnicodeError):
        return False


def _working_file(st: os.stat_result) -> WorkingFile:
    return WorkingFile(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


class HostWorkingCopy:
    """A Drive's working copy in a host directory; every call blocks (run it in a thread)."""

    def __init__(self, root: HostRoot) -> None:
        self._root = root
        self._logged: set[str] = set()

    @classmethod
    def pinned(cls, root: HostRoot) -> HostWorkingCopy:
        """The working copy of ``root`` pinned to the filesystem it is on now (blocking)."""
        return cls(root.pinned())

    @property
    def root(self) -> HostRoot:
        return self._root

    def _keep(self, name: str) -> bool:
        if drive_name(name):
            return True
        if len(self._logged) < _LOGGED_MAX and name not in self._logged:
            self._logged.add(name)
            log.debug("%s: skipping %r, which is no valid Drive name", self._root.display, name)
        return False

    def scan(self) -> dict[str, WorkingFile]:
        found: dict[str, WorkingFile] = {}
        for parts, st in self._root.scan(self._keep, max_path_bytes=MAX_PATH_BYTES):
            path = "/".join(parts)
            if len(path.encode()) <= MAX_PATH_BYTES:
                found[path] = _working_file(st)
        return found

    def _parts(self, path: str) -> list[str]:
        if drive_path(path) != path:
            raise InvalidPath(f"{path!r} is not a normalised Drive path", details={"path": path})
        return path.split("/")

    def stat(self, path: str) -> WorkingFile | None:
        try:
            st = self._root.stat(self._parts(path))
        except InvalidPath:  # a link or a file where a folder should be
            return None
        if st is None or self._root.kind(st) != "file":
            return None
        return _working_file(st)

    def open_read(self, path: str) -> BinaryIO:
        try:
            fd = self._root.open_file(self._parts(path))
        except (NotFound, InvalidPath) as exc:
            raise FileNotFoundError(str(exc)) from None
        return os.fdopen(fd, "rb", buffering=0)

    def replace(self, path: str, chunks: Iterable[bytes]) -> WorkingFile:
        return _working_file(self._root.replace(self._parts(path), chunks))

    def remove(self, path: str) -> bool:
        """Remove the file or link at ``path`` (never a folder: ``False`` then)."""
        parts = self._parts(path)
        try:
            st = self._root.stat(parts)
        except InvalidPath:
            return False
        if st is None or self._root.kind(st) == "dir":
            return False
        return self._root.remove(parts)
