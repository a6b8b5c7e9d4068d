"""The PostgreSQL adapter (asyncpg): concurrent writers coordinated by row locks.

- Transactions run at ``READ COMMITTED``; reads and writes share one connection pool.
- ``lock_session`` is ``SELECT … FOR UPDATE``; ``claimable_tasks`` and ``expired_leases`` lock
  the task and session rows with ``FOR UPDATE SKIP LOCKED``, so concurrent workers never claim
  the same task and never wait for each other.
- Lock order: a write that locks a task row locks its session row first, everywhere in the
  store (see ``_tasks``), so two writers cannot deadlock on a session and its task.
- ``lock_keys`` (bootstrap) takes a transaction-level advisory lock; ``migrate()`` holds another,
  so processes that start together migrate one after the other.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from openbuda.ports import StoreCapabilities
from openbuda.stores._connections import StatementRunner, async_transaction
from openbuda.stores._queries import DialectTraits
from openbuda.stores.sql import SqlStore

__all__ = ["PostgresStore"]

MIGRATION_LOCK_KEY: Final = 0x6F70656E62756461  # "openbuda"
KEYS_LOCK_KEY: Final = 0x6F62756461_6B6579  # "obuda" "key"
_POOL_SIZE: Final = 10
_POOL_OVERFLOW: Final = 20

_TRAITS: Final = DialectTraits(
    capabilities=StoreCapabilities(dialect="postgresql", skip_locked=True, concurrent_writers=True),
    row_locks=True,
    keys_lock=text(f"SELECT pg_advisory_xact_lock({KEYS_LOCK_KEY})"),
)
_MIGRATION_LOCK: Final = text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")


class PostgresStore(SqlStore):
    """A store in a PostgreSQL database (``postgresql+asyncpg://user@host/db``)."""

    def __init__(self, url: str, *, application_name: str | None = None) -> None:
        settings = {"application_name": application_name[:63]} if application_name else {}
        self._engine = create_async_engine(
            url,
            pool_size=_POOL_SIZE,
            max_overflow=_POOL_OVERFLOW,
            isolation_level="READ COMMITTED",
            pool_pre_ping=True,  # a restarted server leaves the pool's connections dead
            connect_args={"server_settings": settings} if settings else {},
        )
        super().__init__(url, traits=_TRAITS, write_engine=self._engine.sync_engine)

    def _connect(self, *, write: bool) -> AbstractAsyncContextManager[StatementRunner]:
        return async_transaction(self._engine)

    async def _before_migration(self, runner: StatementRunner) -> None:
        await runner.execute(_MIGRATION_LOCK)

    async def _dispose(self) -> None:
        await self._engine.dispose()
