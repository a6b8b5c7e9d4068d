"""The SQL store: one SQLAlchemy Core implementation of ``Store`` shared by SQLite and PostgreSQL.

``SqlStore`` owns a write engine and a read engine (the same engine on PostgreSQL) and hands
out transactions:

- ``store.write()`` yields a ``WriteTx`` in a transaction that commits on normal exit and rolls
  back on an exception. Ending the transaction (commit, rollback, returning the connection) is
  shielded from cancellation, so a cancelled caller never leaves a connection half-done.
- ``store.read()`` yields an ``AnyReadTx`` over a read transaction (one consistent snapshot).

Do not open a write transaction inside another one in the same task: on SQLite that would wait
for itself (``RuntimeError`` is raised instead), on PostgreSQL it may wait on its own row locks.

The dialect adapters (``sqlite.SqliteStore``, ``postgres.PostgresStore``) configure the engines
and say how writers are serialised; see their modules.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from types import TracebackType
from typing import Any, Self

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from openbuda.ports import AnyReadTx, StoreCapabilities, WriteTx
from openbuda.stores._queries import DialectTraits
from openbuda.stores._reads import SqlReadTx
from openbuda.stores._writes import SqlWriteTx
from openbuda.stores.migrate import upgrade_connection

__all__ = ["SqlReadTx", "SqlStore", "SqlWriteTx"]


class SqlStore:
    """A ``Store`` over SQLAlchemy async engines; use ``openbuda.stores.open_store`` to make one."""

    capabilities: StoreCapabilities

    def __init__(
        self,
        url: str,
        *,
        write_engine: AsyncEngine,
        read_engine: AsyncEngine,
        traits: DialectTraits,
    ) -> None:
        self.url = url
        self.capabilities = traits.capabilities
        self._write_engine = write_engine
        self._read_engine = read_engine
        self._traits = traits
        self._closed = False

    # -- transactions -----------------------------------------------------------------------

    def _write_gate(self) -> AbstractAsyncContextManager[Any]:
        """What a writer holds around its transaction (SQLite: the one-writer lock)."""
        return nullcontext()

    @asynccontextmanager
    async def _transaction(self, engine: AsyncEngine) -> AsyncGenerator[AsyncConnection]:
        connection, transaction = await _begin(engine)
        try:
            try:
                yield connection
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await transaction.rollback()
                raise
            with anyio.CancelScope(shield=True):
                await transaction.commit()
        finally:
            with anyio.CancelScope(shield=True):
                await connection.close()

    @asynccontextmanager
    async def _write_connection(self) -> AsyncGenerator[AsyncConnection]:
        async with self._write_gate(), self._transaction(self._write_engine) as connection:
            yield connection

    @asynccontextmanager
    async def _write(self) -> AsyncGenerator[WriteTx]:
        async with self._write_connection() as connection:
            yield SqlWriteTx(connection, self._traits)

    @asynccontextmanager
    async def _read(self) -> AsyncGenerator[AnyReadTx]:
        async with self._transaction(self._read_engine) as connection:
            yield SqlReadTx(connection, self._traits)

    def write(self) -> AbstractAsyncContextManager[WriteTx]:
        """A write transaction; commits on normal exit, rolls back on an exception."""
        return self._write()

    def read(self) -> AbstractAsyncContextManager[AnyReadTx]:
        """A read transaction: one consistent snapshot, never blocked by writers."""
        return self._read()

    # -- lifecycle --------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision (safe to run concurrently)."""
        async with self._write_connection() as connection:
            await self._before_migration(connection)
            await connection.run_sync(upgrade_connection)

    async def _before_migration(self, connection: AsyncConnection) -> None:
        """Serialise concurrent migrations (the SQLite write lock already does)."""

    async def close(self) -> None:
        """Dispose of the engines and their connections; the store is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        await self._write_engine.dispose()
        if self._read_engine is not self._write_engine:
            await self._read_engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _begin(engine: AsyncEngine) -> tuple[AsyncConnection, AsyncTransaction]:
    """A connection in a new transaction; shielded, so a cancellation cannot leak it half-open."""
    with anyio.CancelScope(shield=True):
        connection = await engine.connect()
        try:
            transaction = await connection.begin()
        except BaseException:
            await connection.close()
            raise
        return connection, transaction
    raise AssertionError("unreachable: a shielded scope swallows nothing")  # pragma: no cover
