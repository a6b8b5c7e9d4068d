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

The URL says ``sqlite+aiosqlite://`` (an asyncio store), but statements run on the standard
``sqlite3`` driver in worker threads, one hop per statement (see ``_connections``). SQLAlchemy's
documented recipe takes over ``BEGIN`` from the driver: its ``isolation_level`` is ``None`` and a
``begin`` event emits the statement.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import anyio
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from openbuda.ports import StoreCapabilities
from openbuda.stores._connections import StatementRunner, thread_transaction
from openbuda.stores._queries import DialectTraits
from openbuda.stores.sql import SqlStore

__all__ = ["BUSY_TIMEOUT_MS", "SYNCHRONOUS_LEVELS", "SqliteStore"]

BUSY_TIMEOUT_MS: Final = 10_000
SYNCHRONOUS_LEVELS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
READ_CONNECTIONS: Final = 8
"""Read transactions at once; more wait for a free connection (never inside a thread)."""
_MIN_SQLITE: Final = (3, 35, 0)
"""``UPDATE … RETURNING`` arrived in SQLite 3.35."""

_TRAITS: Final = DialectTraits(
    capabilities=StoreCapabilities(dialect="sqlite", skip_locked=False, concurrent_writers=False),
    row_locks=False,
)


class SqliteStore(SqlStore):
    """A store in one SQLite file (``sqlite+aiosqlite:///path/to/file.db``)."""

    def __init__(
        self, url: str, *, synchronous: str = "NORMAL", busy_timeout_ms: int = BUSY_TIMEOUT_MS
    ) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:  # pragma: no cover - depends on the host
            raise RuntimeError(
                f"openbuda needs SQLite >= 3.35 (UPDATE … RETURNING), not {sqlite3.sqlite_version}"
            )
        level = synchronous.upper()
        if level not in SYNCHRONOUS_LEVELS:
            raise ValueError(
                f"synchronous must be one of {sorted(SYNCHRONOUS_LEVELS)}, not {synchronous!r}"
            )
        parsed = make_url(url)
        database = parsed.database
        if not database or database == ":memory:" or parsed.query.get("mode") == "memory":
            raise ValueError(
                f"SQLite store {url!r} must be a file: readers and the writer use separate "
                "connections, which an in-memory database cannot share"
            )
        sync_url = parsed.set(drivername="sqlite+pysqlite")
        pragmas = (
            f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
            "PRAGMA journal_mode = WAL",
            f"PRAGMA synchronous = {level}",
            "PRAGMA foreign_keys = ON",
        )
        self._write_engine = _engine(sync_url, pragmas, begin="BEGIN IMMEDIATE", pool_size=1)
        self._read_engine = _engine(sync_url, pragmas, begin="BEGIN", pool_size=READ_CONNECTIONS)
        self._writer = anyio.Lock()
        self._write_threads = anyio.CapacityLimiter(1)
        self._read_slots = anyio.Semaphore(READ_CONNECTIONS)
        self._read_threads = anyio.CapacityLimiter(READ_CONNECTIONS)
        super().__init__(url, traits=_TRAITS, write_engine=self._write_engine)

    def _connect(self, *, write: bool) -> AbstractAsyncContextManager[StatementRunner]:
        if write:
            return thread_transaction(self._write_engine, self._writer, self._write_threads)
        return thread_transaction(self._read_engine, self._read_slots, self._read_threads)

    async def _dispose(self) -> None:
        def dispose() -> None:
            self._read_engine.dispose()
            self._write_engine.dispose()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(dispose)


def _engine(url: Any, pragmas: tuple[str, ...], *, begin: str, pool_size: int) -> Engine:
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        connect_args={"check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:  # pyright: ignore[reportUnusedFunction]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:  # pyright: ignore[reportUnusedFunction]
        connection.exec_driver_sql(begin)

    return engine
