"""What the CLI's client commands share: the connection options (each with its environment
twin), building the SDK client, ``--json`` output, and turning errors into one clear line."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from openbuda.client import (
    Agent,
    ApiError,
    Client,
    ConnectionFailed,
    MissingCredentials,
)
from openbuda.client._models import ApiModel, Page
from openbuda.domain.errors import InvalidRequest, NotFound, OpenbudaError
from openbuda.settings import Settings

__all__ = [
    "AgentOption",
    "ApiKeyOption",
    "HomeOption",
    "JsonOption",
    "Target",
    "UrlOption",
    "console",
    "details",
    "each",
    "errors",
    "handle_errors",
    "listing",
    "one_line",
    "parse_setting",
    "print_json",
    "report_error",
    "resolve_agent",
    "settings_from",
    "when",
]

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
errors = Console(stderr=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="OPENBUDA_URL",
        help="Server URL (default: from credentials.json, else http://127.0.0.1:8000).",
        show_default=False,
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="OPENBUDA_API_KEY",
        help="API key (default: from $OPENBUDA_HOME/credentials.json).",
        show_default=False,
    ),
]
HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="OPENBUDA_HOME",
        help="Data directory holding credentials.json (default ~/.openbuda).",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", envvar="OPENBUDA_JSON", help="Print JSON instead of tables."),
]
AgentOption = Annotated[
    str | None,
    typer.Option(
        "--agent", envvar="OPENBUDA_AGENT", help="Agent id or unique name.", show_default=False
    ),
]


class Target:
    """The server a command talks to, from ``--url``, ``--api-key`` and ``--home``."""

    def __init__(self, url: str | None, api_key: str | None, home: Path | None) -> None:
        self.url = url
        self.api_key = api_key
        self.home = home

    def client(self) -> Client:
        values: dict[str, Any] = {}
        if self.home is not None:
            values["home"] = self.home
        return Client(self.url, self.api_key, settings=Settings(**values))


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Run ``command``; an SDK error becomes one line on stderr (JSON with ``--json``) and
    exit status 1 instead of a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except OpenbudaError as error:
            report_error(error, as_json=bool(kwargs.get("as_json")))
            raise typer.Exit(1) from None

    return run


def report_error(error: OpenbudaError, *, as_json: bool) -> None:
    if as_json:
        errors.file.write(json.dumps({"error": error.to_json()}, ensure_ascii=False) + "\n")
        return
    if isinstance(error, ConnectionFailed | MissingCredentials):
        message = error.message
    elif isinstance(error, ApiError):
        message = f"{error.message} ({error.code}, HTTP {error.status})"
    else:
        message = f"{error.message} ({error.code})"
    errors.print(f"[red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)


def print_json(value: ApiModel | Page[Any] | list[Any] | dict[str, Any]) -> None:
    """Machine output: plain JSON on stdout, never wrapped or coloured."""
    if isinstance(value, ApiModel | Page):
        data: Any = value.to_json()
    elif isinstance(value, list):
        data = [item.to_json() if isinstance(item, ApiModel) else item for item in value]
    else:
        data = value
    console.file.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def resolve_agent(client: Client, reference: str) -> Agent:
    """The agent with this id, or else the one agent with this name."""
    if reference.startswith("agt_"):
        try:
            return client.agents.get(reference)
        except NotFound:
            pass
    named = [agent for agent in client.agents.iterate(page_size=500) if agent.name == reference]
    if not named:
        raise NotFound(f"no agent has the id or name {reference!r}", details={"agent": reference})
    if len(named) > 1:
        ids = ", ".join(agent.id for agent in named)
        raise InvalidRequest(
            f"{len(named)} agents are named {reference!r} ({ids}): give an id",
            details={"agent": reference},
        )
    return named[0]


def listing(*headers: str) -> Table:
    """A borderless table; columns named like ids (``id``, ``task``, ``session``, ``agent``)
    never wrap or shrink, so that ids can be copied whole."""
    columns = [
        Column(header, no_wrap=True, min_width=len(header))
        if header in _ID_COLUMNS
        else Column(header, overflow="fold")
        for header in headers
    ]
    return Table(*columns, box=None, pad_edge=False)


def details() -> Table:
    """A two-column table of labelled values (``show`` commands)."""
    grid = Table(show_header=False, box=None, pad_edge=False)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    return grid


_ID_COLUMNS = frozenset({"id", "task", "session", "created", "finished", "asked", "last activity"})


def parse_setting(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it is JSON (``5``, ``true``,
    ``["shell"]``), else as text."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def settings_from(items: list[str] | None) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in items or []:
        key, value = parse_setting(item)
        parsed[key] = value
    return parsed


def one_line(text: str | None, limit: int = 60) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def when(moment: object) -> str:
    """A timestamp for tables: ``2025-01-01 12:00:00`` (UTC)."""
    if moment is None:
        return ""
    text = str(moment)
    return text[:19].replace("T", " ")


def each(iterator: Iterator[R], limit: int | None) -> list[R]:
    out: list[R] = []
    for item in iterator:
        if limit is not None and len(out) >= limit:
            break
        out.append(item)
    return out
