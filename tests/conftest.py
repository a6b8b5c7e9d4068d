"""Shared fixtures: the anyio backend and a migrated, empty store for each backend.

``store_url`` and ``store`` are parametrised with ids ``sqlite`` and ``postgres``:

- ``sqlite``: a fresh file under ``tmp_path`` (a copy of a database migrated once per run);
- ``postgres``: one database per test run (``openbuda_test_<pid>_<random>``, created on the
  server of ``OPENBUDA_TEST_POSTGRES_URL`` and dropped at the end; databases of killed runs are
  dropped by the next run), emptied before each test. Without the variable the ``postgres``
  cases are skipped.

``fresh_database_url`` is an empty, unmigrated database of the same backend (migration tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # pyright: ignore[reportMissingTypeStubs]
import pytest
from sqlalchemy import make_url

from openbuda.stores import SqlStore, open_store
from openbuda.stores.migrate import migrate

POSTGRES_ENV = "OPENBUDA_TEST_POSTGRES_URL"
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
_DATABASE_PREFIX = "openbuda_test_"
TABLES = (
    "processes",
    "computer_placements",
    "drive_versions",
    "drive_files",
    "drives",
    "events",
    "tasks",
    "sessions",
    "agents",
    "api_keys",
    "members",
    "spaces",
)

T = TypeVar("T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def run_in_thread(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``coroutine()`` on a fresh event loop in another thread: setup that stays out of
    the tests' event loop (session fixtures, sync fixtures)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coroutine())).result()


# ---------------------------------------------------------------------------------------------
# PostgreSQL


class PostgresServer:
    """The server of ``OPENBUDA_TEST_POSTGRES_URL``: creates and drops test databases."""

    def __init__(self, url: str) -> None:
        self._url = make_url(url).set(drivername="postgresql")

    def dsn(self, database: str | None = None) -> str:
        url = self._url if database is None else self._url.set(database=database)
        return url.render_as_string(hide_password=False)

    def store_url(self, database: str) -> str:
        return "postgresql+asyncpg://" + self.dsn(database).split("://", 1)[1]

    def execute(self, *statements: str, database: str | None = None) -> None:
        async def run() -> None:
            connection = await asyncpg.connect(self.dsn(database))
            try:
                for statement in statements:
                    await connection.execute(statement)
            finally:
                await connection.close()

        run_in_thread(run)

    def create_database(self) -> str:
        """A new empty database named after this process (see ``drop_abandoned``)."""
        name = f"{_DATABASE_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_abandoned(self) -> None:
        """Drop the test databases of runs that were killed before they could clean up: those
        of processes of this host that are gone, unless someone is connected to them."""

        async def run() -> None:
            connection = await asyncpg.connect(self.dsn())
            try:
                names = await connection.fetch(
                    "SELECT datname FROM pg_database WHERE datname LIKE $1",
                    _DATABASE_PREFIX.replace("_", "\\_") + "%",
                )
                for (name,) in names:
                    pid = name.removeprefix(_DATABASE_PREFIX).partition("_")[0]
                    if pid.isdigit() and not _alive(int(pid)):
                        with contextlib.suppress(asyncpg.PostgresError):
                            await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            finally:
                await connection.close()

        run_in_thread(run)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    server = PostgresServer(url)
    server.drop_abandoned()
    return server


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A migrated database for this test run (the tests empty it before use)."""
    name = postgres_server.create_database()
    try:
        run_in_thread(lambda: migrate(postgres_server.store_url(name)))
        yield name
    finally:
        postgres_server.drop_database(name)


# ---------------------------------------------------------------------------------------------
# SQLite


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies."""
    path = tmp_path_factory.mktemp("sqlite-template") / "openbuda.db"
    run_in_thread(lambda: migrate(f"sqlite+aiosqlite:///{path}"))
    assert not path.with_name(path.name + "-wal").exists(), "template not checkpointed"
    return path


# ---------------------------------------------------------------------------------------------
# Stores


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a migrated, empty database of the backend ``request.param``."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "openbuda.db"
        shutil.copyfile(template, path)
        return f"sqlite+aiosqlite:///{path}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    database: str = request.getfixturevalue("postgres_database")
    server.execute(*(f"DELETE FROM {table}" for table in TABLES), database=database)
    return server.store_url(database)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    """A migrated, empty store (``sqlite`` / ``postgres``), closed after the test."""
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(params=BACKENDS)
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database without any schema, dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        yield server.store_url(name)
    finally:
        server.drop_database(name)
