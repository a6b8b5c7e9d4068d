"""Schema migrations with Alembic, driven from code: no ``alembic.ini`` needed.

``await migrate(url)`` brings a database to the latest revision; ``Store.migrate()`` does the
same on an open store (that is what ``migrate`` calls). Revisions live in
``openbuda/stores/migrations/versions`` and ship in the wheel.

A new revision: change ``schema.py``, then against a database at the current head run
``await make_revision(url, "what changed")`` and review the generated file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "downgrade_connection",
    "make_revision",
    "migrate",
    "schema_revisions",
    "upgrade_connection",
]

MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None, *, url: str | None = None) -> Config:
    """An Alembic ``Config`` for openbuda's migrations, bound to ``connection`` when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def schema_revisions(connection: Connection) -> tuple[list[str], list[str]]:
    """``(unknown, missing)``: the revisions the database is at that this openbuda does not
    know (a newer openbuda migrated it), and the ones it lacks, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    current = MigrationContext.configure(connection).get_current_heads()
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        return unknown, []
    applied = (
        {revision.revision for revision in script.iterate_revisions(current, "base")}
        if current
        else set[str]()
    )
    oldest_first = reversed(list(script.walk_revisions()))
    return [], [r.revision for r in oldest_first if r.revision not in applied]


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    """Upgrade in the transaction ``connection`` is in (called through ``run_sync``)."""
    command.upgrade(alembic_config(connection), revision)


def downgrade_connection(connection: Connection, revision: str = "base") -> None:
    """Downgrade in the transaction ``connection`` is in (for tests and operators)."""
    command.downgrade(alembic_config(connection), revision)


async def migrate(url: str) -> None:
    """Bring the database at ``url`` to the latest revision."""
    from openbuda.stores import open_store

    store = open_store(url)
    try:
        await store.migrate()
    finally:
        await store.close()


async def make_revision(url: str, message: str) -> None:
    """Autogenerate a revision from the difference between ``schema.metadata`` and ``url``."""
    from openbuda.stores import open_store

    rev_id = f"{len(list((MIGRATIONS_DIR / 'versions').glob('[0-9]*.py'))) + 1:04d}"
    store = open_store(url)
    try:
        async with store._connect(write=True) as runner:
            await runner.run_sync(
                lambda sync: command.revision(
                    alembic_config(sync), message=message, autogenerate=True, rev_id=rev_id
                )
            )
    finally:
        await store.close()
