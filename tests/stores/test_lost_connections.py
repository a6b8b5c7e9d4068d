"""A PostgreSQL connection that breaks under a transaction (the server restarted, an operator
terminated it) raises ``Unavailable``, the retryable error the engine re-queues on, and the
pool gives the next transaction a working connection."""

from __future__ import annotations

import asyncpg  # pyright: ignore[reportMissingTypeStubs]
import pytest
from sqlalchemy import text

from openbuda.domain.errors import Unavailable
from openbuda.stores import SqlStore, open_store
from openbuda.stores._connections import _connection_failure  # pyright: ignore[reportPrivateUsage]
from tests.conftest import PostgresServer

pytestmark = pytest.mark.anyio


async def test_a_terminated_connection_is_unavailable_then_replaced(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    store: SqlStore = open_store(postgres_server.store_url(postgres_database))
    try:
        async with store._connect(write=True) as runner:  # pyright: ignore[reportPrivateUsage]
            pid = (await runner.execute(text("SELECT pg_backend_pid()"))).scalar()
        postgres_server.execute(f"SELECT pg_terminate_backend({int(pid)})")
        own: list[int] = []

        async def killed_under_a_transaction() -> None:
            async with store._connect(write=True) as runner:  # pyright: ignore[reportPrivateUsage]
                # the pool's ping replaced the dead connection; kill the replacement under
                # the open transaction
                own.append((await runner.execute(text("SELECT pg_backend_pid()"))).scalar())
                postgres_server.execute(f"SELECT pg_terminate_backend({own[0]})")
                await runner.execute(text("SELECT 1"))

        with pytest.raises(Unavailable):
            await killed_under_a_transaction()
        assert own[0] != pid
        async with store._connect(write=True) as runner:  # pyright: ignore[reportPrivateUsage]
            assert (await runner.execute(text("SELECT pg_backend_pid()"))).scalar() not in (
                pid,
                own[0],
            ), "a fresh connection"
    finally:
        await store.close()


def test_what_counts_as_a_lost_connection() -> None:
    wrapped = RuntimeError("the driver's wrapper")
    wrapped.__cause__ = asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"
    )
    assert _connection_failure(wrapped)
    assert _connection_failure(ConnectionResetError(104, "Connection reset by peer"))
    assert _connection_failure(asyncpg.exceptions.AdminShutdownError("terminated"))
    assert _connection_failure(asyncpg.exceptions.CannotConnectNowError("starting up"))
    assert not _connection_failure(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert not _connection_failure(asyncpg.exceptions.SerializationError("retry me"))
    assert not _connection_failure(None)


def test_a_driver_error_left_by_a_broken_connection_is_lost_too() -> None:
    busy = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert _connection_failure(busy)
