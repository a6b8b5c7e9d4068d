"""``openbuda agents create|list|show|edit|delete``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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
    each,
    handle_errors,
    listing,
    one_line,
    print_json,
    resolve_agent,
    settings_from,
    when,
)
from openbuda.client import NOT_GIVEN, Agent, NotGiven

__all__ = ["agents_app"]

agents_app = typer.Typer(help="Create, list, show and change agents.", no_args_is_help=True)

AgentArgument = Annotated[str, typer.Argument(help="Agent id or unique name.")]
SettingOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="An agent setting as KEY=VALUE, the value JSON or text (repeatable): "
        "--set max_steps=20 --set 'tools=[\"shell\"]'.",
        show_default=False,
    ),
]
InstructionsFileOption = Annotated[
    Path | None,
    typer.Option(
        "--instructions-file",
        help="Read the instructions from this file.",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]


@agents_app.command("create")
@handle_errors
def create(
    name: Annotated[str, typer.Argument(help="A name, unique within the space.")],
    description: Annotated[str | None, typer.Option(help="What the agent is for.")] = None,
    instructions: Annotated[str | None, typer.Option(help="The system instructions.")] = None,
    instructions_file: InstructionsFileOption = None,
    model: Annotated[
        str | None,
        typer.Option(help="provider:model (default: the server's OPENBUDA_MODEL)."),
    ] = None,
    setting: SettingOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an agent."""
    if instructions_file is not None:
        instructions = instructions_file.read_text(encoding="utf-8")
    settings = settings_from(setting)
    with Target(url, api_key, home).client() as client:
        agent = client.agents.create(
            name,
            description=description,
            instructions=instructions,
            model=model,
            settings=settings or None,
        )
    if as_json:
        print_json(agent)
    else:
        console.print(f"created agent [bold]{escape(agent.name)}[/] ({agent.id})", highlight=False)


@agents_app.command("list")
@handle_errors
def list_agents(
    limit: Annotated[int | None, typer.Option(help="Show at most this many.")] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the agents of the space."""
    with Target(url, api_key, home).client() as client:
        agents = each(client.agents.iterate(page_size=min(limit or 500, 500)), limit)
    if as_json:
        print_json(agents)
        return
    table = listing("id", "name", "model", "description", "created")
    for agent in agents:
        table.add_row(
            agent.id,
            escape(agent.name),
            escape(agent.model or "(default)"),
            escape(one_line(agent.description)),
            when(agent.created_at),
        )
    console.print(table if agents else "[dim]no agents yet: openbuda agents create NAME[/]")


@agents_app.command("show")
@handle_errors
def show(
    agent: AgentArgument,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an agent: its model, settings and instructions."""
    with Target(url, api_key, home).client() as client:
        found = resolve_agent(client, agent)
    if as_json:
        print_json(found)
    else:
        _print_agent(found)


@agents_app.command("edit")
@handle_errors
def edit(
    agent: AgentArgument,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    description: Annotated[str | None, typer.Option(help="A new description.")] = None,
    instructions: Annotated[str | None, typer.Option(help="New instructions.")] = None,
    instructions_file: InstructionsFileOption = None,
    model: Annotated[str | None, typer.Option(help="A new provider:model.")] = None,
    default_model: Annotated[
        bool, typer.Option("--default-model", help="Use the server's default model.")
    ] = False,
    setting: SettingOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change an agent. Settings given with --set are merged into its current ones (the
    server merges them)."""
    if instructions_file is not None:
        instructions = instructions_file.read_text(encoding="utf-8")
    if model is not None and default_model:
        raise typer.BadParameter("give --model or --default-model, not both")
    changes = settings_from(setting)
    with Target(url, api_key, home).client() as client:
        found = resolve_agent(client, agent)
        new_model: str | NotGiven | None = NOT_GIVEN
        if default_model:
            new_model = None
        elif model is not None:
            new_model = model
        settings: dict[str, Any] | NotGiven = changes or NOT_GIVEN
        updated = client.agents.update(
            found.id,
            name=NOT_GIVEN if name is None else name,
            description=NOT_GIVEN if description is None else description,
            instructions=NOT_GIVEN if instructions is None else instructions,
            model=new_model,
            settings=settings,
        )
    if as_json:
        print_json(updated)
    else:
        console.print(f"updated agent [bold]{escape(updated.name)}[/] ({updated.id})")


@agents_app.command("delete")
@handle_errors
def delete(
    agent: AgentArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete an agent and its sessions."""
    with Target(url, api_key, home).client() as client:
        found = resolve_agent(client, agent)
        if not yes:
            typer.confirm(f"Delete agent {found.name!r} ({found.id}) and its sessions?", abort=True)
        client.agents.delete(found.id)
    if as_json:
        print_json({"deleted": found.id})
    else:
        console.print(f"deleted agent {escape(found.name)} ({found.id})", highlight=False)


def _print_agent(agent: Agent) -> None:
    table = details()
    table.add_row("id", agent.id)
    table.add_row("name", escape(agent.name))
    table.add_row("model", escape(agent.model or "(server default)"))
    table.add_row("description", escape(agent.description))
    table.add_row("created", when(agent.created_at))
    table.add_row("updated", when(agent.updated_at))
    for key, value in agent.settings.to_json().items():
        table.add_row(f"settings.{key}", escape(json.dumps(value, ensure_ascii=False)))
    console.print(table)
    if agent.instructions:
        console.print("[bold]instructions[/]")
        console.print(agent.instructions, markup=False, highlight=False)
