"""The ``openbuda`` command line.

Every option has an environment twin (``OPENBUDA_*``, read once into ``Settings``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer

from openbuda import __version__
from openbuda.cli._common import console, errors
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
    console.print(f"[green]database is up to date[/] ({_redact(settings.resolved_database_url())})")


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option("--host", envvar="OPENBUDA_HOST", help="Interface (default 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", envvar="OPENBUDA_PORT", help="Port (default 8000).")
    ] = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Run the HTTP API with its workers. On an empty data directory this creates the first
    space and prints its owner's API key once (also saved to credentials.json)."""
    try:
        from openbuda.api.server import serve as run_server
    except ImportError as missing:  # pragma: no cover - depends on the installation
        errors.print(
            f"[red]the server needs the package {missing.name!r}[/]: reinstall openbuda with "
            "its dependencies"
        )
        raise typer.Exit(1) from None

    from openbuda.domain.errors import OpenbudaError

    try:
        run_server(_settings(home, database_url, host=host, port=port))
    except OpenbudaError as error:
        errors.print(f"[red]cannot serve[/]: {error.message}")
        raise typer.Exit(2) from None


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


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


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
