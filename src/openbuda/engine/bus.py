"""The bus: how one process hears what the others did (ARCHITECTURE §3, §9).

Three things cross process boundaries: a session's events (to the SSE streams of whichever API
process its clients are connected to), "a task was queued" (so a worker claims it at once, not
at its next poll) and "task X was cancelled" (so the worker running it stops at once).

::

    bus = open_bus(settings.resolved_database_url(), process_id=worker_id)
    bus.on_queued = organizer.wake
    bus.on_cancelled = organizer.cancel_task
    deps = ServiceDeps(store, clock, bus.broadcaster, on_queued=bus.queued,
                       on_cancelled=bus.cancelled)
    await task_group.start(bus.run)

The embedded ``Bus`` (SQLite: one process) is all local: ``queued`` and ``cancelled`` call the
callbacks, the broadcaster reaches this process's subscribers. On PostgreSQL ``open_bus`` returns
a ``PgBus`` (``openbuda.engine.pgbus``) that also tells every other process through
``LISTEN/NOTIFY``. Either way a subscriber may receive ``{"type": "stream.resync"}`` (with a
``seq`` when one event is concerned): live events may have been missed, read the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import anyio
from anyio.abc import TaskStatus as AnyioTaskStatus

from openbuda.engine.broadcaster import InProcessBroadcaster

__all__ = ["RESYNC", "Bus", "open_bus"]

RESYNC: Final = "stream.resync"
"""The type of the item a subscriber gets when live events may have been lost."""

_POSTGRES_SCHEMES: Final = ("postgresql", "postgres", "postgresql+asyncpg")


def _nothing(*_args: object) -> None:
    return None


class Bus:
    """The embedded (one-process) bus: every signal and event stays in this process."""

    def __init__(self, broadcaster: InProcessBroadcaster | None = None) -> None:
        self.broadcaster = broadcaster if broadcaster is not None else InProcessBroadcaster()
        self.on_queued: Callable[[], None] = _nothing
        """This process's reaction to a queued task (the organizer's ``wake``)."""
        self.on_cancelled: Callable[[str], None] = _nothing
        """This process's reaction to a cancelled task (the organizer's ``cancel_task``)."""

    def queued(self) -> None:
        """A transaction queued a task (or freed a slot): wake the workers."""
        self.on_queued()

    def cancelled(self, task_id: str) -> None:
        """A transaction cancelled ``task_id``: stop its run wherever it is."""
        self.on_cancelled(task_id)

    async def run(self, *, task_status: AnyioTaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the bus connected until cancelled (nothing to do in one process)."""
        task_status.started()
        await anyio.sleep_forever()


def open_bus(database_url: str, *, process_id: str, events: bool = True) -> Bus:
    """The bus for the processes sharing ``database_url``: a ``PgBus`` on PostgreSQL (asyncpg
    is imported only then), the embedded ``Bus`` otherwise. ``process_id`` names this process
    in ``pg_stat_activity`` (``application_name`` ``openbuda bus <process_id>``); ``events``
    false: a worker-only process hears signals only (no stream clients to feed)."""
    scheme = database_url.partition("://")[0]
    if scheme in _POSTGRES_SCHEMES:
        from openbuda.engine.pgbus import PgBus  # here: asyncpg is an optional dependency

        return PgBus(database_url, process_id=process_id, events=events)
    return Bus()
