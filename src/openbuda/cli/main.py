"""The ``openbuda`` command line.

Every option has an environment twin (``OPENBUDA_*``, read once into ``Settings``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.markup import escape

from openbuda import __version__
from openbuda.cli._common import JsonOption, console, errors
from openbuda.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="openbuda",
    help="Self-hostable runtime for AI agents: isolated sessions, durable tasks, Drive.",
    no_args_is_help=True,
    add_completion=False,
)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", envvar="OPENBUDA_HOME", help="Data directory (default ~/.openbuda)."),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="OPENBUDA_DATABASE_URL",
        help="SQLAlchemy URL (default: SQLite in the data directory).",
    ),
]
WorkerIdOption = Annotated[
    str | None,
    typer.Option(
        "--worker-id",
        envvar="OPENBUDA_WORKER_ID",
        help="Stable id of this process's engine: a restart with the same id re-queues at "
        "once what it held (default: a fresh id per start).",
        show_default=False,
    ),
]


def _settings(home: Path | None, database_url: str | None, **extra: object) -> Settings:
    values: dict[str, object] = {k: v for k, v in extra.items() if v is not None}
    if home is not None:
        values["home"] = home
    if database_url is not None:
        values["database_url"] = database_url
    return Settings(**values)  # pyright: ignore[reportArgumentType]


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@app.command()
def migrate(home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Create or upgrade the database schema."""
    from openbuda.cli.ops import redact_url
    from openbuda.stores import open_store

    settings = _settings(home, database_url)

    async def run() -> None:
        settings.home.mkdir(parents=True, exist_ok=True)
        store = open_store(settings.resolved_database_url())
        try:
            await store.migrate()
        finally:
            await store.close()

    anyio.run(run)
    console.print(
        f"[green]database is up to date[/] ({redact_url(settings.resolved_database_url())})"
    )


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option("--host", envvar="OPENBUDA_HOST", help="Interface (default 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", envvar="OPENBUDA_PORT", help="Port (default 8000).")
    ] = None,
    workers: Annotated[
        bool | None,
        typer.Option(
            "--workers/--no-workers",
            envvar="OPENBUDA_RUN_WORKERS",
            help="Also run tasks here (default), or serve the API only and leave the tasks "
            "to `openbuda worker` processes on the same PostgreSQL.",
            show_default=False,
        ),
    ] = None,
    worker_id: WorkerIdOption = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Run the HTTP API with its workers. On an empty data directory this creates the first
    space and prints its owner's API key once (also saved to credentials.json).

    Scale-out (PostgreSQL): any number of `openbuda serve --no-workers` behind a proxy and
    `openbuda worker` processes against one OPENBUDA_DATABASE_URL; see docs/deployment.md."""
    try:
        from openbuda.api.server import serve as run_server
    except ImportError as missing:  # pragma: no cover - depends on the installation
        errors.print(
            f"[red]the server needs the package {missing.name!r}[/]: reinstall openbuda with "
            "its dependencies"
        )
        raise typer.Exit(1) from None

    from openbuda.cli.ops import is_sqlite
    from openbuda.domain.errors import OpenbudaError

    settings = _settings(
        home, database_url, host=host, port=port, run_workers=workers, worker_id=worker_id
    )
    if not settings.run_workers and is_sqlite(settings.resolved_database_url()):
        errors.print(
            "[yellow]warning[/]: --no-workers on SQLite: no process will run tasks here "
            "(`openbuda worker` needs PostgreSQL)",
            highlight=False,
            soft_wrap=True,
        )
    try:
        run_server(settings)
    except OpenbudaError as error:
        errors.print(f"[red]cannot serve[/]: {error.message}")
        raise typer.Exit(2) from None


@app.command()
def worker(
    worker_id: WorkerIdOption = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            envvar="OPENBUDA_MAX_CONCURRENT_TASKS",
            min=1,
            help="Tasks this process runs at once (default 64).",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Run tasks only, no HTTP API: the scale-out of a PostgreSQL deployment.

    Run any number of these, on any machines, against one OPENBUDA_DATABASE_URL next to
    `openbuda serve --no-workers`. SIGINT or SIGTERM stops it gracefully: the tasks it still
    runs go back to the queue at once. Give each a stable --worker-id so that after a crash its
    restart takes back at once what it held. SQLite is refused: there `openbuda serve` runs
    the tasks itself, and a second process would only wait for the file's single write lock."""
    from sqlalchemy.exc import SQLAlchemyError

    from openbuda.api.logs import configure_logging
    from openbuda.cli.ops import WorkerRefused, run_worker
    from openbuda.domain.errors import OpenbudaError

    settings = _settings(home, database_url, worker_id=worker_id, max_concurrent_tasks=concurrency)
    configure_logging(level=settings.log_level, fmt=settings.log_format)

    def ready(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.file.flush()

    try:
        anyio.run(lambda: run_worker(settings, ready=ready))
    except WorkerRefused as refused:
        errors.print(f"[red]error:[/] {escape(str(refused))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (OpenbudaError, OSError, SQLAlchemyError) as error:  # the database, the storage…
        message = error.message if isinstance(error, OpenbudaError) else str(error)
        errors.print(f"[red]worker stopped[/]: {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def status(
    as_json: JsonOption = False,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """The deployment as its database sees it: every API and worker process (alive while its
    heartbeat is younger than OPENBUDA_LEASE_SECONDS), its running tasks and placed
    computers; the queue of each space; leases that ran out. Reads only: it never migrates."""
    from openbuda.cli.ops import (
        StatusUnavailable,
        read_status,
        redact_url,
        render_status,
        status_json,
    )

    settings = _settings(home, database_url)
    try:
        found = anyio.run(lambda: read_status(settings))
    except StatusUnavailable as error:
        errors.print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    document = status_json(
        found,
        lease_seconds=settings.lease_seconds,
        database=redact_url(settings.resolved_database_url()),
    )
    if as_json:
        console.file.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    else:
        render_status(document, console)


@app.command()
def demo(
    message: Annotated[
        list[str] | None,
        typer.Option(
            "--message", "-m", help="Send this message (repeatable); default: ask on stdin."
        ),
    ] = None,
    answer: Annotated[
        list[str] | None,
        typer.Option("--answer", "-a", help="Answer the agent's questions with these, in order."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", envvar="OPENBUDA_MODEL", help="provider:model")
    ] = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print events as JSON lines.")] = False,
) -> None:
    """Chat with an agent in this process, through the library (no server needed).

    With no provider configured this uses the small bundled offline model (extra `local`).
    The agent may ask you a question; you answer at the prompt (or with --answer).
    """
    from openbuda.cli.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    settings = _settings(home, database_url, model=model)
    code = anyio.run(
        lambda: run_demo(
            settings,
            messages=list(message or []),
            answers=list(answer or []),
            interactive=sys.stdin.isatty() and not message,
            as_json=as_json,
            console=console,
        )
    )
    raise typer.Exit(code)


def _register_client_commands() -> None:
    """The commands that talk to a server through the SDK (modules of their own)."""
    from openbuda.cli import agents, chat, computer, drive, sessions, tasks

    app.add_typer(agents.agents_app, name="agents")
    app.add_typer(computer.computer_app, name="computer")
    app.add_typer(drive.drive_app, name="drive")
    app.add_typer(sessions.sessions_app, name="sessions")
    chat.register(app)
    tasks.register(app)


_register_client_commands()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        errors.print("interrupted")
        raise SystemExit(130) from None
