"""How the transactions of the SQL store reach the database, per driver.

The reads and writes (``_reads``, ``_tasks``, ``_writes``) run statements through a
``StatementRunner``: ``execute`` returns the buffered ``Rows`` of one statement. Two runners:

- ``async_transaction`` (PostgreSQL): an ``AsyncConnection`` of an async engine (asyncpg).
- ``thread_transaction`` (SQLite): a connection of a *sync* engine (the standard ``sqlite3``
  driver) driven from worker threads, one hop per statement. ``aiosqlite`` would take three or
  four thread hops per statement (cursor, execute, fetch, close); this takes one, and folds
  ``BEGIN`` into the first statement and ``COMMIT`` into the release of the connection. Only one
  coroutine uses a connection at a time, so ``sqlite3``'s thread check is off.

Ending a transaction (commit, rollback, returning the connection) is shielded from
cancellation in both, so a cancelled caller never leaves a connection half-done. On SQLite a
write lock that another process holds past ``busy_timeout`` raises ``Unavailable``
(retryable) instead of the driver's ``database is locked``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Protocol, TypeVar

import anyio
from sqlalchemy import Connection, Engine, Executable, Row
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError, OperationalError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from openbuda.domain.errors import Unavailable

__all__ = [
    "AnyRow",
    "Parameters",
    "Rows",
    "StatementRunner",
    "async_transaction",
    "thread_transaction",
]

T = TypeVar("T")
AnyRow = Row[*tuple[Any, ...]]
"""A row of any width."""
Parameters = dict[str, Any] | Sequence[dict[str, Any]] | None


class Rows:
    """The buffered outcome of one statement."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[AnyRow], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    @classmethod
    def of(cls, result: CursorResult[Any]) -> Rows:
        return cls(list(result.all()) if result.returns_rows else [], result.rowcount)

    def first(self) -> AnyRow | None:
        return self._rows[0] if self._rows else None

    def all(self) -> list[AnyRow]:
        return self._rows

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


class StatementRunner(Protocol):
    """One connection inside a transaction."""

    async def execute(self, statement: Executable, parameters: Parameters = None) -> Rows: ...

    async def run_sync(self, function: Callable[[Connection], T]) -> T:
        """Run ``function`` with the synchronous ``Connection`` (Alembic, tests)."""
        ...


# ---------------------------------------------------------------------------------------------
# asyncio drivers


class _AsyncRunner:
    __slots__ = ("_connection",)

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def execute(self, statement: Executable, parameters: Parameters = None) -> Rows:
        try:
            return Rows.of(await self._connection.execute(statement, parameters))
        except Exception as error:
            lost = _lost(error)
            if lost is None:
                raise
            raise lost from error

    async def run_sync(self, function: Callable[[Connection], T]) -> T:
        try:
            return await self._connection.run_sync(function)
        except Exception as error:
            lost = _lost(error)
            if lost is None:
                raise
            raise lost from error


def _lost(error: Exception) -> Unavailable | None:
    """``Unavailable`` (retryable) when the database connection broke (the server restarted,
    an administrator terminated it): not a fault of the work that was running on it."""
    if isinstance(error, DBAPIError):
        lost = error.connection_invalidated or _connection_failure(error.orig)
    else:  # the driver's own error, untranslated (``run_sync`` code, a broken protocol state)
        lost = _connection_failure(error)
    if lost:
        return Unavailable("the database connection was lost; the work is retried")
    return None


_LOST_STATES: Final = ("08", "57P")
_LOST_CLASSES: Final = frozenset({"InternalClientError", "ConnectionDoesNotExistError"})
"""asyncpg errors without such a state that a connection broken under an operation leaves
(``cannot switch to state …; another operation is in progress``)."""
"""SQLSTATE classes of a broken connection: ``08`` connection exceptions (asyncpg's
``ConnectionDoesNotExistError`` is ``08003``), ``57P`` operator intervention (admin or crash
shutdown, cannot connect now)."""


def _connection_failure(orig: BaseException | None) -> bool:
    """Whether the driver's error (or what it wraps) says the connection itself failed."""
    seen = 0
    while orig is not None and seen < 4:
        if isinstance(orig, OSError) or type(orig).__name__ in _LOST_CLASSES:
            return True
        state = getattr(orig, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_LOST_STATES):
            return True
        orig, seen = orig.__cause__, seen + 1
    return False


@asynccontextmanager
async def async_transaction(engine: AsyncEngine) -> AsyncGenerator[StatementRunner]:
    """A transaction on a connection of an async engine."""
    connection, transaction = await _begin(engine)
    try:
        try:
            yield _AsyncRunner(connection)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await transaction.rollback()
            raise
        with anyio.CancelScope(shield=True):
            try:
                await transaction.commit()
            except PendingRollbackError as error:  # it broke under a statement caught above
                raise Unavailable("the database connection was lost; nothing was saved") from error
            except Exception as error:
                lost = _lost(error)
                if lost is None:
                    raise
                raise lost from error
    finally:
        with anyio.CancelScope(shield=True):
            await connection.close()


async def _begin(engine: AsyncEngine) -> tuple[AsyncConnection, AsyncTransaction]:
    with anyio.CancelScope(shield=True):
        try:
            connection = await engine.connect()
        except SATimeoutError as error:
            raise Unavailable(
                "no database connection was free in time; the pool is exhausted"
            ) from error
        except (DBAPIError, OSError) as error:  # the server is down or restarting
            raise Unavailable(f"cannot reach the database: {error}") from error
        try:
            transaction = await connection.begin()
        except BaseException:
            await connection.close()
            raise
        return connection, transaction
    raise AssertionError("unreachable: a shielded scope swallows nothing")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# sync drivers in worker threads


class _ThreadRunner:
    """A sync connection, checked out and begun lazily by the first statement."""

    __slots__ = ("_connection", "_engine", "_limiter")

    def __init__(self, engine: Engine, limiter: anyio.CapacityLimiter) -> None:
        self._engine = engine
        self._limiter = limiter
        self._connection: Connection | None = None

    def _open(self) -> Connection:
        if self._connection is None:
            connection = self._engine.connect()
            try:
                connection.begin()
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _execute(self, statement: Executable, parameters: Parameters) -> Rows:
        try:
            return Rows.of(self._open().execute(statement, parameters))
        except OperationalError as error:
            busy = _busy(error)
            if busy is None:
                raise
            raise busy from error

    async def execute(self, statement: Executable, parameters: Parameters = None) -> Rows:
        return await anyio.to_thread.run_sync(
            self._execute, statement, parameters, limiter=self._limiter
        )

    def _run(self, function: Callable[[Connection], T]) -> T:
        try:
            return function(self._open())
        except OperationalError as error:
            busy = _busy(error)
            if busy is None:
                raise
            raise busy from error

    async def run_sync(self, function: Callable[[Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._run, function, limiter=self._limiter)

    def _end(self, commit: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            transaction = connection.get_transaction()
            if transaction is not None:
                if commit:
                    transaction.commit()
                else:
                    transaction.rollback()
        finally:
            connection.close()

    async def end(self, commit: bool) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._end, commit, limiter=self._limiter)


def _busy(error: OperationalError) -> Unavailable | None:
    """``Unavailable`` (retryable) when SQLite stayed locked by another writer too long."""
    message = str(error.orig)
    if "database is locked" not in message and "database is busy" not in message:
        return None
    return Unavailable("the database is busy: another process held its write lock too long")


@asynccontextmanager
async def thread_transaction(
    engine: Engine, slot: AbstractAsyncContextManager[Any], threads: anyio.CapacityLimiter
) -> AsyncGenerator[StatementRunner]:
    """A transaction on a connection of a sync engine, each statement in a worker thread.

    ``slot`` is held for the whole transaction and admits no more transactions than the pool
    has connections, so a worker thread never waits for a connection while holding one of
    ``threads``' tokens that the transactions holding connections need to finish.
    """
    async with slot:
        runner = _ThreadRunner(engine, threads)
        try:
            yield runner
        except BaseException:
            await runner.end(commit=False)
            raise
        await runner.end(commit=True)
