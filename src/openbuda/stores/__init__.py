"""Storage adapters: one SQL implementation of ``openbuda.ports.Store`` for SQLite and PostgreSQL.

Usage::

    store = open_store("sqlite+aiosqlite:///data/openbuda.db")  # no I/O yet
    await store.migrate()  # once at start: Alembic upgrade to head
    async with store.write() as tx:
        session = await tx.create_session(NewSession(space_id, agent_id), now)
    async with store.read() as tx:
        events = await tx.read_events(ReadEvents(space_id, session.id))
    await store.close()

``open_store`` picks the adapter by URL: ``sqlite+aiosqlite:///file`` (also ``sqlite:///file``)
or ``postgresql+asyncpg://…`` (also ``postgresql://`` and ``postgres://``). It is a plain
function that connects lazily. ``openbuda.stores.migrate.migrate(url)`` migrates a database
without keeping a store open.
"""

from __future__ import annotations

from openbuda.stores.postgres import PostgresStore
from openbuda.stores.sql import SqlStore
from openbuda.stores.sqlite import SqliteStore

__all__ = ["PostgresStore", "SqlStore", "SqliteStore", "normalize_url", "open_store"]

_ALIASES = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def normalize_url(url: str) -> str:
    """The async SQLAlchemy URL for ``url`` (``sqlite://`` → ``sqlite+aiosqlite://`` …)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ValueError(f"not a database URL: {url!r}")
    return f"{_ALIASES.get(scheme, scheme)}://{rest}"


def open_store(
    url: str, *, synchronous: str = "NORMAL", application_name: str | None = None
) -> SqlStore:
    """A store for ``url``; call ``await store.migrate()`` before first use, ``close()`` after.

    ``synchronous`` is SQLite's ``PRAGMA synchronous`` level (``NORMAL`` or ``FULL``, see
    ``Settings.sqlite_synchronous``); PostgreSQL ignores it. ``application_name`` names the
    PostgreSQL connections (``pg_stat_activity``: which process holds which connection).
    """
    url = normalize_url(url)
    scheme = url.partition("://")[0]
    if scheme == "sqlite+aiosqlite":
        return SqliteStore(url, synchronous=synchronous)
    if scheme == "postgresql+asyncpg":
        return PostgresStore(url, application_name=application_name)
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite+aiosqlite:///file or "
        "postgresql+asyncpg://user@host/db"
    )
