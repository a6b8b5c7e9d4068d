"""The SQL store: one SQLAlchemy Core implementation of ``Store`` shared by SQLite and PostgreSQL.

``SqlStore`` hands out transactions; the dialect adapters (``sqlite.SqliteStore``,
``postgres.PostgresStore``) say how a transaction gets its connection (``_connect``) and how
writers are serialised.

- ``store.write()`` yields a ``WriteTx`` in a transaction that commits on normal exit and rolls
  back on an exception (also a cancellation). Ending it is shielded from cancellation.
- ``store.read()`` yields an ``AnyReadTx`` over a read transaction (one consistent snapshot).

Do not open a write transaction inside another one in the same task: on SQLite that would wait
for itself (``RuntimeError`` is raised instead), on PostgreSQL it may wait on its own row locks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Final, Self

import anyio
from sqlalchemy import Engine

from openbuda.domain.errors import Unavailable
from openbuda.ports import AnyReadTx, StoreCapabilities, WriteTx
from openbuda.stores._connections import StatementRunner
from openbuda.stores._queries import DialectTraits
from openbuda.stores._reads import SqlReadTx
from openbuda.stores._writes import SqlWriteTx
from openbuda.stores.migrate import schema_revisions, upgrade_connection

__all__ = ["MIGRATION_WAIT_S", "SqlReadTx", "SqlStore", "SqlWriteTx"]

log = logging.getLogger("openbuda.stores")

MIGRATION_WAIT_S: Final = 300.0
"""How long ``migrate`` waits for a database another migration keeps busy."""


class SqlStore:
    """A ``Store`` over SQLAlchemy; use ``openbuda.stores.open_store`` to make one."""

    capabilities: StoreCapabilities

    def __init__(self, url: str, *, traits: DialectTraits, write_engine: Engine) -> None:
        self.url = url
        self.capabilities = traits.capabilities
        self._traits = traits
        self.write_engine = write_engine
        """The (sync) engine of write transactions, e.g. to listen to its events in tests."""
        self._closed = False

    # -- what the adapters provide ----------------------------------------------------------

    def _connect(self, *, write: bool) -> AbstractAsyncContextManager[StatementRunner]:
        """A connection in a new transaction (a write one when ``write``)."""
        raise NotImplementedError

    async def _before_migration(self, runner: StatementRunner) -> None:
        """Serialise concurrent migrations (the SQLite write lock already does)."""

    async def _dispose(self) -> None:
        raise NotImplementedError

    # -- transactions -----------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncGenerator[WriteTx]:
        async with self._connect(write=True) as runner:
            yield SqlWriteTx(runner, self._traits)

    @asynccontextmanager
    async def _read(self) -> AsyncGenerator[AnyReadTx]:
        async with self._connect(write=False) as runner:
            yield SqlReadTx(runner, self._traits)

    def write(self) -> AbstractAsyncContextManager[WriteTx]:
        """A write transaction; commits on normal exit, rolls back on an exception."""
        return self._write()

    def read(self) -> AbstractAsyncContextManager[AnyReadTx]:
        """A read transaction: one consistent snapshot, never blocked by writers."""
        return self._read()

    # -- lifecycle --------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision (safe to run concurrently).

        A migration another process (or store) is running holds the write lock; a busy
        database (``Unavailable``) is therefore waited for, up to ``MIGRATION_WAIT_S``: on a
        loaded machine one migration can outlast SQLite's ``busy_timeout``.
        """
        deadline = time.monotonic() + MIGRATION_WAIT_S
        while True:
            try:
                async with self._connect(write=True) as runner:
                    await self._before_migration(runner)
                    await runner.run_sync(upgrade_connection)
                return
            except Unavailable:
                if time.monotonic() >= deadline:
                    raise
                log.info("the database is busy (another migration?); trying again")
                await anyio.sleep(0.5)

    async def schema_revisions(self) -> tuple[list[str], list[str]]:
        """``(unknown, missing)`` revisions of the database's schema, read without changing
        anything (``migrate.schema_revisions``)."""
        async with self._connect(write=False) as runner:
            return await runner.run_sync(schema_revisions)

    async def close(self) -> None:
        """Dispose of the engines and their connections; the store is unusable afterwards."""
        if not self._closed:
            self._closed = True
            await self._dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
