"""Host-side file access beneath a root directory that never follows a symbolic link.

The files of a computer belong to its agent, who can put a symlink, a FIFO or a hard link
anywhere in them. The host therefore never joins a user path onto a directory and opens it:
it walks from the root's descriptor one name at a time with ``O_NOFOLLOW`` (a symlink, even one
pointing inside, is refused), opens only regular files, non-blocking (a FIFO cannot stall it),
and replaces files by writing a new one and renaming it over the old (a hard link to some other
file is never written through). A root may be *pinned* to the filesystem it is on: every access
then fails (``Unavailable``) once another one is there, as when a computer's disk image was
unmounted and the empty directory beneath shows through.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from openbuda.domain.errors import InvalidPath, NotFound, TooLarge, Unavailable

__all__ = ["HostRoot", "Owner"]

Owner = tuple[int, int]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TMP_PREFIX = ".openbuda-write-"
_KEEP_OPEN: Final = 64
"""How many directory levels a scan keeps descriptors of; deeper ones are reopened from there."""
ScanEntry = tuple[tuple[str, ...], os.stat_result]


def _kind(mode: int) -> Literal["file", "dir", "symlink", "other"]:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, UTC)


def _path_bytes(parts: Sequence[str]) -> int:
    return sum(len(name.encode(errors="surrogateescape")) for name in parts) + len(parts) - 1


def _as_link_error(exc: OSError, name: str, dir_fd: int) -> OSError:
    """``O_DIRECTORY | O_NOFOLLOW`` on a symlink fails with ``ENOTDIR``: say it is a link."""
    if exc.errno != errno.ENOTDIR:
        return exc
    try:
        is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return exc
    return OSError(errno.ELOOP, os.strerror(errno.ELOOP)) if is_link else exc


class HostRoot:
    """One directory tree (a computer's ``/agent``, ``/space``, ``/session`` or ``/tmp``).

    ``display`` is the sandbox path of the root, used in messages (``/agent``). ``owner`` is the
    host uid and gid that new files and directories get (the agent's sandbox user). ``shared``
    makes them group-writable with the directory's group kept (``/space``, whose group is the
    space's: every agent of the space can change what the API wrote).
    """

    def __init__(
        self,
        root: Path,
        display: str,
        *,
        owner: Owner | None = None,
        shared: bool = False,
        device: int | None = None,
    ) -> None:
        self.root = root
        self.display = display
        self.owner = owner
        self.shared = shared
        self.device = device
        self.file_mode = 0o660 if shared else 0o644
        self.dir_mode = 0o2770 if shared else 0o755

    def pinned(self) -> HostRoot:
        """This root bound to the filesystem it is on now (blocking): see the module docstring."""
        try:
            device = os.stat(self.root).st_dev
        except FileNotFoundError:
            raise NotFound(f"{self.display!r} does not exist") from None
        return HostRoot(
            self.root, self.display, owner=self.owner, shared=self.shared, device=device
        )

    # -- walking ----------------------------------------------------------------------------

    def _shown(self, parts: Sequence[str]) -> str:
        return "/".join((self.display, *parts))

    @contextmanager
    def _directory(self, parts: Sequence[str], *, create: bool = False) -> Generator[int]:
        """A descriptor of the directory ``parts`` below the root, walked without following."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"{self.display!r} does not exist") from None
        try:
            if self.device is not None and os.fstat(fd).st_dev != self.device:
                raise Unavailable(f"{self.display!r} is not mounted (the computer stopped)")
            for index, name in enumerate(parts):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise NotFound(
                            f"{self._shown(parts[: index + 1])!r} does not exist"
                        ) from None
                    try:
                        os.mkdir(name, 0o700, dir_fd=fd)
                    except FileExistsError:
                        created = False
                    else:
                        created = True
                    child = self._open_dir_entry(fd, parts[: index + 1])
                    if created:  # through the descriptor: the name may be a link by now
                        if self.owner is not None:
                            os.fchown(child, *self.owner)
                        os.fchmod(child, self.dir_mode)
                except OSError as exc:
                    raise self._refused(_as_link_error(exc, name, fd), parts[: index + 1]) from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _open_dir_entry(self, parent: int, parts: Sequence[str]) -> int:
        try:
            return os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise self._refused(_as_link_error(exc, parts[-1], parent), parts) from None

    def _refused(self, exc: OSError, parts: Sequence[str]) -> Exception:
        shown = self._shown(parts)
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            return InvalidPath(
                f"{shown!r} is a symbolic link; links are not followed", details={"path": shown}
            )
        if exc.errno == errno.ENXIO:  # a socket: nothing to read from the host side
            return InvalidPath(f"{shown!r} is not a regular file", details={"path": shown})
        if exc.errno == errno.ENOTDIR:
            return InvalidPath(f"{shown!r} is not a directory", details={"path": shown})
        if exc.errno == errno.ENOENT:
            return NotFound(f"{shown!r} does not exist")
        if exc.errno == errno.EISDIR:
            return InvalidPath(f"{shown!r} is a directory", details={"path": shown})
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return InvalidPath(f"{shown!r} cannot be written", details={"path": shown})
        if exc.errno == errno.ENOSPC:
            return TooLarge(f"no space left for {shown!r}")
        return exc

    # -- operations (blocking; callers run them in a thread) ----------------------------------

    def open_file(self, parts: Sequence[str]) -> int:
        """A read-only descriptor of the regular file ``parts`` (the caller closes it)."""
        if not parts:
            raise InvalidPath(f"{self.display!r} is a directory", details={"path": self.display})
        with self._directory(parts[:-1]) as parent:
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=parent)
            except OSError as exc:
                raise self._refused(exc, parts) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise InvalidPath(
                    f"{self._shown(parts)!r} is a directory", details={"path": self._shown(parts)}
                )
            if not stat.S_ISREG(st.st_mode):
                raise InvalidPath(
                    f"{self._shown(parts)!r} is not a regular file",
                    details={"path": self._shown(parts)},
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, parts: Sequence[str], max_bytes: int | None = None) -> bytes:
        fd = self.open_file(parts)
        try:
            size = os.fstat(fd).st_size
            if max_bytes is not None and size > max_bytes:
                raise TooLarge(
                    f"{self._shown(parts)!r} has {size} bytes, more than {max_bytes}",
                    details={"size": size, "max_bytes": max_bytes},
                )
            chunks: list[bytes] = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, parts: Sequence[str], data: bytes) -> os.stat_result:
        """Replace the file atomically (a new inode renamed over the old one)."""
        return self.replace(parts, (data,))

    def replace(self, parts: Sequence[str], chunks: Iterable[bytes]) -> os.stat_result:
        """Replace the file atomically with the content of ``chunks``, streamed: it is written
        to a new file renamed over the old one once complete and synced, so a writer that fails
        or is killed half-way leaves the old file as it was."""
        if not parts:
            raise InvalidPath(f"{self.display!r} is a directory", details={"path": self.display})
        with self._directory(parts[:-1], create=True) as parent:
            name = parts[-1]
            try:
                existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise InvalidPath(
                    f"{self._shown(parts)!r} is a directory", details={"path": self._shown(parts)}
                )
            if existing is not None and stat.S_ISLNK(existing.st_mode):
                raise InvalidPath(
                    f"{self._shown(parts)!r} is a symbolic link; links are not followed",
                    details={"path": self._shown(parts)},
                )
            temp = f"{_TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
            try:
                fd = os.open(
                    temp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=parent,
                )
            except OSError as exc:
                raise self._refused(exc, parts) from None
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fsync(fd)
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                os.fchmod(fd, self.file_mode)
                st = os.fstat(fd)
            except BaseException as exc:
                os.close(fd)
                os.unlink(temp, dir_fd=parent)
                if isinstance(exc, OSError):
                    raise self._refused(exc, parts) from None
                raise
            os.close(fd)
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            return st

    def scan(
        self, keep: Callable[[str], bool], *, max_path_bytes: int | None = None
    ) -> Iterator[ScanEntry]:
        """Every regular file below the root with its ``lstat``, walked by directory descriptors
        without following links (links, FIFOs, sockets and devices are skipped).

        ``keep`` decides on each name (a directory it refuses is not entered); directories whose
        path passes ``max_path_bytes`` are not entered. A directory that vanishes or turns into
        something else while walked is skipped (what it held is gone); one that cannot be read
        raises ``OSError`` naming it (what it holds is not gone).
        """
        with self._directory(()) as root:
            files, dirs = self._scan_dir(root, (), keep)
            yield from files
            # (descriptor or None past _KEEP_OPEN levels, parts, subdirectories left to visit)
            stack: list[tuple[int | None, tuple[str, ...], list[str]]] = [(root, (), dirs)]
            try:
                while stack:
                    fd, parts, pending = stack[-1]
                    if not pending:
                        stack.pop()
                        if fd is not None and fd != root:
                            os.close(fd)
                        continue
                    child_parts = (*parts, pending.pop())
                    if max_path_bytes is not None and _path_bytes(child_parts) >= max_path_bytes:
                        continue
                    child = self._open_below(stack, child_parts)
                    if child is None:
                        continue
                    try:
                        files, dirs = self._scan_dir(child, child_parts, keep)
                    except BaseException:
                        os.close(child)
                        raise
                    if len(child_parts) > _KEEP_OPEN:
                        os.close(child)
                        stack.append((None, child_parts, dirs))
                    else:
                        stack.append((child, child_parts, dirs))
                    yield from files
            finally:
                for fd, _parts, _pending in stack:
                    if fd is not None and fd != root:
                        os.close(fd)

    def _open_below(
        self,
        stack: Sequence[tuple[int | None, tuple[str, ...], list[str]]],
        parts: tuple[str, ...],
    ) -> int | None:
        """A descriptor of the directory ``parts`` from its nearest open ancestor on ``stack``;
        ``None`` when it vanished or is no directory now."""
        fd, start = next((fd, p) for fd, p, _ in reversed(stack) if fd is not None)
        names = parts[len(start) :]
        current = fd
        try:
            for name in names:
                try:
                    opened = os.open(name, _DIR_FLAGS, dir_fd=current)
                except (FileNotFoundError, NotADirectoryError):
                    return None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        return None
                    raise OSError(exc.errno, exc.strerror, self._shown(parts)) from None
                if current != fd:
                    os.close(current)
                current = opened
        except BaseException:
            if current != fd:
                os.close(current)
            raise
        return current

    def _scan_dir(
        self, fd: int, parts: tuple[str, ...], keep: Callable[[str], bool]
    ) -> tuple[list[ScanEntry], list[str]]:
        files: list[ScanEntry] = []
        dirs: list[str] = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(_TMP_PREFIX) or not keep(name):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            dirs.append(name)
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            if stat.S_ISREG(st.st_mode):
                                files.append(((*parts, name), st))
                    except FileNotFoundError:
                        continue
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                return [], []
            raise OSError(exc.errno, exc.strerror, self._shown(parts)) from None
        dirs.sort(reverse=True)  # popped from the end: visited in name order
        return files, dirs

    def stat(self, parts: Sequence[str]) -> os.stat_result | None:
        try:
            if not parts:
                with self._directory(()) as fd:
                    return os.fstat(fd)
            with self._directory(parts[:-1]) as parent:
                return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except (NotFound, FileNotFoundError):
            return None

    def list(self, parts: Sequence[str]) -> list[tuple[str, os.stat_result]]:
        with self._directory(parts) as fd:
            entries: list[tuple[str, os.stat_result]] = []
            for name in sorted(os.listdir(fd)):
                if name.startswith(_TMP_PREFIX):
                    continue
                try:
                    entries.append((name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
                except FileNotFoundError:
                    continue
            return entries

    def remove(self, parts: Sequence[str]) -> bool:
        """Remove a file, a link or an empty directory (the link itself, never its target)."""
        if not parts:
            raise InvalidPath(f"{self.display!r} cannot be removed", details={"path": self.display})
        try:
            with self._directory(parts[:-1]) as parent:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(parts[-1], dir_fd=parent)
                else:
                    os.unlink(parts[-1], dir_fd=parent)
                return True
        except (NotFound, FileNotFoundError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise InvalidPath(
                    f"{self._shown(parts)!r} is a directory that is not empty",
                    details={"path": self._shown(parts)},
                ) from None
            raise self._refused(exc, parts) from None

    def kind(self, st: os.stat_result) -> Literal["file", "dir", "symlink", "other"]:
        return _kind(st.st_mode)

    def modified_at(self, st: os.stat_result) -> datetime:
        return _mtime(st)

    def usage(self) -> tuple[int, int]:
        """Bytes and file count of the whole tree (``lstat`` only, links not followed)."""
        total = files = 0
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            for name in filenames:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                total += st.st_blocks * 512
                files += 1
            for name in dirnames:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except FileNotFoundError:
                    continue
        return total, files
