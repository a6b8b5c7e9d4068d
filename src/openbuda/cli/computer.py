"""``openbuda computer status|exec|sleep|wake|restart AGENT``: an agent's computer.

``exec`` runs a command like ``ssh`` does: the words after ``--`` are joined with spaces and
run by ``bash -c`` in ``/agent``, the output streams live (stdout to stdout, stderr to stderr)
and the CLI exits with the command's exit code::

    openbuda computer exec helper -- 'ls -la && git status'
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from openbuda.cli._common import (
    ApiKeyOption,
    HomeOption,
    JsonOption,
    Target,
    UrlOption,
    console,
    details,
    errors,
    handle_errors,
    print_json,
    resolve_agent,
)
from openbuda.client import ComputerStatus, ExecOutput, ExecResult

__all__ = ["computer_app"]

computer_app = typer.Typer(
    help="An agent's computer: status, run commands, sleep, wake, restart.",
    no_args_is_help=True,
)

AgentArgument = Annotated[str, typer.Argument(help="Agent id or unique name.")]
_STATE_STYLE = {"running": "green", "sleeping": "yellow", "stopped": "dim"}


def size(count: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def _print_status(agent_name: str, status: ComputerStatus) -> None:
    table = details()
    style = _STATE_STYLE.get(status.status, "")
    table.add_row("agent", escape(agent_name))
    table.add_row("status", f"[{style}]{status.status}[/]" if style else status.status)
    table.add_row("cpu", f"{status.cpu_percent:g} %")
    table.add_row("memory", size(status.memory_bytes))
    table.add_row("disk", f"{size(status.disk_bytes)} in {status.file_count} files")
    table.add_row("ports", ", ".join(map(str, status.ports)) or "[dim]none[/]")
    table.add_row("sleeps after", f"{status.sleep_timeout_s} s idle")
    console.print(table, highlight=False)


@computer_app.command("status")
@handle_errors
def status(
    agent: AgentArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the computer's state, CPU, memory, disk use and listening ports."""
    with Target(url, api_key, home).client() as client:
        found = resolve_agent(client, agent)
        computer = client.computer.status(found.id)
    if as_json:
        print_json(computer)
    else:
        _print_status(found.name, computer)


def _action(agent: str, action: str, target: Target, as_json: bool) -> None:
    with target.client() as client:
        found = resolve_agent(client, agent)
        match action:
            case "sleep":
                computer = client.computer.sleep(found.id)
            case "wake":
                computer = client.computer.wake(found.id)
            case _:
                computer = client.computer.restart(found.id)
    if as_json:
        print_json(computer)
    else:
        console.print(f"the computer of {escape(found.name)} is {computer.status}", highlight=False)


@computer_app.command("sleep")
@handle_errors
def sleep(
    agent: AgentArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put the computer to sleep (its processes keep their state)."""
    _action(agent, "sleep", Target(url, api_key, home), as_json)


@computer_app.command("wake")
@handle_errors
def wake(
    agent: AgentArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start the computer, or wake it from sleep."""
    _action(agent, "wake", Target(url, api_key, home), as_json)


@computer_app.command("restart")
@handle_errors
def restart(
    agent: AgentArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Kill every process and clear /tmp; the files in /agent stay."""
    _action(agent, "restart", Target(url, api_key, home), as_json)


def _ending(result: ExecResult) -> str | None:
    """A line for stderr when the command did not end by itself."""
    if result.limit == "timeout" or result.timed_out:
        return f"killed: the command timed out after {result.duration_ms / 1000:g} s"
    if result.limit is not None:
        return f"killed: the command hit the {result.limit} limit"
    return None


@computer_app.command("exec")
@handle_errors
def exec_command(
    agent: AgentArgument,
    command: Annotated[
        list[str],
        typer.Argument(help="The command, after `--`: its words are joined with spaces."),
    ],
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds before the command is killed.", min=0.001),
    ] = None,
    cwd: Annotated[
        str | None, typer.Option("--cwd", help="Working directory (default /agent).")
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a command in the agent's computer, with live output; exits with its exit code."""
    line = " ".join(command)
    with Target(url, api_key, home).client() as client:
        found = resolve_agent(client, agent)
        if as_json:
            result = client.computer.exec(found.id, line, cwd=cwd, timeout_s=timeout)
            print_json(result)
            raise typer.Exit(result.exit_code)
        with client.computer.exec_stream(found.id, line, cwd=cwd, timeout_s=timeout) as items:
            for item in items:
                if isinstance(item, ExecOutput):
                    out = console.file if item.stream == "stdout" else errors.file
                    out.write(item.text)
                    out.flush()
            result = items.result
    assert result is not None  # the stream raises when it ends without one
    ending = _ending(result)
    if ending is not None:
        errors.print(f"[red]{ending}[/]", highlight=False)
    raise typer.Exit(result.exit_code)
