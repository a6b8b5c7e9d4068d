"""The working-copy sync: a computer's ``/agent`` and ``/space`` are its Drives (ARCHITECTURE §7).

After every tool call (``after_tool``) what any program changed in the working copies becomes
versions by the agent, its task and session (*push*), then what others wrote to the Drives
since (the API, another computer) is written into them (*pull*); before every tool call
(``before_tool``) only the pull runs, which costs one query when nothing changed. Members'
console commands sync the same way (``sync_member``).

Change detection compares a scan of the working copy with an *index* kept next to it
(``drive-index.json`` in the agent's home, ``spaces/<space>.drive-index.json``): per path the
size, mtime and inode it had when last synced, its sha256 and Drive version, and the Drive's
``change_seq`` pulled through. Only paths whose stat differs are hashed; a path whose content is
as indexed only gets its new stat. An mtime within ``_RACY_NS`` of the scan could still be
shared by a later write of the same size (file times advance in coarse ticks): such an entry is
*racy* and hashed again at the next scan.

Conflicts keep both sides: a pull first checks that the file is as indexed; if the agent changed
it meanwhile it is left alone, and the next push makes the agent's content the newest version
(the other one stays in the history).

Only working copies of computers running in this process are synced, never one asleep (its
files cannot change; a pull that has something to write wakes it) or stopped; a computer
started or attached here syncs before its first use (``Computers.on_connect``). A working copy
is synced by one call at a time (a lock per Drive). Nothing here fails a task: a file over the
size limit or the quota is not saved (the model is told, and it is retried at the next sync);
any other failure is logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Final

import anyio
import anyio.from_thread
import anyio.to_thread

from openbuda.computer import ComputerLayout, Computers
from openbuda.domain.drive import Actor, DriveFile, DriveRef
from openbuda.domain.errors import (
    Forbidden,
    InvalidPath,
    LeaseLost,
    NotFound,
    OpenbudaError,
    TooLarge,
    Unavailable,
)
from openbuda.domain.records import Agent
from openbuda.engine.tools import FilesChanged, ToolContext
from openbuda.ports import BlobInfo, Sandbox, WorkingCopy, WorkingFile
from openbuda.service.drive import DriveService, too_large_file

__all__ = ["DriveSync", "IndexEntry", "SyncIndex", "compare", "hash_file"]

log = logging.getLogger("openbuda.drive")

CHUNK_BYTES: Final = 1 << 20
PAGE: Final = 1000
"""Drive changes read per query while pulling."""
_RACY_NS: Final = 20_000_000
"""File times advance in ticks of up to this long: see the module docstring."""
_INDEX_FORMAT: Final = 1
_SHOWN_MAX: Final = 5


# ---------------------------------------------------------------------------------------------
# The index


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """A path as last synced: its stat in the working copy and the Drive version it holds.

    ``sha256`` is ``""`` when unknown (a pull found the file changed by the agent: the next
    push stores it whatever it holds).
    """

    file: WorkingFile
    sha256: str
    version: int
    racy: bool = False

    def to_json(self) -> list[Any]:
        f = self.file
        return [f.size, f.mtime_ns, f.inode, self.sha256, self.version, self.racy]

    @classmethod
    def from_json(cls, row: list[Any]) -> IndexEntry:
        size, mtime_ns, inode, sha256, version, racy = row
        return cls(
            WorkingFile(int(size), int(mtime_ns), int(inode)), str(sha256), int(version), bool(racy)
        )


@dataclass(slots=True)
class SyncIndex:
    """The index of one working copy (see the module docstring) and where it is kept."""

    path: Path
    seq: int = 0
    files: dict[str, IndexEntry] = field(default_factory=dict[str, IndexEntry])
    stamp: tuple[int, int] | None = None
    """``(mtime_ns, inode)`` of the file when read or written: a changed one is read again."""
    dirty: bool = False

    @classmethod
    def load(cls, path: Path) -> SyncIndex:
        """The index kept at ``path``; an empty one (a fresh working copy) when there is none
        or it cannot be read. Blocking."""
        try:
            with path.open("rb") as handle:
                st = os.fstat(handle.fileno())
                data = json.load(handle)
            if data.get("format") != _INDEX_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            files = {str(p): IndexEntry.from_json(row) for p, row in data["files"].items()}
            return cls(path, int(data["seq"]), files, (st.st_mtime_ns, st.st_ino))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring the unreadable Drive index %s (%s): syncing afresh", path, exc)
            return cls(path)

    def current(self) -> bool:
        """Whether the file is still the one this index was read from or wrote (blocking)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.stamp is None
        return (st.st_mtime_ns, st.st_ino) == self.stamp

    def save(self) -> None:
        """Write the index atomically (a new file renamed over the old). Blocking.

        Not synced to disk: an index lost or older than the working copy is safe (files it
        does not know are hashed and compared with Drive; a pull over a file it has wrong
        leaves the file to the next push; commits of content Drive holds add no version)."""
        data = {
            "format": _INDEX_FORMAT,
            "seq": self.seq,
            "files": {p: entry.to_json() for p, entry in self.files.items()},
        }
        text = json.dumps(data, separators=(",", ":"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{os.urandom(4).hex()}")
        try:
            with temp.open("w") as handle:
                handle.write(text)
                handle.flush()
                st = os.fstat(handle.fileno())
            temp.replace(self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self.stamp = (st.st_mtime_ns, st.st_ino)
        self.dirty = False

    def put(self, path: str, entry: IndexEntry, *, stat_only: bool = False) -> None:
        """Set a path's entry; ``stat_only`` when only its stat changed, which need not be
        saved (after a restart the file is hashed once more)."""
        self.files[path] = entry
        self.dirty = self.dirty or not stat_only

    def drop(self, path: str) -> None:
        if self.files.pop(path, None) is not None:
            self.dirty = True


# ---------------------------------------------------------------------------------------------
# Blocking file helpers (run in worker threads)


def _fstat(handle: BinaryIO) -> WorkingFile:
    st = os.fstat(handle.fileno())
    return WorkingFile(st.st_size, st.st_mtime_ns, st.st_ino)


def hash_file(copy: WorkingCopy, path: str) -> tuple[str, WorkingFile] | None:
    """The sha256 of the file at ``path`` and the stat it had; ``None`` when it changed while
    read (it is being written: the next sync sees it). ``FileNotFoundError`` when it is gone.
    Reads at most the size it had when opened (a file that keeps growing cannot hold it up)."""
    with copy.open_read(path) as handle:
        before = _fstat(handle)
        digest = hashlib.sha256()
        left = before.size
        while left > 0 and (chunk := handle.read(min(CHUNK_BYTES, left))):
            digest.update(chunk)
            left -= len(chunk)
        if left or _fstat(handle) != before:
            return None
    return digest.hexdigest(), before


def compare(scanned: dict[str, WorkingFile], index: SyncIndex) -> tuple[list[str], list[str]]:
    """What a scan shows against the index: the paths to hash (new, changed or racy), in
    order, and those gone."""
    files = index.files
    changed = sorted(
        path
        for path, found in scanned.items()
        if (entry := files.get(path)) is None or entry.racy or entry.file != found
    )
    return changed, [path for path in files if path not in scanned]


def _blocking(chunks: AsyncIterator[bytes]) -> Iterator[bytes]:
    """An async stream read from a worker thread, chunk by chunk."""

    async def following() -> bytes | None:
        return await anext(chunks, None)

    while (chunk := anyio.from_thread.run(following)) is not None:
        yield chunk


async def _read_chunks(handle: BinaryIO, size: int) -> AsyncIterator[bytes]:
    left = size
    while left > 0:
        chunk = await anyio.to_thread.run_sync(handle.read, min(CHUNK_BYTES, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


# ---------------------------------------------------------------------------------------------
# What one sync did


@dataclass(slots=True)
class _Outcome:
    paths: list[str] = field(default_factory=list[str])
    written: list[str] = field(default_factory=list[str])
    unsaved: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    """``(shown path, why)`` of changes not saved."""
    unread: list[str] = field(default_factory=list[str])
    """Why a working copy could not be scanned."""

    def merge(self, other: _Outcome) -> None:
        self.paths += other.paths
        self.written += other.written
        self.unsaved += other.unsaved
        self.unread += other.unread

    def files_changed(self) -> FilesChanged:
        notes = list(self.unread)
        if self.unsaved:
            count = len(self.unsaved)
            shown = ", ".join(path for path, _ in self.unsaved[:_SHOWN_MAX])
            more = ", …" if count > _SHOWN_MAX else ""
            reasons = "; ".join(dict.fromkeys(why for _, why in self.unsaved))
            noun = "file was" if count == 1 else "files were"
            notes.append(f"Drive: {count} {noun} not saved ({shown}{more}): {reasons}")
        return FilesChanged(
            paths=tuple(dict.fromkeys(self.paths)),
            written=tuple(dict.fromkeys(self.written)),
            note="\n".join(notes) or None,
        )


@dataclass(slots=True)
class _Cached:
    index: SyncIndex
    holders: set[str]
    """Agents whose running computers use the working copy: the index is dropped with them."""


# ---------------------------------------------------------------------------------------------
# The sync


class DriveSync:
    """``ToolHooks`` syncing the working copies of computers with their Drives (module doc).

    Give ``connected`` to ``Computers.on_connect``: a computer connected here then syncs before
    its first use.
    """

    def __init__(self, drive: DriveService, computers: Computers, layout_dir: Path) -> None:
        self._drive = drive
        self._computers = computers
        self._layout = ComputerLayout(layout_dir)
        self._locks: dict[DriveRef, anyio.Lock] = {}
        self._cache: dict[DriveRef, _Cached] = {}

    # -- hooks -------------------------------------------------------------------------------

    async def before_tool(self, context: ToolContext) -> None:
        await self._sync(context.agent, None)

    async def after_tool(self, context: ToolContext) -> FilesChanged:
        try:
            writable = self._computers.view_for(context.agent, context.session).shared_writable
        except Forbidden:  # this backend runs no commands for the session: nothing to push
            writable = False
        actor = Actor(
            agent_id=context.agent.id, task_id=context.task_id, session_id=context.session.id
        )
        return await self._sync(context.agent, actor if writable else None)

    async def pull(self, agent: Agent) -> None:
        """Bring Drive writes made elsewhere into the computer's files (before a member's
        console command)."""
        await self._sync(agent, None)

    async def connected(self, agent: Agent, _sandbox: Sandbox) -> None:
        """A computer was just started or attached here: before its first command, save what
        changed in its files while no sync saw them (files there before Drive, a process that
        stopped between a command and its sync) as versions by the agent, outside any task,
        and bring in what Drive got meanwhile (``before_tool`` skipped it: it was not
        running)."""
        await self._sync(agent, Actor(agent_id=agent.id), connected=True)

    async def sync_member(self, agent: Agent, member_id: str) -> FilesChanged:
        """After a member's console command: its changes become versions by the member."""
        return await self._sync(agent, Actor(member_id=member_id))

    # -- one agent's working copies ------------------------------------------------------------

    def index_path(self, drive: DriveRef) -> Path:
        """Where the index of ``drive``'s working copy is kept (beside it, outside it)."""
        if drive.agent_id is not None:
            return self._layout.agent_home(drive.agent_id) / "drive-index.json"
        space_dir = self._layout.space_files(drive.space_id)
        return space_dir.with_name(f"{space_dir.name}.drive-index.json")

    async def _sync(
        self, agent: Agent, actor: Actor | None, *, connected: bool = False
    ) -> FilesChanged:
        """Push (when ``actor`` is given) then pull both working copies of ``agent``;
        ``connected``: its computer was just connected for use (whatever its state says)."""
        self._sweep()
        sandbox = self._computers.running(agent.id)
        if sandbox is None:
            return FilesChanged()
        state = "running" if connected else sandbox.state
        if state == "stopped" or (state == "sleeping" and actor is not None):
            return FilesChanged()  # asleep, nothing in it can have changed
        outcome = _Outcome()
        for drive in (DriveRef(agent.space_id, agent.id), DriveRef(agent.space_id)):
            try:
                outcome.merge(await self._sync_copy(agent.id, sandbox, drive, actor))
            except LeaseLost:
                raise
            except Exception:
                log.exception("cannot sync %s of the computer of %r", drive.shown(""), agent.id)
        if state == "sleeping" and sandbox.state != "running":
            self._forget(agent.id)
        return outcome.files_changed()

    def _sweep(self) -> None:
        """Drop the indexes of working copies no running computer uses any more."""
        for drive, cached in list(self._cache.items()):
            cached.holders = {a for a in cached.holders if self._runs_here(a)}
            if not cached.holders:
                del self._cache[drive]

    def _runs_here(self, agent_id: str) -> bool:
        sandbox = self._computers.running(agent_id)
        if sandbox is None:
            return False
        return sandbox.state == "running"

    def _forget(self, agent_id: str) -> None:
        for drive, cached in list(self._cache.items()):
            cached.holders.discard(agent_id)
            if not cached.holders:
                del self._cache[drive]

    async def _index(self, agent_id: str, drive: DriveRef) -> SyncIndex:
        cached = self._cache.get(drive)
        if cached is not None and await anyio.to_thread.run_sync(cached.index.current):
            cached.holders.add(agent_id)
            return cached.index
        index = await anyio.to_thread.run_sync(SyncIndex.load, self.index_path(drive))
        self._cache[drive] = _Cached(index, {agent_id})
        return index

    async def _sync_copy(
        self, agent_id: str, sandbox: Sandbox, drive: DriveRef, actor: Actor | None
    ) -> _Outcome:
        lock = self._locks.setdefault(drive, anyio.Lock())
        async with lock:
            index = await self._index(agent_id, drive)
            outcome = _Outcome()
            seq = None
            if actor is None:
                seq = await self._drive.seq(drive)
                if seq == index.seq:
                    return outcome  # nothing to pull: the working copy is not even looked at
            copy = await sandbox.working_copy(drive.mount)
            racy_before = time.time_ns() - _RACY_NS
            try:
                if actor is not None:
                    await self._push(copy, drive, index, actor, outcome, racy_before)
                await self._pull(copy, drive, index, racy_before, seq)
            finally:
                if index.dirty:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(index.save)
            return outcome

    # -- push --------------------------------------------------------------------------------

    async def _push(
        self,
        copy: WorkingCopy,
        drive: DriveRef,
        index: SyncIndex,
        actor: Actor,
        outcome: _Outcome,
        racy_before: int,
    ) -> None:
        try:
            scanned = await anyio.to_thread.run_sync(copy.scan)
        except Unavailable:
            raise
        except (OSError, OpenbudaError) as exc:
            # never read a folder that could not be listed as deleted: save nothing this time
            outcome.unread.append(
                f"Drive: the changes in /{drive.mount} were not saved: {exc}. Make it "
                "readable again (chmod) to save them."
            )
            return
        files = index.files
        changed, gone = compare(scanned, index)
        remote: dict[str, DriveFile] | None = None
        for path in changed:
            entry = files.get(path)
            try:
                hashed = await anyio.to_thread.run_sync(hash_file, copy, path)
            except FileNotFoundError:
                continue  # gone (or no longer a regular file) since the scan
            if hashed is None:
                continue  # being written: the next sync sees it
            sha256, found = hashed
            racy = found.mtime_ns >= racy_before
            if entry is not None and entry.sha256 == sha256:
                index.put(path, replace(entry, file=found, racy=racy), stat_only=True)
                continue
            if entry is None:
                if remote is None:
                    remote = await self._remote(drive, index.seq)
                known = remote.get(path)
                if known is not None and known.sha256 == sha256:
                    index.put(path, IndexEntry(found, sha256, known.version, racy))
                    continue
            try:
                stored = await self._store(copy, drive, path, found, actor)
            except TooLarge as exc:  # over the size limit or the quota: retried next time
                outcome.unsaved.append((drive.shown(path), exc.message))
                continue
            except LeaseLost:
                raise
            except Exception:
                log.exception("cannot save %s to Drive", drive.shown(path))
                continue
            if stored is None:
                continue
            index.put(path, IndexEntry(found, stored.sha256 or "", stored.version, racy))
            outcome.paths.append(drive.shown(path))
            outcome.written.append(drive.shown(path))
        for path in gone:
            try:
                await self._drive.commit(drive, path, None, actor)
            except NotFound:
                pass  # deleted in Drive too
            except LeaseLost:
                raise
            except Exception:
                log.exception("cannot record the deletion of %s in Drive", drive.shown(path))
                continue
            index.drop(path)
            outcome.paths.append(drive.shown(path))

    async def _remote(self, drive: DriveRef, after_seq: int) -> dict[str, DriveFile]:
        """The latest version of every path changed in Drive after ``after_seq``."""
        found: dict[str, DriveFile] = {}
        async for page in self._changes(drive, after_seq):
            found.update((f.path, f) for f in page)
        return found

    async def _changes(self, drive: DriveRef, after_seq: int) -> AsyncIterator[list[DriveFile]]:
        while True:
            page = await self._drive.changes(drive, after_seq, limit=PAGE)
            if not page:
                return
            yield page
            if len(page) < PAGE:
                return
            after_seq = page[-1].change_seq

    async def _store(
        self, copy: WorkingCopy, drive: DriveRef, path: str, found: WorkingFile, actor: Actor
    ) -> DriveFile | None:
        """Put the file's content in the blob store and commit it as the next version of
        ``path``; ``None`` when it changed while stored (the next sync sees it)."""
        limit = self._drive.limits.max_file_bytes
        if found.size > limit:
            raise too_large_file(limit)
        try:
            handle = await anyio.to_thread.run_sync(copy.open_read, path)
        except FileNotFoundError:
            return None
        try:
            if _fstat(handle) != found:
                return None
            blob: BlobInfo = await self._drive.blobs.put(
                _read_chunks(handle, found.size), max_bytes=limit
            )
            if blob.size != found.size or _fstat(handle) != found:
                return None
        finally:
            handle.close()
        return await self._drive.commit(drive, path, blob, actor)

    # -- pull --------------------------------------------------------------------------------

    async def _pull(
        self,
        copy: WorkingCopy,
        drive: DriveRef,
        index: SyncIndex,
        racy_before: int,
        seq: int | None = None,
    ) -> None:
        """Write the Drive's changes after ``index.seq`` into the working copy (``seq``: the
        Drive's latest, when just read)."""
        if (await self._drive.seq(drive) if seq is None else seq) == index.seq:
            return
        async for page in self._changes(drive, index.seq):
            for change in page:
                if not await self._apply(copy, drive, index, change, racy_before):
                    return  # retried from this change on at the next sync
                if index.seq != change.change_seq:
                    index.seq = change.change_seq
                    index.dirty = True

    async def _apply(
        self,
        copy: WorkingCopy,
        drive: DriveRef,
        index: SyncIndex,
        change: DriveFile,
        racy_before: int,
    ) -> bool:
        """Bring one Drive change into the working copy; ``False`` to stop and retry later."""
        path = change.path
        entry = index.files.get(path)
        sha256 = change.sha256 or ""
        if entry is not None and not change.deleted and entry.sha256 == sha256:
            if entry.version != change.version:
                index.put(path, replace(entry, version=change.version))
            return True  # the working copy holds it already
        if entry is None and change.deleted:
            return True
        if not await self._as_indexed(copy, index, path, change, racy_before):
            if entry is not None and entry.sha256:
                index.put(path, replace(entry, sha256=""))  # the next push stores it
            return True
        try:
            if change.deleted:
                await anyio.to_thread.run_sync(copy.remove, path)
                index.drop(path)
                return True
            written = await self._write(copy, path, sha256)
        except InvalidPath as exc:  # a link or a file stands in the way: left as it is
            log.warning("not writing %s into the working copy: %s", drive.shown(path), exc)
            return True
        except NotFound as exc:
            log.error("cannot write %s into the working copy: %s", drive.shown(path), exc)
            return True
        except (Unavailable, LeaseLost):
            raise
        except Exception:
            log.exception("cannot write %s into the working copy", drive.shown(path))
            return False
        index.put(
            path, IndexEntry(written, sha256, change.version, written.mtime_ns >= racy_before)
        )
        return True

    async def _as_indexed(
        self,
        copy: WorkingCopy,
        index: SyncIndex,
        path: str,
        change: DriveFile,
        racy_before: int,
    ) -> bool:
        """Whether the file at ``path`` holds what the index has (absent when not indexed),
        so that a Drive change may replace it. An unindexed file holding the change's content
        is indexed (a fresh working copy)."""
        entry = index.files.get(path)
        found = await anyio.to_thread.run_sync(copy.stat, path)
        if entry is None:
            if found is None:
                return True
            hashed = await self._hash(copy, path)
            if hashed is not None and hashed[0] == change.sha256:
                file = hashed[1]
                index.put(
                    path, IndexEntry(file, hashed[0], change.version, file.mtime_ns >= racy_before)
                )
            return False
        if found is None or not entry.sha256:
            return False
        if found != entry.file or entry.racy:  # a touch is no change: only content counts
            hashed = await self._hash(copy, path)
            return hashed is not None and hashed[0] == entry.sha256
        return True

    async def _hash(self, copy: WorkingCopy, path: str) -> tuple[str, WorkingFile] | None:
        try:
            return await anyio.to_thread.run_sync(hash_file, copy, path)
        except FileNotFoundError:
            return None

    async def _write(self, copy: WorkingCopy, path: str, sha256: str) -> WorkingFile:
        """Replace the file at ``path`` with a blob, streamed from the blob store."""
        chunks = self._drive.blobs.open(sha256)
        try:
            return await anyio.to_thread.run_sync(lambda: copy.replace(path, _blocking(chunks)))
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()
