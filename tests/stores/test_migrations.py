"""The Alembic revisions create exactly ``schema.metadata``, on every backend."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from openbuda.stores import SqlStore, open_store
from openbuda.stores.migrate import MIGRATIONS_DIR, alembic_config, downgrade_connection, migrate
from openbuda.stores.schema import metadata

pytestmark = pytest.mark.anyio


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, metadata)


def _state(connection: Connection) -> tuple[str | None, list[str]]:
    revision = MigrationContext.configure(connection).get_current_revision()
    return revision, sorted(inspect(connection).get_table_names())


async def _run(store: SqlStore, function: Any) -> Any:
    async with store._connect(write=True) as runner:
        return await runner.run_sync(function)


async def test_migrated_schema_matches_the_metadata(fresh_database_url: str) -> None:
    await migrate(fresh_database_url)
    store = open_store(fresh_database_url)
    try:
        assert await _run(store, _differences) == []
        revision, tables = await _run(store, _state)
    finally:
        await store.close()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision == head
    assert tables == sorted([*metadata.tables, "alembic_version"])


async def test_migrate_again_and_concurrently_is_harmless(fresh_database_url: str) -> None:
    stores = [open_store(fresh_database_url) for _ in range(3)]
    try:
        async with anyio.create_task_group() as group:
            for store in stores:
                group.start_soon(store.migrate)
        await stores[0].migrate()
        assert await _run(stores[0], _differences) == []
    finally:
        for store in stores:
            await store.close()


async def test_downgrade_to_base_and_upgrade_again(fresh_database_url: str) -> None:
    store = open_store(fresh_database_url)
    try:
        await store.migrate()
        await _run(store, downgrade_connection)
        assert await _run(store, _state) == (None, ["alembic_version"])
        await store.migrate()
        assert await _run(store, _differences) == []
    finally:
        await store.close()


def test_the_revisions_ship_inside_the_package() -> None:
    import openbuda

    assert MIGRATIONS_DIR.parents[1].samefile(openbuda.__path__[0])
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()
