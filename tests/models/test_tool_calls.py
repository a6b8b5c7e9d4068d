"""Arguments and call ids of tool calls, as every adapter settles them."""

from __future__ import annotations

from typing import Any

import pytest

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    ToolCall,
    ToolResultTurn,
    UserTurn,
)
from openbuda.domain.errors import BadModelReply
from openbuda.models._tool_calls import (
    RawToolCall,
    fill_missing_call_ids,
    normalize_tool_calls,
    parse_arguments,
)

FRESH = ModelInput(turns=(UserTurn("Hi"),))
EARLIER = ModelInput(
    turns=(
        UserTurn("Hi"),
        AssistantTurn("", (ToolCall("call_1", "a", {}), ToolCall("x", "b", {}))),
        ToolResultTurn("call_1", "a", "ok"),
        ToolResultTurn("x", "b", "ok"),
    )
)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (None, {}),
        ("", {}),
        ("  ", {}),
        ("{}", {}),
        ('{"a": 1, "b": [true, null]}', {"a": 1, "b": [True, None]}),
        ('"{\\"a\\": 1}"', {"a": 1}),
        ({"a": 1}, {"a": 1}),
    ],
)
def test_arguments_become_a_dict(arguments: str | dict[str, Any] | None, expected: object) -> None:
    assert parse_arguments(arguments, tool_name="t", model_name="m") == expected


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ('{"a": ', "malformed JSON"),
        ("a=1", "malformed JSON"),
        ("42", "a JSON number, not an object"),
        ("true", "a JSON boolean, not an object"),
        ("null", "a JSON null, not an object"),
        ('"{not json"', "malformed JSON"),
    ],
)
def test_unusable_arguments(arguments: str, problem: str) -> None:
    with pytest.raises(BadModelReply, match=problem) as caught:
        parse_arguments(arguments, tool_name="search", model_name="openai:m")

    assert "'search'" in caught.value.message
    assert "'openai:m'" in caught.value.message


def test_long_arguments_are_cut_in_the_message() -> None:
    with pytest.raises(BadModelReply) as caught:
        parse_arguments("{" + "x" * 1000, tool_name="t", model_name="m")

    assert len(caught.value.details["arguments"]) < 250


def test_ids_are_kept_when_usable_and_made_up_otherwise() -> None:
    calls = normalize_tool_calls(
        EARLIER,
        [
            RawToolCall("fresh", "a", "{}"),
            RawToolCall(None, "a", None),
            RawToolCall("call_1", "a", None),  # already used earlier in the conversation
            RawToolCall("fresh", "b", None),  # a duplicate within the reply
            RawToolCall("", "b", None),
        ],
        model_name="m",
    )

    assert [call.call_id for call in calls] == ["fresh", "call_4", "call_5", "call_6", "call_7"]


def test_made_up_ids_skip_ids_taken_by_the_provider() -> None:
    calls = normalize_tool_calls(
        FRESH, [RawToolCall(None, "a", None), RawToolCall("call_1", "b", None)], model_name="m"
    )

    assert [call.call_id for call in calls] == ["call_1_2", "call_1"]


def test_same_input_same_ids() -> None:
    raw = [RawToolCall(None, "a", None), RawToolCall(None, "b", None)]

    assert normalize_tool_calls(EARLIER, raw, model_name="m") == normalize_tool_calls(
        EARLIER, raw, model_name="m"
    )


def test_fill_missing_keeps_given_ids_even_duplicates() -> None:
    calls = fill_missing_call_ids(
        EARLIER, [ToolCall("", "a", {}), ToolCall("dup", "b", {}), ToolCall("dup", "c", {})]
    )

    assert [call.call_id for call in calls] == ["call_3", "dup", "dup"]
