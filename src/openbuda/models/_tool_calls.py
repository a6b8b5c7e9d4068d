"""Turning the tool calls a model emitted into ``ToolCall`` values every adapter agrees on.

Real servers send arguments as JSON text, as objects, as a JSON string of an object (encoded
twice) or as nothing at all, and call ids that are missing, empty or repeated. Here arguments
become a ``dict`` (malformed ones raise ``BadModelReply``) and every call gets an id that is
unique within the conversation: the provider's when it is usable, else ``call_<n>``, numbered
after the calls already in the conversation, so the same input always gets the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from openbuda.domain.conversation import AssistantTurn, ModelInput, ToolCall, ToolResultTurn
from openbuda.domain.errors import BadModelReply

__all__ = ["RawToolCall", "fill_missing_call_ids", "normalize_tool_calls", "parse_arguments"]

_PREVIEW = 200


@dataclass(frozen=True, slots=True)
class RawToolCall:
    """A tool call as the provider sent it."""

    call_id: str | None
    name: str
    arguments: str | Mapping[str, Any] | None


def parse_arguments(
    arguments: str | Mapping[str, Any] | None, *, tool_name: str, model_name: str
) -> dict[str, Any]:
    """The arguments object of a tool call; ``BadModelReply`` when it is not one."""
    if arguments is None:
        return {}
    if isinstance(arguments, Mapping):
        return dict(arguments)
    text = arguments.strip()
    if not text:
        return {}
    value = _loads(text, model_name, tool_name, arguments)
    if isinstance(value, str) and value.strip().startswith("{"):
        # Some servers encode the arguments object as a JSON string.
        value = _loads(value, model_name, tool_name, arguments)
    if not isinstance(value, dict):
        raise _bad(model_name, tool_name, arguments, f"a JSON {_kind(value)}, not an object")
    return cast(dict[str, Any], value)


def normalize_tool_calls(
    request: ModelInput, calls: Iterable[RawToolCall], *, model_name: str
) -> tuple[ToolCall, ...]:
    """Parse the arguments and settle the ids of the tool calls of one reply to ``request``."""
    taken, count = _conversation_call_ids(request)
    parsed: list[tuple[str | None, str, dict[str, Any]]] = []
    for call in calls:
        if not call.name:
            raise BadModelReply(
                f"model {model_name!r} sent a tool call without a tool name",
                details={"model": model_name},
            )
        arguments = parse_arguments(call.arguments, tool_name=call.name, model_name=model_name)
        parsed.append((call.call_id or None, call.name, arguments))
    # Provider ids that are usable keep their value; the first use of an id wins.
    kept: set[str] = set()
    usable: list[bool] = []
    for call_id, _, _ in parsed:
        ok = call_id is not None and call_id not in taken and call_id not in kept
        if ok and call_id is not None:
            kept.add(call_id)
        usable.append(ok)
    taken |= kept
    result: list[ToolCall] = []
    for (call_id, name, arguments), ok in zip(parsed, usable, strict=True):
        count += 1
        if not ok or call_id is None:
            call_id = _fresh_id(count, taken)
            taken.add(call_id)
        result.append(ToolCall(call_id=call_id, name=name, args=arguments))
    return tuple(result)


def _loads(text: str, model_name: str, tool_name: str, arguments: str) -> object:
    try:
        return json.loads(text)
    except ValueError as error:
        raise _bad(model_name, tool_name, arguments, f"malformed JSON ({error})") from error


def _conversation_call_ids(request: ModelInput) -> tuple[set[str], int]:
    taken: set[str] = set()
    count = 0
    for turn in request.turns:
        if isinstance(turn, AssistantTurn):
            count += len(turn.tool_calls)
            taken.update(call.call_id for call in turn.tool_calls)
        elif isinstance(turn, ToolResultTurn):
            taken.add(turn.call_id)
    return taken, count


def _fresh_id(n: int, taken: set[str]) -> str:
    candidate = f"call_{n}"
    suffix = 1
    while candidate in taken:
        suffix += 1
        candidate = f"call_{n}_{suffix}"
    return candidate


def _kind(value: object) -> str:
    match value:
        case list():
            return "array"
        case str():
            return "string"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case None:
            return "null"
        case _:
            return type(value).__name__


def _bad(model_name: str, tool_name: str, arguments: str, problem: str) -> BadModelReply:
    preview = arguments if len(arguments) <= _PREVIEW else arguments[:_PREVIEW] + "…"
    return BadModelReply(
        f"model {model_name!r} sent arguments for tool {tool_name!r} that are {problem}: {preview!r}",
        details={"model": model_name, "tool": tool_name, "arguments": preview},
    )


def fill_missing_call_ids(request: ModelInput, calls: Iterable[ToolCall]) -> tuple[ToolCall, ...]:
    """Give calls with an empty ``call_id`` a fresh ``call_<n>``; other ids stay as they are."""
    calls = tuple(calls)
    taken, count = _conversation_call_ids(request)
    taken.update(call.call_id for call in calls if call.call_id)
    filled: list[ToolCall] = []
    for call in calls:
        count += 1
        if not call.call_id:
            call = ToolCall(call_id=_fresh_id(count, taken), name=call.name, args=call.args)
            taken.add(call.call_id)
        filled.append(call)
    return tuple(filled)
