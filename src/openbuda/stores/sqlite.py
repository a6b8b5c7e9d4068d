"""The SQLite adapter: WAL mode, one writer, readers that never wait for it.

- Every connection runs ``PRAGMA busy_timeout = 10000``, ``journal_mode = WAL``,
  ``synchronous = <level>`` (default ``NORMAL``) and ``foreign_keys = ON``.
- **One writer.** Writes go through their own engine with a single pooled connection, behind a
  FIFO ``anyio.Lock``; each write transaction starts with ``BEGIN IMMEDIATE``, which takes the
  database's write lock at once. Writers of this process queue on the lock; writers of other
  processes (a worker started against the same file) wait on SQLite's lock for up to
  ``busy_timeout``. A transaction that starts as a reader and later writes, the classic source of
  ``database is locked`` errors in WAL mode, never happens.
- **Readers** use a separate pool of connections with a deferred ``BEGIN``: in WAL mode they read
  a snapshot and neither wait for the writer nor make it wait, so a read transaction held open
  while the same process writes cannot deadlock.

SQLAlchemy's documented recipe is used to take over ``BEGIN`` from the ``sqlite3`` driver: the
driver's ``isolation_level`` is ``None`` and a ``begin`` event emits the statement.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import anyio
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from openbuda.ports import StoreCapabilities
from openbuda.stores._queries import DialectTraits
from openbuda.stores.sql import SqlStore

__all__ = ["BUSY_TIMEOUT_MS", "SYNCHRONOUS_LEVELS", "SqliteStore"]

BUSY_TIMEOUT_MS: Final = 10_000
SYNCHRONOUS_LEVELS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
_READ_POOL_SIZE: Final = 4
_READ_POOL_OVERFLOW: Final = 12
_MIN_SQLITE: Final = (3, 35, 0)
"""``UPDATE … RETURNING`` arrived in SQLite 3.35."""

_TRAITS: Final = DialectTraits(
    capabilities=StoreCapabilities(dialect="sqlite", skip_locked=False, concurrent_writers=False),
    row_locks=False,
)


class SqliteStore(SqlStore):
    """A store in one SQLite file (``sqlite+aiosqlite:///path/to/file.db``)."""

    def __init__(self, url: str, *, synchronous: str = "NORMAL") -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:  # pragma: no cover - depends on the host
            raise RuntimeError(
                f"openbuda needs SQLite >= 3.35 (UPDATE … RETURNING); this is {sqlite3.sqlite_version}"
            )
        level = synchronous.upper()
        if level not in SYNCHRONOUS_LEVELS:
            raise ValueError(
                f"synchronous must be one of {sorted(SYNCHRONOUS_LEVELS)}, not {synchronous!r}"
            )
        database = make_url(url).database
        if not database or database == ":memory:" or "mode=memory" in url:
            raise ValueError(
                f"SQLite store {url!r} must be a file: readers and the writer use separate "
                "connections, which an in-memory database cannot share"
            )
        write_engine = _engine(url, level, begin="BEGIN IMMEDIATE", pool_size=1, overflow=0)
        read_engine = _engine(
            url, level, begin="BEGIN", pool_size=_READ_POOL_SIZE, overflow=_READ_POOL_OVERFLOW
        )
        super().__init__(url, write_engine=write_engine, read_engine=read_engine, traits=_TRAITS)
        self._writer = anyio.Lock()

    def _write_gate(self) -> AbstractAsyncContextManager[Any]:
        return self._writer


def _engine(
    url: str, synchronous: str, *, begin: str, pool_size: int, overflow: int
) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=overflow,
        pool_timeout=BUSY_TIMEOUT_MS / 1000 * 6,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:  # pyright: ignore[reportUnusedFunction]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:  # pyright: ignore[reportUnusedFunction]
        connection.exec_driver_sql(begin)

    return engine
