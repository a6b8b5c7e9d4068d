"""Alembic environment of openbuda's schema, run programmatically by ``openbuda.stores.migrate``.

The caller passes an open SQLAlchemy ``Connection`` (already in a transaction) in
``config.attributes["connection"]``; there is no ``alembic.ini``. Offline mode (``--sql``)
renders the DDL for the URL in ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from openbuda.stores.schema import metadata

config = context.config


def _run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "run openbuda's migrations through openbuda.stores.migrate (it passes a connection)"
        )
    _run_online(connection)
