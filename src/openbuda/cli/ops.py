"""Operating a deployment: ``openbuda worker`` and ``openbuda status``.

Unlike the client commands these talk to the database, not to a server: a worker is an engine
process of its own (ARCHITECTURE §9), and ``status`` reads what every API and worker process
registered in the store, so it works while no API process is up.

- ``run_worker`` runs ``Runtime.start(kind="worker")`` until SIGINT or SIGTERM, then leaves the
  runtime, which re-queues the tasks it still runs and removes its process row. It refuses
  SQLite: there ``openbuda serve`` runs the workers itself, and a second engine process on the
  same file would only queue up behind its single write lock (no ``SKIP LOCKED`` claims, no
  ``LISTEN/NOTIFY`` wake-ups), and an embedded ``serve`` re-queues every running task when it
  starts, the worker's included.
  A worker is never alone, so ``OPENBUDA_EMBEDDED=true`` (re-queue every running task at
  start) is refused too.
- ``read_status`` opens the store without migrating it: an operator's look must never change
  the schema under running processes. A database behind (or ahead of) this openbuda's
  migrations is a ``StatusUnavailable`` naming the cure.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.markup import escape
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from openbuda.cli._common import details, listing, when
from openbuda.domain.errors import OpenbudaError
from openbuda.ports import ClusterStatus
from openbuda.settings import Settings
from openbuda.stores import SqlStore, open_store

__all__ = [
    "StatusUnavailable",
    "WorkerRefused",
    "is_sqlite",
    "missing_revisions",
    "read_status",
    "redact_url",
    "render_status",
    "run_worker",
    "status_json",
]

log = logging.getLogger("openbuda.worker")


class WorkerRefused(Exception):
    """``openbuda worker`` will not run against this configuration (the message says why)."""


class StatusUnavailable(Exception):
    """``openbuda status`` cannot read this database (the message says what to do)."""


def redact_url(url: str) -> str:
    """``url`` without its credentials, fit for a log line or a terminal."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    return None if not database or database == ":memory:" else Path(database)


# -- openbuda worker ---------------------------------------------------------------------------


async def run_worker(settings: Settings, *, ready: Callable[[str], None]) -> None:
    """Run this process's engine until SIGINT or SIGTERM; ``ready`` gets one line once it
    claims tasks. Raises ``WorkerRefused`` on SQLite (see the module's docstring)."""
    url = settings.resolved_database_url()
    if is_sqlite(url):
        raise WorkerRefused(
            f"openbuda worker needs PostgreSQL, not {redact_url(url)}: set "
            "OPENBUDA_DATABASE_URL=postgresql://… (or --database-url). On SQLite "
            "`openbuda serve` runs the workers itself; a second process on the same file would "
            "only wait for its single write lock."
        )
    if settings.embedded:
        raise WorkerRefused(
            "OPENBUDA_EMBEDDED=true says this process alone owns the database: a worker would "
            "re-queue the tasks every other process is running when it starts. Unset it."
        )
    if settings.drive_blobs is None:
        log.warning(
            "Drive content is kept in %s on this machine: API processes and workers on other "
            "machines will not find it; set OPENBUDA_DRIVE_BLOBS=s3://bucket/prefix",
            settings.home / "drive",
        )
    try:
        await _run_until_signal(settings, url, ready)
    except BaseExceptionGroup as failed:  # task groups wrap what failed: say it plainly
        raise _alone(failed) from failed


def _alone(error: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (else the group itself)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _run_until_signal(settings: Settings, url: str, ready: Callable[[str], None]) -> None:
    from openbuda.runtime import Runtime

    started: list[Runtime] = []
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as group:

            async def stop_on_signal() -> None:
                async for received in signals:
                    running = started[0].organizer.running_count if started else 0
                    log.info(
                        "%s: stopping; %d running task(s) go back to the queue",
                        signal.Signals(received).name,
                        running,
                    )
                    group.cancel_scope.cancel()  # also a start still under way
                    return

            group.start_soon(stop_on_signal)
            log.info("starting against %s (SIGINT or SIGTERM stops it)", redact_url(url))
            async with Runtime.start(settings, kind="worker") as runtime:
                started.append(runtime)
                ready(
                    f"worker {runtime.organizer.worker_id} ready: {redact_url(url)}, "
                    f"up to {settings.max_concurrent_tasks} task(s) at once"
                )
                await anyio.sleep_forever()


# -- openbuda status ---------------------------------------------------------------------------


async def missing_revisions(store: SqlStore) -> list[str]:
    """The migrations the store's database lacks, oldest first (``[]``: up to date). Raises
    ``StatusUnavailable`` for a database migrated by a newer openbuda."""
    unknown, missing = await store.schema_revisions()
    if unknown:
        raise StatusUnavailable(
            f"the database is at revision {unknown[0]!r}, newer than this openbuda knows: "
            "run the openbuda version that migrated it"
        )
    return missing


async def read_status(settings: Settings, now: datetime | None = None) -> ClusterStatus:
    """What the processes registered, the queues and the expired leases, read in one snapshot
    without migrating anything."""
    url = settings.resolved_database_url()
    if is_sqlite(url):
        path = _sqlite_path(url)
        if path is not None and not path.exists():  # opening it would create an empty one
            raise StatusUnavailable(
                f"no database at {str(path)!r}: run `openbuda migrate` (or `openbuda serve`) "
                "first, or point --home / --database-url at the deployment's"
            )
    store = open_store(
        url, synchronous=settings.sqlite_synchronous, application_name="openbuda status"
    )
    try:
        missing = await missing_revisions(store)
        if missing:
            raise StatusUnavailable(
                f"the database schema lacks {len(missing)} migration(s) "
                f"({', '.join(missing)}): run `openbuda migrate`"
            )
        async with store.read() as tx:
            return await tx.cluster_status(now or datetime.now(UTC))
    except (OpenbudaError, SQLAlchemyError, OSError) as error:
        raise StatusUnavailable(f"cannot read {redact_url(url)}: {error}") from error
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _age(now: datetime, moment: datetime) -> float:
    return round(max((now - moment).total_seconds(), 0.0), 3)


def status_json(status: ClusterStatus, *, lease_seconds: float, database: str) -> dict[str, Any]:
    """``openbuda status --json``: one object whose keys never change between runs, so that
    scripts and monitoring can rely on them. A process is alive while its last heartbeat is
    younger than the lease (``lease_seconds``): past that the reaper takes its tasks over."""
    now = status.now
    processes = [
        {
            "id": process.id,
            "kind": process.kind,
            "host": process.host,
            "pid": process.pid,
            "version": process.version,
            "started_at": _iso(process.started_at),
            "seen_at": _iso(process.seen_at),
            "seen_seconds_ago": _age(now, process.seen_at),
            "alive": _age(now, process.seen_at) < lease_seconds,
            "running": process.running,
            "computers": process.computers,
        }
        for process in status.processes
    ]
    spaces = [
        {
            "space_id": space.space_id,
            "queued": space.queued,
            "running": space.running,
            "waiting": space.waiting,
            "oldest_queued_at": _iso(space.oldest_queued_at),
            "oldest_queued_seconds": (
                None if space.oldest_queued_at is None else _age(now, space.oldest_queued_at)
            ),
        }
        for space in status.spaces
    ]
    return {
        "now": _iso(now),
        "database": database,
        "lease_seconds": lease_seconds,
        "processes": processes,
        "spaces": spaces,
        "expired_leases": status.expired_leases,
        "totals": {
            "processes_alive": sum(1 for process in processes if process["alive"]),
            "queued": sum(space.queued for space in status.spaces),
            "running": sum(space.running for space in status.spaces),
            "waiting": sum(space.waiting for space in status.spaces),
        },
    }


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render_status(document: dict[str, Any], console: Console) -> None:
    """``status_json``'s document as tables: processes, queues per space, expired leases."""
    totals = document["totals"]
    summary = details()
    summary.add_row("database", escape(document["database"]))
    summary.add_row("at", when(document["now"]))
    summary.add_row(
        "processes",
        f"{totals['processes_alive']} alive of {len(document['processes'])} registered",
    )
    summary.add_row(
        "tasks",
        f"{totals['queued']} queued, {totals['running']} running, {totals['waiting']} waiting",
    )
    expired = document["expired_leases"]
    summary.add_row(
        "expired leases",
        f"[yellow]{expired}[/] (the reaper re-queues them)" if expired else "0",
    )
    console.print(summary)

    console.print()
    if document["processes"]:
        table = listing(
            "id", "kind", "host", "pid", "version", "started", "last seen", "running", "computers"
        )
        for process in document["processes"]:
            seen = _ago(process["seen_seconds_ago"])
            table.add_row(
                escape(process["id"]),
                process["kind"],
                escape(process["host"]),
                str(process["pid"]),
                escape(process["version"]),
                when(process["started_at"]),
                f"[green]alive[/] ({seen})" if process["alive"] else f"[red]gone[/] ({seen})",
                str(process["running"]),
                str(process["computers"]),
            )
        console.print(table)
    else:
        console.print("no processes registered (none has started against this database)")

    console.print()
    if document["spaces"]:
        table = listing("space", "queued", "running", "waiting", "oldest queued")
        table.columns[0].no_wrap = True  # an id, copied whole
        for space in document["spaces"]:
            oldest = space["oldest_queued_seconds"]
            table.add_row(
                space["space_id"],
                str(space["queued"]),
                str(space["running"]),
                str(space["waiting"]),
                "" if oldest is None else _ago(oldest),
            )
        console.print(table)
    else:
        console.print("no task queued, running or waiting")
