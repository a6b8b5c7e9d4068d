"""Agent tools: the protocol a tool implements, the registry, and ``ask_user``.

A tool receives the idempotency key ``task_id:call_id`` of its call. After a crash a tool call
whose result was never stored is *in doubt*: an ``idempotent`` tool is run again with the same
key, any other tool gets an ``interrupted`` result and the model decides.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeGuard, cast

from openbuda.domain.conversation import ToolSpec
from openbuda.domain.records import Agent, Session

__all__ = [
    "ASK_USER",
    "ASK_USER_SPEC",
    "FilesChanged",
    "NoToolHooks",
    "Tool",
    "ToolContext",
    "ToolHooks",
    "ToolOutcome",
    "ToolRegistry",
    "check_args",
    "load_tools",
    "uses_computer",
]

ASK_USER = "ask_user"

ASK_USER_SPEC = ToolSpec(
    name=ASK_USER,
    description=(
        "Ask the user a question and wait for the answer. Use it when you need a decision, a "
        "missing detail or an approval. kind 'text' (default) takes free text, 'choice' one of "
        "`options`, 'approval' a yes/no."
    ),
    parameters={
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "description": "The question, in plain language."},
            "kind": {"type": "string", "enum": ["text", "choice", "approval"]},
            "options": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["prompt"],
    },
)

OutputSink = Callable[[Literal["stdout", "stderr"], str], Awaitable[None]]


async def _no_output(_stream: Literal["stdout", "stderr"], _text: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ToolContext:
    agent: Agent
    session: Session
    task_id: str
    call_id: str
    emit_output: OutputSink = field(default=_no_output)
    """Live output, streamed as ephemeral ``tool.output`` events."""

    @property
    def idempotency_key(self) -> str:
        return f"{self.task_id}:{self.call_id}"

    @property
    def is_external(self) -> bool:
        return self.session.external_user_id is not None


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    output: str
    status: Literal["ok", "error"] = "ok"
    files: tuple[str, ...] = ()
    """Drive paths the call changed (listed in the task's result)."""


@dataclass(frozen=True, slots=True)
class FilesChanged:
    """What a tool call changed in the Drives' working copies (found after it ran)."""

    paths: tuple[str, ...] = ()
    """Every changed path (``/agent/…``, ``/space/…``): the ``drive.changed`` event."""
    written: tuple[str, ...] = ()
    """Those that hold a file now: listed in the task's result."""
    note: str | None = None
    """Something the model must know (changes that could not be saved), added to the output."""


class ToolHooks(Protocol):
    """Runs around every tool call but ``ask_user``: Drive's working-copy sync (``drive.sync``).

    ``before_tool`` brings writes made elsewhere (the API) into the computer's files;
    ``after_tool`` turns what the call changed there into versions. Neither may fail the task:
    they raise nothing the loop has to handle but ``LeaseLost``/cancellation.
    """

    async def before_tool(self, context: ToolContext) -> None: ...
    async def after_tool(self, context: ToolContext) -> FilesChanged: ...


class NoToolHooks:
    async def before_tool(self, context: ToolContext) -> None:
        return None

    async def after_tool(self, context: ToolContext) -> FilesChanged:
        return FilesChanged()


class Tool(Protocol):
    @property
    def spec(self) -> ToolSpec: ...

    @property
    def idempotent(self) -> bool:
        """Safe to run again with the same idempotency key after a crash."""
        ...

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome: ...


def uses_computer(tool: Tool) -> bool:
    """Whether ``tool`` runs in the agent's computer: a tool says so with a ``uses_computer``
    attribute set to ``True`` (the computer tools do). An agent with such a tool enabled has
    its tasks claimed where its computer lives; others run on any worker."""
    return getattr(tool, "uses_computer", False) is True


class ToolRegistry:
    """The tools a process offers; each agent enables a subset (``settings.tools``)."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        name = tool.spec.name
        if name == ASK_USER or name in self._tools:
            raise ValueError(f"a tool named {name!r} is already registered")
        self._tools[name] = tool

    def names(self) -> list[str]:
        return sorted(self._tools)

    def all(self) -> list[Tool]:
        return list(self._tools.values())

    def for_agent(self, agent: Agent) -> Mapping[str, Tool]:
        enabled = agent.settings.tools
        if enabled is None:
            return dict(self._tools)
        return {name: tool for name, tool in self._tools.items() if name in enabled}

    def needs_computer(self, agent: Agent) -> bool:
        """Whether a tool ``agent`` may use runs in its computer (``uses_computer``)."""
        return any(uses_computer(tool) for tool in self.for_agent(agent).values())

    def specs_for(self, agent: Agent) -> tuple[ToolSpec, ...]:
        return (ASK_USER_SPEC, *(tool.spec for tool in self.for_agent(agent).values()))


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def check_args(spec: ToolSpec, args: Mapping[str, Any]) -> str | None:
    """A message saying what is wrong with ``args`` for ``spec``, or ``None`` when they fit.

    Checks required properties, the JSON types of known properties and enums: enough to give
    the model a clear error to correct, without a full JSON Schema engine.
    """
    schema = spec.parameters
    missing = [name for name in schema.get("required", []) if name not in args]
    if missing:
        return f"{spec.name}: missing required argument(s) {', '.join(map(repr, missing))}"
    properties: dict[str, Any] = schema.get("properties", {})
    for name, value in args.items():
        prop = properties.get(name)
        if prop is None:
            continue
        expected = prop.get("type")
        if isinstance(expected, str) and expected in _JSON_TYPES:
            kinds = _JSON_TYPES[expected]
            if not isinstance(value, kinds) or (
                expected in ("integer", "number") and isinstance(value, bool)
            ):
                return f"{spec.name}: argument {name!r} must be of type {expected}"
        if "enum" in prop and value not in prop["enum"]:
            return f"{spec.name}: argument {name!r} must be one of {prop['enum']!r}"
    return None


def load_tools(specs: Iterable[str]) -> list[Tool]:
    """The tools named by ``module:attribute`` specs (``Settings.tools``): each attribute is a
    ``Tool``, an iterable of tools, or a callable without arguments returning either.

    Raises ``ValueError`` naming the spec that cannot be loaded, so a process refuses to start
    rather than run agents without a tool they were promised.
    """
    loaded: list[Tool] = []
    for spec in specs:
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"tool plugin {spec!r}: expected 'module:attribute'")
        try:
            value: object = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"tool plugin {spec!r} cannot be loaded: {error}") from error
        if callable(value) and not _is_tool(value):
            value = value()
        found: list[object] = (
            [value]
            if _is_tool(value)
            else list(cast(Iterable[object], value))
            if isinstance(value, Iterable)
            else []
        )
        tools = [item for item in found if _is_tool(item)]
        if not found or len(tools) != len(found):
            raise ValueError(f"tool plugin {spec!r} is not a Tool nor an iterable of Tools")
        loaded += tools
    return loaded


def _is_tool(value: object) -> TypeGuard[Tool]:
    spec = getattr(value, "spec", None)
    return isinstance(spec, ToolSpec) and callable(getattr(value, "run", None))
