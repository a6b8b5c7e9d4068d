"""Drive: members' files of an agent (its Agent Drive) and of their space (the Space Drive).

Every change is a version (``domain.drive``): content goes to the blob store first (streamed,
hashed on the way), then one write transaction adds the version. A writer killed half-way
therefore leaves the previous version as it was. Writing the content a path already holds adds
no version (a ``PUT`` is idempotent).

The agent's own changes reach Drive through the working copy of its computer (``drive.sync``),
which calls ``commit`` with the agent as the actor; ``remember`` and saved sessions write here
directly. Quotas count the live bytes of every Drive of a space (``Settings.drive_quota_bytes``).
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from openbuda.domain.drive import (
    Actor,
    DriveFile,
    DriveRef,
    DriveVersion,
    VersionOp,
    drive_path,
    drive_prefix,
)
from openbuda.domain.errors import (
    NotFound,
    QuotaExceeded,
    TooLarge,
    ValidationFailed,
)
from openbuda.domain.principal import Principal
from openbuda.domain.records import Event
from openbuda.drive import transcript
from openbuda.ports import BlobInfo, BlobStore, NewDriveVersion, ReadEvents, WriteTx
from openbuda.service.deps import ServiceDeps

__all__ = [
    "DIFF_MAX_BYTES",
    "DriveDiff",
    "DriveEntry",
    "DriveLimits",
    "DriveService",
    "iterate_bytes",
    "member_actor",
    "too_large_file",
]

DIFF_MAX_BYTES: Final = 2 * 1024 * 1024
"""Versions larger than this are not diffed line by line (the diff says so)."""
LIST_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class DriveLimits:
    max_file_bytes: int = 5 * 1024**3
    quota_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class DriveEntry:
    """One line of a listing: a file, or a folder (``kind="dir"``, with the total size of its
    files, the latest time one changed, no sha256 and no version)."""

    path: str
    kind: Literal["file", "dir"]
    size: int
    updated_at: datetime
    sha256: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class DriveDiff:
    path: str
    from_version: int
    to_version: int
    binary: bool
    diff: str
    """A unified diff (empty when the versions hold the same text); for binary or over-large
    versions a sentence saying so."""


async def iterate_bytes(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a one-chunk stream (for ``BlobStore.put``)."""
    yield data


def _text(data: bytes) -> str | None:
    if b"\x00" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


class DriveService:
    def __init__(self, deps: ServiceDeps, blobs: BlobStore, limits: DriveLimits) -> None:
        self._deps = deps
        self.blobs = blobs
        self.limits = limits

    # -- which Drive -------------------------------------------------------------------------

    async def drive(self, principal: Principal, agent_id: str | None) -> DriveRef:
        """The Agent Drive of ``agent_id`` (``NotFound`` in another space) or, for ``None``,
        the principal's Space Drive."""
        if agent_id is None:
            return DriveRef(principal.space_id)
        async with self._deps.store.read() as tx:
            agent = await tx.get_agent(principal.space_id, agent_id)
        if agent is None:
            raise NotFound.of("agent", agent_id)
        return DriveRef(principal.space_id, agent_id)

    # -- reads -------------------------------------------------------------------------------

    async def list(
        self, drive: DriveRef, prefix: str | None = None, *, recursive: bool = False
    ) -> list[DriveEntry]:
        """The files and folders directly in the folder ``prefix`` (every file below it with
        ``recursive``), folders first, each group by path."""
        folder = drive_prefix(prefix)
        async with self._deps.store.read() as tx:
            files = await tx.list_drive_files(drive, folder, limit=None)
        if recursive:
            return [_file_entry(f) for f in files[:LIST_MAX]]
        dirs: dict[str, tuple[int, datetime]] = {}
        entries: list[DriveEntry] = []
        for f in files:
            rest = f.path[len(folder) :]
            head, slash, _tail = rest.partition("/")
            if slash:
                name = folder + head
                size, at = dirs.get(name, (0, f.updated_at))
                dirs[name] = (size + f.size, max(at, f.updated_at))
            else:
                entries.append(_file_entry(f))
        folders = [DriveEntry(name, "dir", size, at) for name, (size, at) in sorted(dirs.items())]
        if not folders and not entries and folder:
            raise NotFound(
                f"no folder {folder.rstrip('/')!r} in this Drive",
                details={"path": folder.rstrip("/")},
            )
        return (folders + entries)[:LIST_MAX]

    async def version(self, drive: DriveRef, path: str, version: int | None = None) -> DriveVersion:
        """A version of ``path`` (default: the latest); ``NotFound`` for a missing path, a
        deleted one (latest), or a version that does not exist."""
        path = drive_path(path)
        async with self._deps.store.read() as tx:
            if version is None:
                current = await tx.get_drive_file(drive, path)
                found = (
                    None
                    if current is None or current.deleted
                    else await tx.get_drive_version(drive, path, current.version)
                )
            else:
                found = await tx.get_drive_version(drive, path, version)
        if found is None:
            what = f"version {version} of {path!r}" if version is not None else repr(path)
            raise NotFound(f"no {what} in this Drive", details={"path": path, "version": version})
        if found.deleted:
            raise NotFound(
                f"version {found.version} of {path!r} is a deletion; read an earlier version or "
                "restore one",
                details={"path": path, "version": found.version},
            )
        return found

    async def open(
        self, drive: DriveRef, path: str, version: int | None = None
    ) -> tuple[DriveVersion, AsyncGenerator[bytes]]:
        """A version and its content as a stream of chunks."""
        found = await self.version(drive, path, version)
        assert found.sha256 is not None
        return found, self.blobs.open(found.sha256)

    async def read(
        self,
        drive: DriveRef,
        path: str,
        version: int | None = None,
        *,
        max_bytes: int | None = None,
    ) -> tuple[DriveVersion, bytes]:
        """A version and its whole content (``TooLarge`` past ``max_bytes``)."""
        found = await self.version(drive, path, version)
        assert found.sha256 is not None
        return found, await self.blobs.read(found.sha256, max_bytes=max_bytes)

    async def history(
        self, drive: DriveRef, path: str, *, limit: int = 100, before: int | None = None
    ) -> list[DriveVersion]:
        """The versions of ``path``, newest first (tombstones included)."""
        path = drive_path(path)
        if not 1 <= limit <= 1000:
            raise ValidationFailed("limit must be 1-1000", details={"field": "limit"})
        async with self._deps.store.read() as tx:
            versions = await tx.list_drive_versions(drive, path, limit=limit, before=before)
        if not versions and before is None:
            raise NotFound(f"no {path!r} in this Drive", details={"path": path})
        return versions

    async def diff(
        self, drive: DriveRef, path: str, from_version: int, to_version: int | None = None
    ) -> DriveDiff:
        """A unified text diff between two versions (``to``: the latest one, tombstone or not).
        A deleted version counts as empty."""
        path = drive_path(path)
        async with self._deps.store.read() as tx:
            if to_version is None:
                current = await tx.get_drive_file(drive, path)
                to_version = current.version if current is not None else 0
            old = await tx.get_drive_version(drive, path, from_version)
            new = await tx.get_drive_version(drive, path, to_version)
        for number, found in ((from_version, old), (to_version, new)):
            if found is None:
                raise NotFound(
                    f"no version {number} of {path!r} in this Drive",
                    details={"path": path, "version": number},
                )
        assert old is not None and new is not None
        if max(old.size, new.size) > DIFF_MAX_BYTES:
            return DriveDiff(
                path,
                old.version,
                new.version,
                False,
                f"versions over {DIFF_MAX_BYTES} bytes are not diffed line by line",
            )
        texts: list[str] = []
        for found in (old, new):
            data = b"" if found.sha256 is None else await self.blobs.read(found.sha256)
            text = _text(data)
            if text is None:
                return DriveDiff(
                    path,
                    old.version,
                    new.version,
                    True,
                    f"Binary files {path}@{old.version} and {path}@{new.version} "
                    + ("are identical" if old.sha256 == new.sha256 else "differ"),
                )
            texts.append(text)
        lines = difflib.unified_diff(
            texts[0].splitlines(keepends=True),
            texts[1].splitlines(keepends=True),
            fromfile=f"{path}@{old.version}",
            tofile=f"{path}@{new.version}",
        )
        return DriveDiff(
            path,
            old.version,
            new.version,
            False,
            "".join(
                line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                for line in lines
            ),
        )

    # -- sessions saved ----------------------------------------------------------------------

    async def save_session(
        self,
        principal: Principal,
        session_id: str,
        path: str,
        *,
        drive: Literal["agent", "space"] = "agent",
        task_id: str | None = None,
    ) -> DriveFile:
        """The session's transcript, or one task's result with its files listed, as Markdown
        in the session's Agent Drive (or the Space Drive): a new version by the member."""
        path = drive_path(path)
        space_id = principal.space_id
        async with self._deps.store.read() as tx:
            session = await tx.get_session(space_id, session_id, self._deps.clock.now())
            task = None if task_id is None else await tx.get_task(space_id, task_id)
        if session is None:
            raise NotFound.of("session", session_id)
        if task_id is not None and (task is None or task.session_id != session.id):
            raise NotFound.of("task", task_id)
        ref = DriveRef(space_id, session.agent_id if drive == "agent" else None)

        async def pages(after_seq: int, limit: int) -> list[Event]:
            async with self._deps.store.read() as tx:
                return await tx.read_events(
                    ReadEvents(
                        space_id,
                        session_id,
                        after_seq=after_seq,
                        limit=limit,
                        types=transcript.TYPES,
                    )
                )

        content = (
            transcript.render_transcript(session, pages)
            if task is None
            else transcript.render_result(session, task, pages)
        )
        return await self.write(ref, path, content, member_actor(principal))

    async def seq(self, drive: DriveRef) -> int:
        """The Drive's latest ``change_seq`` (0 when never written): working copies synced
        through it have nothing to pull (``drive.sync``)."""
        async with self._deps.store.read() as tx:
            return await tx.drive_seq(drive)

    async def changes(
        self, drive: DriveRef, after_seq: int, *, limit: int = 1000
    ) -> list[DriveFile]:
        """The latest version of each path changed after ``after_seq`` (tombstones included),
        by ``change_seq``: what a working copy synced through ``after_seq`` lacks."""
        async with self._deps.store.read() as tx:
            return await tx.drive_changes(drive, after_seq, limit=limit)

    # -- writes ------------------------------------------------------------------------------

    async def check_room(self, drive: DriveRef, path: str, size: int) -> None:
        """Fail early (``TooLarge``/``QuotaExceeded``) when ``size`` bytes written to ``path``
        cannot fit (replacing a file only adds the difference)."""
        if size > self.limits.max_file_bytes:
            raise too_large_file(self.limits.max_file_bytes)
        quota = self.limits.quota_bytes
        if quota is None:
            return
        async with self._deps.store.read() as tx:
            used = await tx.drive_usage(drive.space_id)
            current = await tx.get_drive_file(drive, path)
        old = 0 if current is None or current.deleted else current.size
        if size > old and used - old + size > quota:
            raise _over_quota(quota, used)

    async def write(
        self,
        drive: DriveRef,
        path: str,
        chunks: AsyncIterable[bytes],
        actor: Actor,
        *,
        size_hint: int | None = None,
    ) -> DriveFile:
        """Store the content as the next version of ``path`` (none when it holds it already)."""
        path = drive_path(path)
        if size_hint is not None:
            await self.check_room(drive, path, size_hint)
        blob = await self.blobs.put(chunks, max_bytes=self.limits.max_file_bytes)
        return await self.commit(drive, path, blob, actor)

    async def delete(self, drive: DriveRef, path: str, actor: Actor) -> DriveFile:
        """A tombstone version; ``NotFound`` when the path holds no live file."""
        path = drive_path(path)
        return await self.commit(drive, path, None, actor, missing_ok=False)

    async def restore(self, drive: DriveRef, path: str, version: int, actor: Actor) -> DriveFile:
        """A new version with the content of ``version`` (a tombstone's: the file is deleted)."""
        path = drive_path(path)
        async with self._deps.store.read() as tx:
            found = await tx.get_drive_version(drive, path, version)
        if found is None:
            raise NotFound(
                f"no version {version} of {path!r} in this Drive",
                details={"path": path, "version": version},
            )
        blob = None if found.sha256 is None else BlobInfo(found.sha256, found.size)
        return await self.commit(
            drive, path, blob, actor, op="restore", restored_from=version, always=True
        )

    async def commit(
        self,
        drive: DriveRef,
        path: str,
        blob: BlobInfo | None,
        actor: Actor,
        *,
        op: VersionOp | None = None,
        restored_from: int | None = None,
        always: bool = False,
        missing_ok: bool = True,
    ) -> DriveFile:
        """Add the version of ``path`` holding ``blob`` (``None``: a tombstone), stored already.

        Without ``always`` nothing is added when the latest version holds the same content
        (or is already a tombstone): the latest is returned as it is. ``path`` must be checked
        (``drive_path``).
        """
        now = self._deps.clock.now()
        async with self._deps.store.write() as tx:
            await tx.lock_drive(drive)
            current = await tx.get_drive_file(drive, path)
            if blob is None and (current is None or current.deleted) and not missing_ok:
                raise NotFound(f"no {path!r} in this Drive", details={"path": path})
            if (
                not always
                and current is not None
                and current.sha256 == (None if blob is None else blob.sha256)
            ):
                return current
            if current is None and blob is None:
                raise NotFound(f"no {path!r} in this Drive", details={"path": path})
            size = 0 if blob is None else blob.size
            await self._check_quota(tx, drive, current, size)
            kind: VersionOp = op or ("delete" if blob is None else "write")
            stored = await tx.add_drive_version(
                drive,
                NewDriveVersion(
                    path, kind, None if blob is None else blob.sha256, size, actor, restored_from
                ),
                now,
            )
        return DriveFile(
            stored.path, stored.version, stored.sha256, stored.size, stored.at, stored.change_seq
        )

    async def _check_quota(
        self, tx: WriteTx, drive: DriveRef, current: DriveFile | None, size: int
    ) -> None:
        quota = self.limits.quota_bytes
        old = 0 if current is None or current.deleted else current.size
        if quota is None or size <= old:
            return
        used = await tx.drive_usage(drive.space_id)
        if used - old + size > quota:
            raise _over_quota(quota, used)


def _file_entry(f: DriveFile) -> DriveEntry:
    return DriveEntry(f.path, "file", f.size, f.updated_at, f.sha256, f.version)


def too_large_file(limit: int) -> TooLarge:
    """The error of a file over ``limit`` bytes (the API, the working-copy sync)."""
    return TooLarge(f"a Drive file may be at most {limit} bytes", details={"max_bytes": limit})


def _over_quota(quota: int, used: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"the space's Drives would pass their quota of {quota} bytes ({used} in use): delete "
        "files or ask the operator for a larger quota",
        details={"quota_bytes": quota, "used_bytes": used},
    )


def member_actor(principal: Principal) -> Actor:
    """A member's changes are theirs."""
    return Actor(member_id=principal.member_id)
