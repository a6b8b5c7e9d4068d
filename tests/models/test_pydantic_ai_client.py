"""PydanticAIModelClient against the scripted OpenAI-compatible server: what it sends, what it
reads back, how it streams, and how it fails."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    SystemText,
    ToolCall,
    ToolResultTurn,
    ToolSpec,
    Usage,
    UserTurn,
)
from openbuda.domain.errors import BadModelReply, ModelError
from openbuda.models._pydantic_ai_client import PydanticAIModelClient
from openbuda.testing.openai_server import OpenAIServer, Script

MakeClient = Callable[..., PydanticAIModelClient]

pytestmark = pytest.mark.anyio

WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)
ASK = ModelInput(
    turns=(SystemText("Be brief."), UserTurn("What is the weather in Paris?")),
    tools=(WEATHER,),
)


class Deltas:
    def __init__(self) -> None:
        self.items: list[str] = []

    async def __call__(self, text: str) -> None:
        self.items.append(text)


async def test_text_reply_streams_deltas_and_reports_usage(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add({"text": "Sunny and warm, all day long.", "usage": {"prompt_tokens": 42}})
    deltas = Deltas()

    reply = await client.respond(ASK, deltas)

    assert reply.text == "Sunny and warm, all day long."
    assert reply.tool_calls == ()
    assert len(deltas.items) > 3
    assert "".join(deltas.items) == reply.text
    assert reply.usage == Usage(input_tokens=42, output_tokens=5)
    assert reply.model_name == "gpt-4o-mini"


async def test_request_carries_turns_tools_and_streaming(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add({"text": "ok"})
    request = ModelInput(
        turns=(
            SystemText("You are helpful."),
            SystemText("Memory: the user likes tea."),
            UserTurn("Weather in Paris and Rome?"),
            AssistantTurn(
                "Checking.",
                (
                    ToolCall("call_a", "get_weather", {"city": "Paris"}),
                    ToolCall("call_b", "get_weather", {"city": "Rome"}),
                ),
            ),
            ToolResultTurn("call_a", "get_weather", "sunny"),
            ToolResultTurn("call_b", "get_weather", "no such city", is_error=True),
            UserTurn("And tomorrow?"),
        ),
        tools=(WEATHER,),
        max_output_tokens=50,
    )

    await client.respond(request)

    body = server.chat_requests[-1]
    assert body["model"] == "gpt-4o-mini"
    assert body["stream"] is True
    assert body["max_completion_tokens"] == 50
    messages: list[dict[str, Any]] = body["messages"]
    assert [m["role"] for m in messages] == [
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
    ]
    assert messages[0]["content"] == "You are helpful."
    assert messages[1]["content"] == "Memory: the user likes tea."
    assert messages[2]["content"] == "Weather in Paris and Rome?"
    assistant = messages[3]
    assert assistant["content"] == "Checking."
    assert [(c["id"], c["function"]["name"]) for c in assistant["tool_calls"]] == [
        ("call_a", "get_weather"),
        ("call_b", "get_weather"),
    ]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert messages[4]["tool_call_id"] == "call_a"
    assert messages[4]["content"] == "sunny"
    assert messages[5]["tool_call_id"] == "call_b"
    assert "no such city" in messages[5]["content"]
    assert messages[6]["content"] == "And tomorrow?"
    (tool,) = body["tools"]
    assert tool["function"]["name"] == "get_weather"
    assert tool["function"]["description"] == "The weather in a city."
    assert tool["function"]["parameters"]["properties"] == {"city": {"type": "string"}}


async def test_tool_call_with_arguments(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add(
        {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "c1"}]}
    )

    reply = await client.respond(ASK)

    assert reply.text == ""
    assert reply.tool_calls == (ToolCall("c1", "get_weather", {"city": "Paris"}),)


async def test_text_and_several_tool_calls(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add(
        {
            "text": "Let me check both.",
            "tool_calls": [
                {"name": "get_weather", "arguments": {"city": "Paris"}},
                {"name": "get_weather", "arguments": {"city": "Rome", "days": [1, 2]}},
            ],
        }
    )
    deltas = Deltas()

    reply = await client.respond(ASK, deltas)

    assert reply.text == "Let me check both."
    assert "".join(deltas.items) == reply.text
    assert reply.tool_calls == (
        ToolCall("call_1", "get_weather", {"city": "Paris"}),
        ToolCall("call_2", "get_weather", {"city": "Rome", "days": [1, 2]}),
    )


# -- quirks of OpenAI-compatible servers ----------------------------------------------------

PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
ROME = {"name": "get_weather", "arguments": {"city": "Rome"}}


@pytest.mark.parametrize(
    ("quirk", "text", "calls"),
    [
        pytest.param(
            {"function_call": PARIS},
            "",
            [("call_1", {"city": "Paris"})],
            id="legacy-function-call",
        ),
        pytest.param(
            {"text": "Calling.", "function_call": PARIS},
            "Calling.",
            [("call_1", {"city": "Paris"})],
            id="legacy-function-call-with-text",
        ),
        pytest.param(
            {"function_call": PARIS, "tool_calls": [{**PARIS, "id": "t1"}]},
            "",
            [("t1", {"city": "Paris"})],
            id="legacy-function-call-beside-tool-calls",
        ),
        pytest.param({"text": None}, "", [], id="null-content"),
        pytest.param({"text": ""}, "", [], id="empty-content"),
        pytest.param(
            {"text": None, "tool_calls": [PARIS]},
            "",
            [("call_1", {"city": "Paris"})],
            id="null-content-with-tool-calls",
        ),
        pytest.param(
            {"tool_calls": [{**PARIS, "id": None}, {**ROME, "id": None}]},
            "",
            [("call_1", {"city": "Paris"}), ("call_2", {"city": "Rome"})],
            id="missing-call-ids",
        ),
        pytest.param(
            {"tool_calls": [{**PARIS, "id": ""}]},
            "",
            [("call_1", {"city": "Paris"})],
            id="empty-call-id",
        ),
        pytest.param(
            {"tool_calls": [{**PARIS, "id": "same"}, {**ROME, "id": "same"}]},
            "",
            [("same", {"city": "Paris"}), ("call_2", {"city": "Rome"})],
            id="duplicate-call-ids",
        ),
        pytest.param(
            {"same_index": True, "tool_calls": [PARIS, ROME]},
            "",
            [("call_1", {"city": "Paris"}), ("call_2", {"city": "Rome"})],
            id="calls-streamed-under-one-index",
        ),
        pytest.param(
            {"same_index": True, "tool_calls": [{**PARIS, "id": None}, {**ROME, "id": None}]},
            "",
            [("call_1", {"city": "Paris"}), ("call_2", {"city": "Rome"})],
            id="calls-under-one-index-without-ids",
        ),
        pytest.param(
            {"no_index": True, "tool_calls": [{**PARIS, "id": None}, {**ROME, "id": None}]},
            "",
            [("call_1", {"city": "Paris"}), ("call_2", {"city": "Rome"})],
            id="calls-without-index",
        ),
        pytest.param(
            {"tool_calls": [{"name": "get_weather", "arguments": json.dumps('{"city": "Paris"}')}]},
            "",
            [("call_1", {"city": "Paris"})],
            id="arguments-encoded-twice",
        ),
        pytest.param(
            {"tool_calls": [{"name": "get_weather", "arguments": ""}]},
            "",
            [("call_1", {})],
            id="empty-arguments",
        ),
        pytest.param({"text": "Hi.", "finish_reason": None}, "Hi.", [], id="no-finish-reason"),
        pytest.param(
            {"text_chunks": ["<think>", "hmm, Paris", "</think>", "Sunny."]},
            "Sunny.",
            [],
            id="think-tags",
        ),
    ],
)
async def test_server_quirks_are_read(
    server: OpenAIServer,
    client: PydanticAIModelClient,
    quirk: dict[str, Any],
    text: str,
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    server.add(quirk)
    deltas = Deltas()

    reply = await client.respond(ASK, deltas)

    assert reply.text == text
    assert "".join(deltas.items) == text
    assert [(c.call_id, c.args) for c in reply.tool_calls] == calls
    assert all(c.name == "get_weather" for c in reply.tool_calls)


async def test_generated_ids_do_not_reuse_ids_of_the_conversation(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    earlier = ModelInput(
        turns=(
            UserTurn("Paris?"),
            AssistantTurn("", (ToolCall("call_1", "get_weather", {"city": "Paris"}),)),
            ToolResultTurn("call_1", "get_weather", "sunny"),
            UserTurn("And Rome, twice?"),
        ),
        tools=(WEATHER,),
    )
    server.add({"tool_calls": [{**ROME, "id": "call_1"}, {**ROME, "id": None}]})

    reply = await client.respond(earlier)

    assert [c.call_id for c in reply.tool_calls] == ["call_2", "call_3"]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        pytest.param('{"city": "Par', "malformed JSON", id="truncated"),
        pytest.param("{city: Paris}", "malformed JSON", id="not-json"),
        pytest.param("[1, 2]", "a JSON array, not an object", id="array"),
        pytest.param('"Paris"', "a JSON string, not an object", id="string"),
    ],
)
async def test_unusable_arguments_are_a_bad_reply(
    server: OpenAIServer, client: PydanticAIModelClient, arguments: str, problem: str
) -> None:
    server.add({"tool_calls": [{"name": "get_weather", "arguments": arguments}]})

    with pytest.raises(BadModelReply) as caught:
        await client.respond(ASK)

    assert problem in caught.value.message
    assert "'get_weather'" in caught.value.message
    assert caught.value.retryable
    assert caught.value.details["tool"] == "get_weather"


async def test_tool_call_without_name_is_a_bad_reply(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add({"tool_calls": [{"name": "", "arguments": {}}]})

    with pytest.raises(BadModelReply, match="without a tool name"):
        await client.respond(ASK)


async def test_a_body_that_is_not_a_stream_is_a_bad_reply(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add({"raw": "this is not a stream"})

    with pytest.raises(BadModelReply):
        await client.respond(ASK)


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (500, True),
        (502, True),
        (503, True),
        (429, True),
        (408, True),
        (400, False),
        (403, False),
        (404, False),
        (422, False),
    ],
)
async def test_http_errors_map_to_model_errors(
    server: OpenAIServer, client: PydanticAIModelClient, status: int, retryable: bool
) -> None:
    server.add({"status": status, "error": {"message": f"scripted failure {status}"}})

    with pytest.raises(ModelError) as caught:
        await client.respond(ASK)

    error = caught.value
    assert type(error) is ModelError
    assert error.retryable is retryable
    assert f"HTTP {status}" in error.message
    assert f"scripted failure {status}" in error.message
    assert error.details["status_code"] == status
    assert len(server.chat_requests) == 1, "the SDK must not retry on its own"


async def test_rate_limit_reports_retry_after(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add(
        {
            "status": 429,
            "error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"},
            "headers": {"retry-after": "7"},
        }
    )

    with pytest.raises(ModelError) as caught:
        await client.respond(ASK)

    assert caught.value.retryable
    assert caught.value.details["retry_after_seconds"] == 7
    assert caught.value.details["provider_code"] == "rate_limit_exceeded"


async def test_exhausted_quota_is_not_retried(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add(
        {
            "status": 429,
            "error": {"message": "You exceeded your current quota", "code": "insufficient_quota"},
        }
    )

    with pytest.raises(ModelError) as caught:
        await client.respond(ASK)

    assert not caught.value.retryable


async def test_bad_api_key_is_not_retryable_and_says_why(
    server: OpenAIServer, make_client: MakeClient
) -> None:
    client = make_client(api_key="wrong-key")

    with pytest.raises(ModelError) as caught:
        await client.respond(ASK)

    assert not caught.value.retryable
    assert "HTTP 401" in caught.value.message
    assert "Incorrect API key provided." in caught.value.message


async def test_slow_server_times_out_as_a_retryable_error(
    server: OpenAIServer, make_client: MakeClient
) -> None:
    client = make_client(timeout=0.5)
    server.add({"delay": 5, "text": "too late"})

    with anyio.fail_after(4):
        with pytest.raises(ModelError) as caught:
            await client.respond(ASK)

    assert caught.value.retryable
    assert type(caught.value) is ModelError


async def test_stream_that_stalls_times_out(server: OpenAIServer, make_client: MakeClient) -> None:
    client = make_client(timeout=1.0)
    server.add({"text": "slow words arriving", "chunk_delay": 0.2})
    deltas = Deltas()

    with anyio.fail_after(4):
        with pytest.raises(ModelError) as caught:
            await client.respond(ASK, deltas)

    assert caught.value.retryable
    assert deltas.items, "the text that arrived before the deadline was streamed"


async def test_dropped_connection_is_retryable(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add({"drop": True})

    with pytest.raises(ModelError) as caught:
        await client.respond(ASK)

    assert caught.value.retryable
    assert type(caught.value) is ModelError


async def test_server_gone_is_retryable(make_client: MakeClient, server: OpenAIServer) -> None:
    client = make_client()
    server.stop()

    with pytest.raises(ModelError) as caught:
        await client.respond(ASK)

    assert caught.value.retryable


async def test_a_failing_text_sink_is_not_a_model_error(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add({"text": "Hello there"})

    async def broken(text: str) -> None:
        raise KeyError("subscriber gone")

    with pytest.raises(KeyError, match="subscriber gone"):
        await client.respond(ASK, broken)


async def test_client_serves_many_calls_concurrently(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.script = Script(default={"text": "echo: {last_user}"})
    replies: dict[int, str] = {}

    async def ask(n: int) -> None:
        reply = await client.respond(ModelInput(turns=(UserTurn(f"question {n}"),)))
        replies[n] = reply.text

    async with anyio.create_task_group() as group:
        for n in range(32):
            group.start_soon(ask, n)

    assert replies == {n: f"echo: question {n}" for n in range(32)}


async def test_cancelling_a_call_mid_stream_leaves_the_client_usable(
    server: OpenAIServer, client: PydanticAIModelClient
) -> None:
    server.add({"text": "a long answer that keeps coming", "chunk_delay": 0.1}, {"text": "next"})
    deltas = Deltas()

    with anyio.move_on_after(0.35) as scope:
        await client.respond(ASK, deltas)

    assert scope.cancelled_caught
    assert deltas.items
    assert (await client.respond(ASK)).text == "next"
