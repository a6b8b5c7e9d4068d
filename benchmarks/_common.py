"""What the benchmark scripts share: backends, settings, statistics and plain-text tables.

Not a test helper and not part of the package: the scripts in this folder import it as a
sibling module (``python benchmarks/<name>.py`` puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import secrets
import sqlite3
import statistics
import sys
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # pyright: ignore[reportMissingTypeStubs]
from sqlalchemy import Executable, Row, create_engine, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from openbuda.domain.principal import Principal
from openbuda.domain.records import Role
from openbuda.ports import Store
from openbuda.settings import Settings

__all__ = [
    "POSTGRES_ENV",
    "Backend",
    "LogTally",
    "SideDatabase",
    "add_backend_arguments",
    "backends",
    "bench_settings",
    "fmt_bytes",
    "fmt_ms",
    "fmt_ratio",
    "machine_line",
    "make_principal",
    "median",
    "percentile",
    "print_table",
    "title",
]

POSTGRES_ENV = "OPENBUDA_TEST_POSTGRES_URL"


# ---------------------------------------------------------------------------------------------
# Backends


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    """``sqlite`` or ``postgresql``."""
    url: str
    """The SQLAlchemy async URL of a fresh, empty database."""
    sqlite_path: Path | None = None


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get(POSTGRES_ENV),
        help=(
            "PostgreSQL server to measure too (a fresh database is created on it and dropped "
            f"at the end); default ${POSTGRES_ENV}"
        ),
    )
    parser.add_argument("--no-postgres", action="store_true", help="measure SQLite only")
    parser.add_argument("--no-sqlite", action="store_true", help="measure PostgreSQL only")


@asynccontextmanager
async def backends(args: argparse.Namespace, workdir: Path) -> AsyncGenerator[list[Backend]]:
    """SQLite (a file under ``workdir``) and, when configured, a fresh PostgreSQL database."""
    found: list[Backend] = []
    if not args.no_sqlite:
        path = workdir / "bench.db"
        found.append(Backend("sqlite", f"sqlite+aiosqlite:///{path}", sqlite_path=path))
    server_url: str | None = None if args.no_postgres else args.postgres
    database: str | None = None
    if server_url:
        database = f"openbuda_bench_{secrets.token_hex(4)}"
        await _postgres_execute(server_url, f'CREATE DATABASE "{database}"')
        url = make_url(server_url).set(drivername="postgresql+asyncpg", database=database)
        found.append(Backend("postgresql", url.render_as_string(hide_password=False)))
    try:
        yield found
    finally:
        if server_url and database:
            await _postgres_execute(
                server_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
            )


async def _postgres_execute(server_url: str, statement: str) -> None:
    dsn = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection: Any = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


class SideDatabase:
    """A connection of the benchmark's own to the store's database, for seeding and counting;
    nothing measured goes through it. SQLite: the ``sqlite3`` driver in a worker thread;
    PostgreSQL: asyncpg."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        if self._sqlite:
            self._sync = create_engine(
                parsed.set(drivername="sqlite+pysqlite"), connect_args={"timeout": 60}
            )
        else:
            self._async = create_async_engine(parsed)

    async def execute(
        self, statement: Executable, parameters: list[dict[str, Any]] | None = None
    ) -> list[Row[Any]]:
        """Run ``statement`` in a transaction of its own; the rows it returned."""
        if not self._sqlite:
            async with self._async.begin() as connection:
                result = await connection.execute(statement, parameters)
                return list(result.all()) if result.returns_rows else []

        def run() -> list[Row[Any]]:
            with self._sync.begin() as connection:
                result = connection.execute(statement, parameters)
                return list(result.all()) if result.returns_rows else []

        return await anyio.to_thread.run_sync(run)

    async def close(self) -> None:
        if self._sqlite:
            await anyio.to_thread.run_sync(self._sync.dispose)
        else:
            await self._async.dispose()


class LogTally(logging.Handler):
    """Counts what openbuda logs at WARNING and above instead of printing every traceback; a
    report prints the count and the first message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            exc = record.exc_info[1] if record.exc_info else None
            self.first = record.getMessage() + (f" ({type(exc).__name__}: {exc})" if exc else "")

    def install(self) -> LogTally:
        logger = logging.getLogger("openbuda")
        logger.addHandler(self)
        logger.propagate = False
        return self

    def take(self) -> str:
        """``"none"`` or the count and first message since the last call; resets."""
        text = "none" if not self.count else f"{self.count} (first: {self.first})"
        self.count, self.first = 0, None
        return text


def bench_settings(home: Path, **overrides: Any) -> Settings:
    """Engine settings for in-process benchmarks: test models only, a low poll interval."""
    values: dict[str, Any] = {
        "home": home,
        "block_real_models": True,
        "poll_seconds": 0.02,
        "heartbeat_seconds": 5.0,
        "lease_seconds": 60.0,
        "model_retries": 0,
    }
    values.update(overrides)
    return Settings(**values)


async def make_principal(store: Store, name: str = "bench") -> Principal:
    now = datetime.now(UTC)
    async with store.write() as tx:
        space = await tx.create_space(name, now)
        member = await tx.create_member(space.id, "owner", Role.OWNER, now)
    return Principal(space.id, member.id, Role.OWNER)


# ---------------------------------------------------------------------------------------------
# Statistics and output


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}×"


def fmt_bytes(value: float) -> str:
    return f"{value:,.0f} B"


def title(text: str) -> None:
    print()
    print(text)
    print("─" * min(len(text), 100))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table: the first column left-aligned, the others right-aligned."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    print(line(headers))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · Python {platform.python_version()} · "
        f"SQLite {sqlite3.sqlite_version} · {os.cpu_count()} cores · load average {load} · "
        f"{sys.platform}"
    )
