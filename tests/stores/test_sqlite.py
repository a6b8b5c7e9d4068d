"""What is particular to the SQLite adapter: pragmas, one writer, writers in other processes."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from sqlalchemy import make_url, text

import openbuda
from openbuda.domain.errors import Unavailable
from openbuda.domain.events import EventType, NewEvent
from openbuda.domain.records import Role
from openbuda.ports import NewAgent, NewSession, ReadEvents
from openbuda.stores import SqliteStore, SqlStore, open_store
from openbuda.stores._connections import StatementRunner

pytestmark = pytest.mark.anyio
sqlite_only = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)

T0 = datetime(2025, 1, 1, tzinfo=UTC)

CHILD = """
import sys, anyio
from datetime import UTC, datetime
from openbuda.domain.errors import Unavailable
from openbuda.domain.events import EventType, NewEvent
from openbuda.stores import open_store

async def main(url: str, space_id: str, session_id: str, mode: str) -> None:
    store = open_store(url)
    try:
        if mode == "hold":
            async with store.write() as tx:
                await tx.append(space_id, session_id, [NewEvent(EventType.MESSAGE, {"text": "held"})], datetime.now(UTC))
                print("locked", flush=True)
                await anyio.sleep(0.5)
        else:
            for n in range(100):
                async with store.write() as tx:
                    await tx.append(space_id, session_id, [NewEvent(EventType.MESSAGE, {"text": f"child {n}"})], datetime.now(UTC))
                if n == 0:
                    print("ready", flush=True)
    finally:
        await store.close()
    print("done", flush=True)

anyio.run(main, *sys.argv[1:])
"""


def message(text: str) -> NewEvent:
    return NewEvent(EventType.MESSAGE, {"text": text})


async def new_session(store: SqlStore) -> tuple[str, str]:
    async with store.write() as tx:
        space = await tx.create_space("s", T0)
        await tx.create_member(space.id, "owner", Role.OWNER, T0)
        agent = await tx.create_agent(NewAgent(space.id, "a"), T0)
        session = await tx.create_session(NewSession(space.id, agent.id), T0)
    return space.id, session.id


async def start_child(store_url: str, space_id: str, session_id: str, mode: str) -> Process:
    source = str(Path(openbuda.__path__[0]).parent)
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    return await anyio.open_process(
        [sys.executable, "-W", "error", "-c", CHILD, store_url, space_id, session_id, mode],
        env={**os.environ, "PYTHONPATH": path},
    )


async def read_line(process: Process) -> str:
    assert process.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        data += await process.stdout.receive(1)
    return data.decode().strip()


@sqlite_only
async def test_every_connection_has_the_pragmas(store: SqlStore) -> None:
    expected = {"journal_mode": "wal", "busy_timeout": 10000, "synchronous": 1, "foreign_keys": 1}

    async def pragmas(runner: StatementRunner) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in expected:
            found[name] = (await runner.execute(text(f"PRAGMA {name}"))).scalar()
        return found

    for write in (True, False):
        async with store._connect(write=write) as runner:
            assert await pragmas(runner) == expected


@sqlite_only
async def test_synchronous_is_configurable(store_url: str) -> None:
    store = open_store(store_url, synchronous="full")
    try:
        async with store._connect(write=True) as runner:
            assert (await runner.execute(text("PRAGMA synchronous"))).scalar() == 2
    finally:
        await store.close()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", synchronous="OFTEN; DROP TABLE x")
    for url in ("sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"):
        with pytest.raises(ValueError, match="must be a file"):
            open_store(url)
    with pytest.raises(ValueError, match="unsupported"):
        open_store("mysql://localhost/db")


@sqlite_only
async def test_a_nested_write_in_the_same_task_fails_instead_of_hanging(store: SqlStore) -> None:
    with anyio.fail_after(5):
        async with store.write():
            with pytest.raises(RuntimeError):
                async with store.write():
                    pass


@sqlite_only
async def test_writers_in_another_process_interleave_without_gaps(
    store: SqlStore, store_url: str
) -> None:
    space_id, session_id = await new_session(store)
    child = await start_child(store_url, space_id, session_id, "many")
    async with child:
        with anyio.fail_after(30):
            assert await read_line(child) == "ready"
        for n in range(100):
            async with store.write() as tx:
                await tx.append(
                    space_id, session_id, [NewEvent(EventType.MESSAGE, {"text": f"parent {n}"})], T0
                )
        with anyio.fail_after(30):
            assert await read_line(child) == "done"
            assert await child.wait() == 0
    async with store.read() as tx:
        events = await tx.read_events(ReadEvents(space_id, session_id))
    assert [event.seq for event in events] == list(range(1, 201))
    texts = [event.data["text"] for event in events]
    assert sorted(texts) == sorted(
        [f"parent {n}" for n in range(100)] + [f"child {n}" for n in range(100)]
    )


@sqlite_only
async def test_a_writer_waits_for_another_process_to_commit(
    store: SqlStore, store_url: str
) -> None:
    space_id, session_id = await new_session(store)
    child = await start_child(store_url, space_id, session_id, "hold")
    async with child:
        with anyio.fail_after(30):
            assert await read_line(child) == "locked"
            started = time.monotonic()
            async with store.write() as tx:
                stored = await tx.append(
                    space_id, session_id, [NewEvent(EventType.MESSAGE, {"text": "after"})], T0
                )
            waited = time.monotonic() - started
            assert await read_line(child) == "done"
            assert await child.wait() == 0
    assert [event.seq for event in stored] == [2]
    assert waited > 0.2


@sqlite_only
async def test_a_lock_held_past_the_busy_timeout_is_unavailable(
    store: SqlStore, store_url: str
) -> None:
    space_id, session_id = await new_session(store)
    impatient = SqliteStore(store_url, busy_timeout_ms=100)
    holder = sqlite3.connect(make_url(store_url).database or "", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable) as caught:
            async with impatient.write() as tx:
                await tx.append(space_id, session_id, [message("blocked")], T0)
        assert caught.value.retryable
        holder.execute("ROLLBACK")
        async with impatient.write() as tx:
            stored = await tx.append(space_id, session_id, [message("through")], T0)
        assert [event.seq for event in stored] == [1]
    finally:
        holder.close()
        await impatient.close()


async def test_migrate_waits_for_a_lock_held_past_busy_timeout(tmp_path: Path) -> None:
    """Another process migrating holds the write lock longer than ``busy_timeout``: migrate
    waits for it instead of failing the start."""
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")
    store = SqliteStore(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=50)
    try:
        with pytest.raises(Unavailable):  # a plain write gives up after busy_timeout
            async with store.write() as tx:
                await tx.create_space("x", datetime.now(UTC))

        async def release() -> None:
            await anyio.sleep(0.5)
            holder.execute("COMMIT")

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(release)
                await store.migrate()
        async with store.write() as tx:
            assert (await tx.create_space("x", datetime.now(UTC))).name == "x"
    finally:
        holder.close()
        await store.close()
