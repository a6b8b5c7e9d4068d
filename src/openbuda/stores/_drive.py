"""Drive metadata in the SQL store (``DriveReader``, ``DriveWriter``; ARCHITECTURE §7).

Three tables (``schema``): ``drives`` (per Drive: the ``change_seq`` counter and the live byte
count), ``drive_files`` (the latest version of each path) and ``drive_versions`` (every
version). ``DriveReads`` is a base of ``SqlReadTx``, ``DriveWrites`` of ``SqlWriteTx``.

Adding a version first bumps the Drive's ``last_seq`` with an upsert (``INSERT … ON CONFLICT
DO UPDATE … RETURNING``). On PostgreSQL that locks the Drive's row to the end of the
transaction, so concurrent writers of one Drive take turns and each reads the path's latest
version only once it holds the lock; on SQLite the single writer already serialises them. The
statements of one addition run in one hop of the runner.

Paths are keyed by their sha256 (``path_hash``) and listed through ``path_head`` (see
``schema.drive_files``). A prefix is matched with a range (``head >= prefix AND head <
successor``), never ``LIKE``: ``%`` and ``_`` stay plain characters and the b-tree serves it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any, Final, get_args

from sqlalchemy import BigInteger, Connection, bindparam, cast, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from openbuda.domain.drive import DriveFile, DriveRef, DriveVersion, VersionOp, drive_path
from openbuda.domain.errors import InvalidRequest
from openbuda.ports import NewDriveVersion
from openbuda.stores._codec import check_limit, drive_file_from_row, drive_version_from_row
from openbuda.stores._connections import StatementRunner
from openbuda.stores._queries import DialectTraits, p_int, p_str, p_time
from openbuda.stores.schema import PATH_HEAD_CHARS, drive_files, drive_versions, drives

__all__ = ["DriveReads", "DriveWrites", "path_hash", "prefix_end"]

_OPS: Final = frozenset(get_args(VersionOp))
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_MAX_CODE_POINT: Final = 0x10FFFF
_SURROGATES: Final = range(0xD800, 0xE000)


def path_hash(path: str) -> str:
    """The key of a path in ``drive_files`` and ``drive_versions``: hex sha256 of its UTF-8."""
    return hashlib.sha256(path.encode()).hexdigest()


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code point order);
    ``None`` when there is none (``prefix`` empty or made only of U+10FFFF)."""
    chars = list(prefix)
    while chars:
        following = ord(chars.pop()) + 1
        if following <= _MAX_CODE_POINT:
            if following in _SURROGATES:
                following = _SURROGATES.stop
            return "".join(chars) + chr(following)
    return None


def _p_big(name: str) -> Any:
    return bindparam(name, type_=BigInteger())


def _in_drive(table: Any) -> tuple[Any, Any]:
    return table.c.space_id == p_str("space"), table.c.drive == p_str("key")


_FILE_COLUMNS: Final = (
    drive_files.c.path,
    drive_files.c.version,
    drive_files.c.sha256,
    drive_files.c.size,
    drive_files.c.updated_at,
    drive_files.c.change_seq,
)
_FILE: Final = select(*_FILE_COLUMNS).where(
    *_in_drive(drive_files), drive_files.c.path_hash == p_str("hash")
)
_LIVE_FILES: Final = select(*_FILE_COLUMNS).where(
    *_in_drive(drive_files), drive_files.c.sha256.is_not(None)
)
_CHANGES: Final = (
    select(*_FILE_COLUMNS)
    .where(*_in_drive(drive_files), drive_files.c.change_seq > p_int("after"))
    .order_by(drive_files.c.change_seq)
    .limit(p_int("limit"))
)
_VERSIONS_OF_PATH: Final = select(drive_versions).where(
    *_in_drive(drive_versions), drive_versions.c.path_hash == p_str("hash")
)
_VERSION: Final = _VERSIONS_OF_PATH.where(drive_versions.c.version == p_int("version"))
_NEWEST_VERSIONS: Final = _VERSIONS_OF_PATH.order_by(drive_versions.c.version.desc()).limit(
    p_int("limit")
)
_VERSIONS_BEFORE: Final = (
    _VERSIONS_OF_PATH.where(drive_versions.c.version < p_int("before"))
    .order_by(drive_versions.c.version.desc())
    .limit(p_int("limit"))
)
_SEQ: Final = select(drives.c.last_seq).where(*_in_drive(drives))
_USAGE: Final = select(
    cast(func.coalesce(func.sum(drives.c.live_bytes), 0), BigInteger()).label("used")
).where(drives.c.space_id == p_str("space"))


def _next_seq(insert: Any) -> Any:
    """Create the Drive's row or bump its ``last_seq``, returning the Drive's next change_seq
    (and, on PostgreSQL, holding the row's lock to the end of the transaction)."""
    return (
        insert(drives)
        .values(space_id=p_str("space"), drive=p_str("key"), last_seq=1, live_bytes=0, live_files=0)
        .on_conflict_do_update(
            index_elements=[drives.c.space_id, drives.c.drive],
            set_={"last_seq": drives.c.last_seq + 1},
        )
        .returning(drives.c.last_seq)
    )


_NEXT_SEQ: Final = {"sqlite": _next_seq(sqlite.insert), "postgresql": _next_seq(postgresql.insert)}


def _ensure_drive(insert: Any) -> Any:
    return (
        insert(drives)
        .values(space_id=p_str("space"), drive=p_str("key"), last_seq=0, live_bytes=0, live_files=0)
        .on_conflict_do_nothing(index_elements=[drives.c.space_id, drives.c.drive])
    )


_ENSURE_DRIVE: Final = {
    "sqlite": _ensure_drive(sqlite.insert),
    "postgresql": _ensure_drive(postgresql.insert),
}
_INSERT_FILE: Final = drive_files.insert()
_UPDATE_FILE: Final = (
    update(drive_files)
    .where(*_in_drive(drive_files), drive_files.c.path_hash == p_str("hash"))
    .values(
        version=p_int("new_version"),
        sha256=p_str("new_sha256"),
        size=_p_big("new_size"),
        updated_at=p_time("now"),
        change_seq=p_int("seq"),
    )
)
_INSERT_VERSION: Final = drive_versions.insert()
_COUNT_LIVE: Final = (
    update(drives)
    .where(*_in_drive(drives))
    .values(
        live_bytes=drives.c.live_bytes + _p_big("bytes"),
        live_files=drives.c.live_files + p_int("files"),
    )
)
_LOCK_DRIVE: Final = select(drives.c.drive).where(*_in_drive(drives)).with_for_update()
_DELETE_VERSIONS: Final = delete(drive_versions).where(*_in_drive(drive_versions))
_DELETE_FILES: Final = delete(drive_files).where(*_in_drive(drive_files))
_DELETE_DRIVE: Final = delete(drives).where(*_in_drive(drives))


def _scope(drive: DriveRef) -> dict[str, Any]:
    return {"space": drive.space_id, "key": drive.key}


def _invalid(message: str, new: NewDriveVersion) -> InvalidRequest:
    return InvalidRequest(message, details={"path": new.path, "op": new.op})


def _check_new(new: NewDriveVersion) -> None:
    """Refuse a version the tables could not hold consistently (``InvalidRequest``)."""
    if drive_path(new.path) != new.path:
        raise _invalid(f"{new.path!r} is not NFC-normalised", new)
    if new.op not in _OPS:
        raise _invalid(f"unknown version op {new.op!r}", new)
    if new.sha256 is None:
        if new.op == "write":
            raise _invalid("a write needs content (sha256)", new)
        if new.size != 0:
            raise _invalid(f"a tombstone has no bytes, not {new.size}", new)
    else:
        if new.op == "delete":
            raise _invalid("a delete is a tombstone: it has no content", new)
        if not _SHA256.fullmatch(new.sha256):
            raise _invalid(f"{new.sha256!r} is not a lowercase hex sha256", new)
        if new.size < 0:
            raise _invalid(f"size must not be negative, not {new.size}", new)
    if (new.op == "restore") != (new.restored_from is not None):
        raise _invalid("restored_from is given exactly for a restore", new)


class DriveReads:
    """``DriveReader`` over one transaction (a base of ``SqlReadTx``)."""

    _runner: StatementRunner
    _traits: DialectTraits

    async def get_drive_file(self, drive: DriveRef, path: str) -> DriveFile | None:
        parameters = {**_scope(drive), "hash": path_hash(path)}
        row = (await self._runner.execute(_FILE, parameters)).first()
        return None if row is None else drive_file_from_row(row)

    async def list_drive_files(
        self, drive: DriveRef, prefix: str = "", *, limit: int | None = None
    ) -> list[DriveFile]:
        statement = _LIVE_FILES
        if prefix:
            end = prefix_end(prefix)
            if len(prefix) <= PATH_HEAD_CHARS:
                # A path starts with such a prefix exactly when its head does.
                column = drive_files.c.path_head
                statement = statement.where(column >= prefix)
            else:
                column = drive_files.c.path
                statement = statement.where(
                    drive_files.c.path_head == prefix[:PATH_HEAD_CHARS], column >= prefix
                )
            if end is not None:
                statement = statement.where(column < end)
        statement = statement.order_by(drive_files.c.path_head, drive_files.c.path)
        if limit is not None:
            check_limit(limit)
            statement = statement.limit(limit)
        rows = (await self._runner.execute(statement, _scope(drive))).all()
        return [drive_file_from_row(row) for row in rows]

    async def list_drive_versions(
        self, drive: DriveRef, path: str, *, limit: int = 100, before: int | None = None
    ) -> list[DriveVersion]:
        check_limit(limit)
        parameters = {**_scope(drive), "hash": path_hash(path), "limit": limit}
        statement = _NEWEST_VERSIONS
        if before is not None:
            statement = _VERSIONS_BEFORE
            parameters["before"] = before
        rows = (await self._runner.execute(statement, parameters)).all()
        return [drive_version_from_row(row) for row in rows]

    async def get_drive_version(
        self, drive: DriveRef, path: str, version: int
    ) -> DriveVersion | None:
        parameters = {**_scope(drive), "hash": path_hash(path), "version": version}
        row = (await self._runner.execute(_VERSION, parameters)).first()
        return None if row is None else drive_version_from_row(row)

    async def drive_changes(
        self, drive: DriveRef, after_seq: int, *, limit: int = 1000
    ) -> list[DriveFile]:
        check_limit(limit)
        parameters = {**_scope(drive), "after": after_seq, "limit": limit}
        rows = (await self._runner.execute(_CHANGES, parameters)).all()
        return [drive_file_from_row(row) for row in rows]

    async def drive_seq(self, drive: DriveRef) -> int:
        last_seq = (await self._runner.execute(_SEQ, _scope(drive))).scalar()
        return 0 if last_seq is None else int(last_seq)

    async def drive_usage(self, space_id: str) -> int:
        return int((await self._runner.execute(_USAGE, {"space": space_id})).scalar())


class DriveWrites:
    """``DriveWriter`` over one write transaction (a base of ``SqlWriteTx``)."""

    _runner: StatementRunner
    _traits: DialectTraits

    async def add_drive_version(
        self, drive: DriveRef, new: NewDriveVersion, now: datetime
    ) -> DriveVersion:
        _check_new(new)
        scope = _scope(drive)
        keyed = {**scope, "hash": path_hash(new.path)}
        next_seq = _NEXT_SEQ[self._traits.capabilities.dialect]

        def add(connection: Connection) -> DriveVersion:
            """The statements of the addition, in one hop of the runner."""
            change_seq: int = connection.execute(next_seq, scope).scalar_one()
            current = connection.execute(_FILE, keyed).first()
            version = 1 if current is None else current.version + 1
            if new.restored_from is not None and not 1 <= new.restored_from < version:
                raise _invalid(
                    f"cannot restore version {new.restored_from} of a path at version "
                    f"{version - 1}",
                    new,
                )
            latest = {
                **keyed,
                "new_version": version,
                "new_sha256": new.sha256,
                "new_size": new.size,
                "now": now,
                "seq": change_seq,
            }
            if current is None:
                connection.execute(
                    _INSERT_FILE,
                    {
                        "space_id": drive.space_id,
                        "drive": drive.key,
                        "path_hash": keyed["hash"],
                        "path": new.path,
                        "path_head": new.path[:PATH_HEAD_CHARS],
                        "version": version,
                        "sha256": new.sha256,
                        "size": new.size,
                        "updated_at": now,
                        "change_seq": change_seq,
                    },
                )
            else:
                connection.execute(_UPDATE_FILE, latest)
            connection.execute(
                _INSERT_VERSION,
                {
                    "space_id": drive.space_id,
                    "drive": drive.key,
                    "path_hash": keyed["hash"],
                    "version": version,
                    "path": new.path,
                    "op": new.op,
                    "sha256": new.sha256,
                    "size": new.size,
                    "member_id": new.actor.member_id,
                    "agent_id": new.actor.agent_id,
                    "task_id": new.actor.task_id,
                    "session_id": new.actor.session_id,
                    "restored_from": new.restored_from,
                    "at": now,
                    "change_seq": change_seq,
                },
            )
            was_live = current is not None and current.sha256 is not None
            live_bytes = (0 if new.sha256 is None else new.size) - (
                current.size if current is not None and was_live else 0
            )
            live_files = (new.sha256 is not None) - was_live
            if live_bytes or live_files:
                counts = {**scope, "bytes": live_bytes, "files": live_files}
                connection.execute(_COUNT_LIVE, counts)
            return DriveVersion(
                path=new.path,
                version=version,
                op=new.op,
                sha256=new.sha256,
                size=new.size,
                actor=new.actor,
                at=now,
                change_seq=change_seq,
                restored_from=new.restored_from,
            )

        return await self._runner.run_sync(add)

    async def lock_drive(self, drive: DriveRef) -> None:
        scope = _scope(drive)
        await self._runner.execute(_ENSURE_DRIVE[self._traits.capabilities.dialect], scope)
        await self._runner.execute(_LOCK_DRIVE, scope)

    async def delete_drive(self, drive: DriveRef) -> int:
        scope = _scope(drive)
        # Lock the Drive's row first (PostgreSQL) so that no writer adds a version meanwhile.
        await self._runner.execute(_LOCK_DRIVE, scope)
        await self._runner.execute(_DELETE_VERSIONS, scope)
        paths = (await self._runner.execute(_DELETE_FILES, scope)).rowcount
        await self._runner.execute(_DELETE_DRIVE, scope)
        return paths
