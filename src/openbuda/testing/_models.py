"""Test models: ``ScriptedModel`` answers from a script, ``FunctionModel`` from a function.

::

    from openbuda.testing import ScriptedModel, call, reply

    model = ScriptedModel([
        call("get_weather", city="Paris"),          # step 1: a tool call (id call_1)
        reply("It is sunny in Paris."),             # step 2: the final answer
    ])
    ...                                             # run the agent with it
    model.assert_all_used()
    assert model.inputs[1].turns[-1].output == "sunny"

A step is a ``ModelReply`` (``reply``, ``call``, ``calls`` build them; a plain ``str`` is a text
reply), a function ``(ModelInput) -> ModelReply | str`` (sync or async), an exception to raise,
or a ``Step`` wrapping one of those with a delay. A call beyond the script raises
``AssertionError`` (and is remembered, so ``assert_all_used`` fails even when the caller
swallowed it). Tool calls built without an id get ``call_<n>``, numbered after the calls
already in the conversation, as the real adapters do.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio
import anyio.lowlevel

from openbuda.domain.conversation import (
    ModelInput,
    ModelReply,
    ToolCall,
    ToolResultTurn,
    Usage,
    UserTurn,
)
from openbuda.models._tool_calls import fill_missing_call_ids
from openbuda.ports import TextDeltaSink

__all__ = [
    "FunctionModel",
    "ReplyFunction",
    "ScriptedModel",
    "Step",
    "StepLike",
    "call",
    "calls",
    "delayed",
    "reply",
    "tool_call",
]

ReplyFunction: TypeAlias = Callable[[ModelInput], ModelReply | str | Awaitable[ModelReply | str]]
"""A function answering a model call, sync or async; a ``str`` is a text reply."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a script: what to answer (or raise), after ``delay`` seconds."""

    then: ModelReply | str | BaseException | ReplyFunction
    delay: float = 0.0


StepLike: TypeAlias = Step | ModelReply | str | BaseException | ReplyFunction


def reply(text: str, *, input_tokens: int = 0, output_tokens: int = 0) -> ModelReply:
    """A text reply (the model is done)."""
    return ModelReply(text=text, usage=Usage(input_tokens, output_tokens))


def tool_call(name: str, args: dict[str, Any] | None = None, *, call_id: str = "") -> ToolCall:
    """One tool call; an empty ``call_id`` is filled in with ``call_<n>`` when answered."""
    return ToolCall(call_id=call_id, name=name, args=dict(args or {}))


def call(name: str, /, **args: Any) -> ModelReply:
    """A reply that calls one tool: ``call("get_weather", city="Paris")``."""
    return ModelReply(text="", tool_calls=(tool_call(name, args),))


def calls(*items: ToolCall | tuple[str, dict[str, Any]], text: str = "") -> ModelReply:
    """A reply calling several tools: ``calls(("a", {"x": 1}), tool_call("b"), text="…")``."""
    built = tuple(
        item if isinstance(item, ToolCall) else tool_call(item[0], item[1]) for item in items
    )
    return ModelReply(text=text, tool_calls=built)


def delayed(seconds: float, step: StepLike) -> Step:
    """``step``, answered after ``seconds`` (an ``anyio.sleep``, so cancellable)."""
    if isinstance(step, Step):
        return Step(step.then, step.delay + seconds)
    return Step(step, seconds)


class _Streaming:
    """What both test models share: recording inputs and answering with streamed text."""

    name: str
    chunk_size: int | None

    def __init__(self, name: str, chunk_size: int | None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be at least 1 (or None for one delta)")
        self.name = name
        self.chunk_size = chunk_size
        self.inputs: list[ModelInput] = []
        """Every ``ModelInput`` received, in order."""

    @property
    def last_input(self) -> ModelInput:
        if not self.inputs:
            raise AssertionError(f"model {self.name!r} was never called")
        return self.inputs[-1]

    async def _answer(
        self,
        request: ModelInput,
        then: ModelReply | str | BaseException | ReplyFunction,
        on_text: TextDeltaSink | None,
    ) -> ModelReply:
        if isinstance(then, BaseException):
            raise then
        if callable(then):
            result = then(request)
            then = await result if inspect.isawaitable(result) else result
        answer = reply(then) if isinstance(then, str) else then
        if not isinstance(answer, ModelReply):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"model {self.name!r}: a step must give a ModelReply or str, got {answer!r}"
            )
        answer = ModelReply(
            text=answer.text,
            tool_calls=fill_missing_call_ids(request, answer.tool_calls),
            usage=answer.usage,
            model_name=answer.model_name or self.name,
        )
        if on_text is not None and answer.text:
            size = self.chunk_size or len(answer.text)
            for start in range(0, len(answer.text), size):
                await on_text(answer.text[start : start + size])
                await anyio.lowlevel.checkpoint()
        return answer


class ScriptedModel(_Streaming):
    """A ``ModelClient`` answering each call with the next step of its script.

    ``chunk_size`` is how many characters of text go to ``on_text`` per delta (``None``: the
    whole text in one delta).
    """

    def __init__(
        self,
        steps: Iterable[StepLike] = (),
        *,
        name: str = "test:scripted",
        chunk_size: int | None = 8,
    ) -> None:
        super().__init__(name, chunk_size)
        self._steps: deque[Step] = deque()
        self._used = 0
        self.unexpected: list[AssertionError] = []
        """The calls that found the script used up (each also raised at the call)."""
        self.add(*steps)

    def __repr__(self) -> str:
        return f"ScriptedModel({self.name!r}, used={self._used}, remaining={len(self._steps)})"

    def add(self, *steps: StepLike) -> None:
        """Append steps to the script."""
        self._steps.extend(step if isinstance(step, Step) else Step(step) for step in steps)

    @property
    def remaining(self) -> int:
        """Steps not used yet."""
        return len(self._steps)

    async def respond(
        self, request: ModelInput, on_text: TextDeltaSink | None = None
    ) -> ModelReply:
        self.inputs.append(request)
        if not self._steps:
            error = AssertionError(
                f"ScriptedModel {self.name!r} got an unexpected call #{len(self.inputs)}: its "
                f"{self._used} step(s) are all used. The call's last turn: {_describe_last(request)}"
            )
            self.unexpected.append(error)
            raise error
        step = self._steps.popleft()
        self._used += 1
        if step.delay:
            await anyio.sleep(step.delay)
        return await self._answer(request, step.then, on_text)

    def assert_all_used(self) -> None:
        """Fail when steps are left or a call found the script used up."""
        problems: list[str] = []
        if self._steps:
            left = ", ".join(_describe_step(step) for step in self._steps)
            problems.append(
                f"{len(self._steps)} step(s) were never used (after {self._used} call(s)): {left}"
            )
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} unexpected call(s): {self.unexpected[0]}")
        if problems:
            raise AssertionError(f"ScriptedModel {self.name!r}: " + "; ".join(problems))


class FunctionModel(_Streaming):
    """A ``ModelClient`` answering every call with ``fn(request)`` (sync or async)."""

    def __init__(
        self, fn: ReplyFunction, *, name: str = "test:function", chunk_size: int | None = None
    ) -> None:
        super().__init__(name, chunk_size)
        self.fn = fn

    def __repr__(self) -> str:
        return f"FunctionModel({self.name!r}, calls={len(self.inputs)})"

    async def respond(
        self, request: ModelInput, on_text: TextDeltaSink | None = None
    ) -> ModelReply:
        self.inputs.append(request)
        return await self._answer(request, self.fn, on_text)


def _describe_last(request: ModelInput) -> str:
    if not request.turns:
        return "(no turns)"
    turn = request.turns[-1]
    if isinstance(turn, UserTurn):
        return f"user {turn.text[:120]!r}"
    if isinstance(turn, ToolResultTurn):
        return f"tool result of {turn.name!r} ({turn.call_id}): {turn.output[:120]!r}"
    return f"{turn.role} {getattr(turn, 'text', '')[:120]!r}"


def _describe_step(step: Step) -> str:
    then = step.then
    if isinstance(then, ModelReply):
        if then.tool_calls:
            return "calls " + ", ".join(repr(call.name) for call in then.tool_calls)
        return f"reply {then.text[:60]!r}"
    if isinstance(then, str):
        return f"reply {then[:60]!r}"
    if isinstance(then, BaseException):
        return f"raise {then!r}"
    return f"function {getattr(then, '__name__', repr(then))}"
