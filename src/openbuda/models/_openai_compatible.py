"""pydantic-ai's ``OpenAIChatModel``, taught the quirks of OpenAI-compatible servers.

pydantic-ai reads Chat Completions streams well (text, tool calls, ``<think>`` and
``reasoning_content`` thinking, refusals, usage, missing finish reasons), and we keep all of
that. Two things real servers send are not handled there, so this subclass handles them
through the hooks ``OpenAIStreamedResponse`` documents for subclasses (``_map_part_delta``,
``_map_tool_call_delta``):

- the legacy ``function_call`` field, beside or instead of ``tool_calls`` (older vLLM chat
  templates, LocalAI, functionary): it becomes a tool call, marked so that the client drops it
  when the same reply also has ``tool_calls``;
- several tool calls streamed under the same ``index`` (or with none), as some Ollama versions
  do: a delta that names a new call id, or that starts a new named call after the previous one's
  arguments are complete, opens a new call instead of being glued onto the previous one.

Everything else (missing or duplicate call ids, arguments that are malformed or encoded twice)
is settled by ``openbuda.models._tool_calls`` for every adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import chat_completion_chunk
from pydantic_ai.messages import ModelResponseStreamEvent
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIStreamedResponse

__all__ = ["LEGACY_FUNCTION_CALL", "OpenAICompatibleChatModel"]

LEGACY_FUNCTION_CALL = "openbuda_legacy_function_call"
"""``provider_details`` key marking a tool call read from the legacy ``function_call`` field."""


class OpenAICompatibleChatModel(OpenAIChatModel):
    """``OpenAIChatModel`` (Chat Completions) that also reads legacy and mis-indexed tool calls."""

    @property
    def _streamed_response_cls(self) -> type[OpenAIStreamedResponse]:
        return _CompatibleStreamedResponse


@dataclass
class _Call:
    call_id: str | None
    name: str | None
    arguments: str = ""

    def complete(self) -> bool:
        if not self.arguments.strip():
            return False
        try:
            json.loads(self.arguments)
        except ValueError:
            return False
        return True


@dataclass
class _CompatibleStreamedResponse(OpenAIStreamedResponse):
    _calls: list[_Call] = field(default_factory=list[_Call], init=False)
    _call_at_index: dict[int | None, int] = field(default_factory=dict[int | None, int], init=False)
    _legacy_calls: list[_Call] = field(default_factory=list[_Call], init=False)

    def _map_part_delta(
        self, choice: chat_completion_chunk.Choice
    ) -> Iterable[ModelResponseStreamEvent]:
        yield from super()._map_part_delta(choice)
        yield from self._map_legacy_function_call(choice)

    def _map_tool_call_delta(
        self, choice: chat_completion_chunk.Choice
    ) -> Iterable[ModelResponseStreamEvent]:
        deltas = choice.delta.tool_calls
        if not deltas:
            return ()
        renumbered = [
            delta.model_copy(update={"index": self._call_number(delta)}) for delta in deltas
        ]
        fixed = choice.model_copy(
            update={"delta": choice.delta.model_copy(update={"tool_calls": renumbered})}
        )
        return super()._map_tool_call_delta(fixed)

    def _call_number(self, delta: chat_completion_chunk.ChoiceDeltaToolCall) -> int:
        """The position of the call this delta belongs to, among the calls of the reply."""
        wire_index: int | None = delta.index  # pyright: ignore[reportUnnecessaryComparison]
        function = delta.function
        name = function.name if function is not None else None
        arguments: Any = function.arguments if function is not None else None
        number = self._call_at_index.get(wire_index)
        if number is not None:
            current = self._calls[number]
            new_id = bool(delta.id) and bool(current.call_id) and delta.id != current.call_id
            new_named_call = bool(name) and not delta.id and current.complete()
            if new_id or new_named_call:
                number = None
        if number is None:
            number = len(self._calls)
            self._calls.append(_Call(call_id=delta.id, name=name))
            self._call_at_index[wire_index] = number
        call = self._calls[number]
        call.call_id = call.call_id or delta.id
        call.name = call.name or name
        if isinstance(arguments, str):
            call.arguments += arguments
        return number

    def _map_legacy_function_call(
        self, choice: chat_completion_chunk.Choice
    ) -> Iterable[ModelResponseStreamEvent]:
        function_call = choice.delta.function_call
        if function_call is None:
            return
        calls = self._legacy_calls
        arguments: Any = function_call.arguments
        if not calls or (function_call.name and calls[-1].complete()):
            calls.append(_Call(call_id=None, name=function_call.name))
        if isinstance(arguments, str):
            calls[-1].arguments += arguments
        yield from self._parts_manager.handle_tool_call_delta_events(
            vendor_part_id=(LEGACY_FUNCTION_CALL, len(calls)),
            tool_name=function_call.name or None,
            args=function_call.arguments,
            tool_call_id=None,
            provider_details={LEGACY_FUNCTION_CALL: True},
        )
