"""``openbuda drive ls|get|put|rm|history|diff|restore``: the Space Drive and the agents' Drives.

Every command is about the Space Drive (the files the space's members and agents share)
unless ``--agent NAME|ID`` names an agent, whose own Drive it then uses; ``--space`` insists on
the Space Drive even when ``OPENBUDA_AGENT`` is set. Content streams both ways: ``put`` never
holds a file in memory and shows its progress on a terminal; ``get`` checks the sha256 of what
it receives::

    openbuda drive put report.pdf reports/2025/q1.pdf --agent helper
    openbuda drive ls reports --agent helper
    openbuda drive get reports/2025/q1.pdf -o q1.pdf --agent helper
    openbuda drive history notes.md && openbuda drive diff notes.md --from 1
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import IO, Annotated, Final

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from openbuda.cli._common import (
    AgentOption,
    ApiKeyOption,
    HomeOption,
    JsonOption,
    Target,
    UrlOption,
    console,
    errors,
    handle_errors,
    listing,
    print_json,
    resolve_agent,
    when,
)
from openbuda.cli.computer import size
from openbuda.client import Client, DriveEntry

__all__ = ["drive_app"]

drive_app = typer.Typer(
    help="Drive: durable, versioned files. The Space Drive by default; --agent NAME|ID for an "
    "agent's own Drive.",
    no_args_is_help=True,
)

PROGRESS_FROM: Final = 8 * 1024 * 1024
"""Transfers at least this large show a progress bar (on a terminal only)."""

PathArgument = Annotated[str, typer.Argument(help="The file's path in the Drive, e.g. notes/a.md.")]
SpaceOption = Annotated[
    bool,
    typer.Option("--space", help="The Space Drive (the default), even when OPENBUDA_AGENT is set."),
]
VersionOption = Annotated[
    int | None, typer.Option("--version", "-v", help="This version instead of the latest.", min=1)
]


class _Drive:
    """The Drive a command is about: ``agent_id`` None for the Space Drive."""

    def __init__(self, client: Client, agent: str | None, space: bool) -> None:
        self.client = client
        found = None if space or not agent else resolve_agent(client, agent)
        self.agent_id = None if found is None else found.id
        self.name = "the Space Drive" if found is None else f"the Drive of {found.name}"


@contextlib.contextmanager
def _drive(
    agent: str | None, space: bool, url: str | None, api_key: str | None, home: Path | None
) -> Generator[_Drive]:
    with Target(url, api_key, home).client() as client:
        yield _Drive(client, agent, space)


@contextlib.contextmanager
def _progress(total: int | None, label: str) -> Generator[Callable[[int], None] | None]:
    """A progress bar on stderr for a big transfer on a terminal; else nothing to call."""
    if not errors.is_terminal or (total is not None and total < PROGRESS_FROM):
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=errors,
        transient=True,
    ) as bar:
        task = bar.add_task(escape(label), total=total)

        def advance(count: int) -> None:
            bar.advance(task, count)

        yield advance


def _entry_line(entry: DriveEntry, drive: _Drive, verb: str) -> str:
    where = escape(drive.name)
    if entry.deleted:
        return f"{verb} {escape(entry.path)} in {where} (version {entry.version})"
    return f"{verb} {escape(entry.path)} in {where}: version {entry.version}, {size(entry.size)}"


@drive_app.command("ls")
@handle_errors
def list_files(
    prefix: Annotated[str | None, typer.Argument(help="A folder (default: the root).")] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Every file below the folder.")
    ] = False,
    agent: AgentOption = None,
    space: SpaceOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the folders and files in a folder of the Drive (folders first)."""
    with _drive(agent, space, url, api_key, home) as drive:
        entries = drive.client.drive.list(prefix, agent_id=drive.agent_id, recursive=recursive)
    if as_json:
        print_json(entries)
        return
    if not entries:
        console.print(f"[dim]{escape(drive.name)} is empty here[/]", highlight=False)
        return
    table = listing("path", "size", "version", "updated")
    for entry in entries:
        name = f"[bold blue]{escape(entry.path)}/[/]" if entry.kind == "dir" else escape(entry.path)
        version = "" if entry.version is None else str(entry.version)
        table.add_row(name, size(entry.size), version, when(entry.updated_at))
    console.print(table, highlight=False)


@drive_app.command("get")
@handle_errors
def get(
    path: PathArgument,
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="Write to this file; `-` (the default): stdout."),
    ] = "-",
    version: VersionOption = None,
    agent: AgentOption = None,
    space: SpaceOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Download a file (streamed; its sha256 checked) to stdout or a file."""
    with _drive(agent, space, url, api_key, home) as drive:
        files = drive.client.drive
        if output == "-":
            out: IO[bytes] = sys.stdout.buffer
            files.download(path, out, agent_id=drive.agent_id, version=version)
            out.flush()
            return
        head = _size_of_version(drive, path, version)
        with _progress(head, path) as advance:
            done = files.download(
                path, output, agent_id=drive.agent_id, version=version, progress=advance
            )
    if as_json:
        print_json(done)
    else:
        console.print(
            f"wrote {escape(output)}: {escape(done.path)} version {done.version}, "
            f"{size(done.size)}",
            highlight=False,
        )


def _size_of_version(drive: _Drive, path: str, version: int | None) -> int | None:
    """The size to show progress against (the listing knows it for the latest version)."""
    if version is not None or not errors.is_terminal:
        return None
    folder = path.rpartition("/")[0] or None
    for entry in drive.client.drive.list(folder, agent_id=drive.agent_id):
        if entry.path == path.strip("/"):
            return entry.size
    return None


@drive_app.command("put")
@handle_errors
def put(
    local: Annotated[str, typer.Argument(help="The local file to upload; `-`: stdin.")],
    path: PathArgument,
    agent: AgentOption = None,
    space: SpaceOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a file (streamed) as the next version of PATH; the same content adds none."""
    with (
        _drive(agent, space, url, api_key, home) as drive,
        _open(local) as (source, total),
        _progress(total, path) as advance,
    ):
        entry = drive.client.drive.write(path, source, agent_id=drive.agent_id, progress=advance)
    if as_json:
        print_json(entry)
    else:
        console.print(_entry_line(entry, drive, "wrote"), highlight=False)


@contextlib.contextmanager
def _open(local: str) -> Generator[tuple[IO[bytes], int | None]]:
    if local == "-":
        yield sys.stdin.buffer, None
        return
    try:
        source = Path(local).open("rb")  # noqa: SIM115 - closed by the with below
    except OSError as error:
        raise typer.BadParameter(f"cannot read {local!r}: {error.strerror}") from None
    with source:
        yield source, os.fstat(source.fileno()).st_size


@drive_app.command("rm")
@handle_errors
def remove(
    path: PathArgument,
    agent: AgentOption = None,
    space: SpaceOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a file: a deletion version (`drive restore` brings an earlier one back)."""
    with _drive(agent, space, url, api_key, home) as drive:
        entry = drive.client.drive.delete(path, agent_id=drive.agent_id)
    if as_json:
        print_json(entry)
    else:
        console.print(_entry_line(entry, drive, "deleted"), highlight=False)


@drive_app.command("history")
@handle_errors
def history(
    path: PathArgument,
    limit: Annotated[int, typer.Option(help="Show at most this many versions.", min=1)] = 50,
    agent: AgentOption = None,
    space: SpaceOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The versions of a file, newest first, with who made each."""
    with _drive(agent, space, url, api_key, home) as drive:
        page = drive.client.drive.history(path, agent_id=drive.agent_id, limit=min(limit, 500))
    if as_json:
        print_json(page)
        return
    table = listing("version", "op", "size", "by", "task", "at")
    for item in page.items:
        op = item.op if item.restored_from is None else f"restore of {item.restored_from}"
        by = item.member_id or (f"agent {item.agent_id}" if item.agent_id else "")
        table.add_row(
            str(item.version),
            op,
            "" if item.op == "delete" else size(item.size),
            escape(by),
            item.task_id or "",
            when(item.at),
        )
    console.print(table, highlight=False)


@drive_app.command("diff")
@handle_errors
def diff(
    path: PathArgument,
    from_version: Annotated[int, typer.Option("--from", help="The old version.", min=1)],
    to_version: Annotated[
        int | None, typer.Option("--to", help="The new version (default: the latest).", min=1)
    ] = None,
    agent: AgentOption = None,
    space: SpaceOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """A unified diff between two versions of a file."""
    with _drive(agent, space, url, api_key, home) as drive:
        found = drive.client.drive.diff(path, from_version, to_version, agent_id=drive.agent_id)
    if as_json:
        print_json(found)
        return
    if found.binary or not found.diff.startswith("---"):
        console.print(escape(found.diff) or "[dim]no changes[/]", highlight=False)
        return
    if not console.is_terminal:
        console.file.write(found.diff)
        return
    for line in found.diff.splitlines():
        style = _DIFF_STYLES.get(line[:1], "") if not line.startswith(("---", "+++")) else "bold"
        console.print(f"[{style}]{escape(line)}[/]" if style else escape(line), highlight=False)


_DIFF_STYLES: Final = {"+": "green", "-": "red", "@": "cyan"}


@drive_app.command("restore")
@handle_errors
def restore(
    path: PathArgument,
    version: Annotated[
        int, typer.Option("--version", "-v", help="The version to bring back.", min=1)
    ],
    agent: AgentOption = None,
    space: SpaceOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Restore an earlier version of a file, as a new version."""
    with _drive(agent, space, url, api_key, home) as drive:
        entry = drive.client.drive.restore(path, version, agent_id=drive.agent_id)
    if as_json:
        print_json(entry)
    else:
        console.print(_entry_line(entry, drive, f"restored version {version} of"), highlight=False)
