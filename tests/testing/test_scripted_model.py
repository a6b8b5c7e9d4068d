"""ScriptedModel and FunctionModel: scripted answers, streaming, loud failures, the registry."""

from __future__ import annotations

import anyio
import pytest

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    ModelReply,
    ToolCall,
    ToolResultTurn,
    UserTurn,
)
from openbuda.domain.errors import ModelError
from openbuda.models import resolve_model
from openbuda.settings import Settings
from openbuda.testing import (
    FunctionModel,
    ScriptedModel,
    call,
    calls,
    delayed,
    register_test_model,
    registered_model,
    registered_test_model,
    reply,
    tool_call,
    unregister_test_model,
)

pytestmark = pytest.mark.anyio

HELLO = ModelInput(turns=(UserTurn("Hello"),))


class Deltas:
    def __init__(self) -> None:
        self.items: list[str] = []

    async def __call__(self, text: str) -> None:
        self.items.append(text)


async def test_steps_answer_in_order_and_inputs_are_recorded() -> None:
    model = ScriptedModel([reply("one"), "two"])
    second = ModelInput(turns=(UserTurn("Again"),))

    assert (await model.respond(HELLO)).text == "one"
    assert (await model.respond(second)).text == "two"

    assert model.inputs == [HELLO, second]
    assert model.last_input is second
    assert model.remaining == 0
    model.assert_all_used()


async def test_an_unexpected_call_fails_loudly_and_is_remembered() -> None:
    model = ScriptedModel([reply("only")], name="test:helper")
    await model.respond(HELLO)

    with pytest.raises(AssertionError, match=r"unexpected call #2.*1 step\(s\).*'Hello'"):
        await model.respond(HELLO)

    with pytest.raises(AssertionError, match="1 unexpected call"):
        model.assert_all_used()


async def test_unused_steps_are_reported() -> None:
    model = ScriptedModel([reply("used"), call("lookup", q="x"), reply("never")])
    await model.respond(HELLO)

    with pytest.raises(AssertionError, match=r"2 step\(s\) were never used.*'lookup'.*'never'"):
        model.assert_all_used()


async def test_tool_call_helpers_get_call_ids_numbered_in_the_conversation() -> None:
    model = ScriptedModel(
        [
            call("get_weather", city="Paris"),
            calls(("get_weather", {"city": "Rome"}), tool_call("clock"), text="Two more."),
            calls(tool_call("named", call_id="mine")),
        ]
    )

    first = await model.respond(HELLO)
    followed = ModelInput(
        turns=(
            UserTurn("Hello"),
            AssistantTurn("", first.tool_calls),
            ToolResultTurn("call_1", "get_weather", "sunny"),
        )
    )
    second = await model.respond(followed)
    third = await model.respond(HELLO)

    assert first.tool_calls == (ToolCall("call_1", "get_weather", {"city": "Paris"}),)
    assert second.text == "Two more."
    assert second.tool_calls == (
        ToolCall("call_2", "get_weather", {"city": "Rome"}),
        ToolCall("call_3", "clock", {}),
    )
    assert third.tool_calls == (ToolCall("mine", "named", {}),)


async def test_text_is_streamed_in_chunks() -> None:
    model = ScriptedModel([reply("abcdefghij")], chunk_size=4)
    deltas = Deltas()

    answer = await model.respond(HELLO, deltas)

    assert deltas.items == ["abcd", "efgh", "ij"]
    assert answer.text == "abcdefghij"


async def test_whole_text_in_one_delta() -> None:
    model = ScriptedModel([reply("abcdefghij")], chunk_size=None)
    deltas = Deltas()

    await model.respond(HELLO, deltas)

    assert deltas.items == ["abcdefghij"]


async def test_a_step_can_raise() -> None:
    model = ScriptedModel([ModelError("provider down"), reply("recovered")])

    with pytest.raises(ModelError, match="provider down"):
        await model.respond(HELLO)
    assert (await model.respond(HELLO)).text == "recovered"
    model.assert_all_used()


async def test_a_step_can_be_a_function_sync_or_async() -> None:
    async def later(request: ModelInput) -> ModelReply:
        await anyio.lowlevel.checkpoint()
        return reply(f"{len(request.turns)} turn(s)")

    model = ScriptedModel([lambda request: f"echo {request.turns[-1]}", later])

    assert (await model.respond(HELLO)).text.startswith("echo UserTurn")
    assert (await model.respond(HELLO)).text == "1 turn(s)"


async def test_delayed_steps_let_calls_overlap() -> None:
    model = ScriptedModel([delayed(0.2, reply("slow")), reply("fast")])
    finished: list[str] = []

    async def ask() -> None:
        finished.append((await model.respond(HELLO)).text)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as group:
            group.start_soon(ask)
            await anyio.sleep(0.01)
            group.start_soon(ask)

    assert finished == ["fast", "slow"]


async def test_a_delayed_step_is_cancellable() -> None:
    model = ScriptedModel([delayed(30, reply("never"))])

    with anyio.move_on_after(0.05) as scope:
        await model.respond(HELLO)

    assert scope.cancelled_caught


def test_a_bad_chunk_size_is_refused() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        ScriptedModel(chunk_size=0)


async def test_function_model_answers_every_call() -> None:
    model = FunctionModel(lambda request: f"you said {len(request.turns)} thing(s)", chunk_size=3)
    deltas = Deltas()

    for _ in range(3):
        assert (await model.respond(HELLO, deltas)).text == "you said 1 thing(s)"

    assert len(model.inputs) == 3
    assert "".join(deltas.items) == "you said 1 thing(s)" * 3


async def test_function_model_async_function_with_tool_calls() -> None:
    async def decide(request: ModelInput) -> ModelReply:
        last = request.turns[-1]
        if isinstance(last, ToolResultTurn):
            return reply(f"The result was {last.output}.")
        return call("lookup", query="openbuda")

    model = FunctionModel(decide)
    first = await model.respond(HELLO)
    second = await model.respond(
        ModelInput(
            turns=(
                UserTurn("Hello"),
                AssistantTurn("", first.tool_calls),
                ToolResultTurn(first.tool_calls[0].call_id, "lookup", "42"),
            )
        )
    )

    assert first.tool_calls == (ToolCall("call_1", "lookup", {"query": "openbuda"}),)
    assert second.text == "The result was 42."


async def test_a_step_giving_something_else_is_a_type_error() -> None:
    model = FunctionModel(lambda request: 42)  # pyright: ignore[reportArgumentType, reportUnknownLambdaType]

    with pytest.raises(TypeError, match="must give a ModelReply or str"):
        await model.respond(HELLO)


async def test_registered_test_models_resolve_by_name() -> None:
    settings = Settings.model_validate({}).model_copy(update={"block_real_models": True})
    model = ScriptedModel([reply("registered")])

    register_test_model("helper", model)
    try:
        assert registered_test_model("helper") is model
        assert resolve_model("test:helper", settings) is model
    finally:
        unregister_test_model("helper")
    assert registered_test_model("helper") is None

    with registered_model("scoped", model):
        assert resolve_model("test:scoped", settings) is model
    assert registered_test_model("scoped") is None


def test_test_model_names_are_plain_words() -> None:
    with pytest.raises(ValueError, match="plain word"):
        register_test_model("test:x", ScriptedModel())
