"""The suite's stateless model: a plan in the message, a reply from the request alone."""

from __future__ import annotations

from typing import Any

import pytest

from tests.scaleout.model import Plan, answer_for, respond


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(reply: dict[str, Any]) -> dict[str, Any]:
    calls = [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": "{}"}}
        for c in reply.get("tool_calls", [])
    ]
    return {"role": "assistant", "content": reply.get("text"), "tool_calls": calls}


def tool(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def test_plan_text_round_trips() -> None:
    for plan in (
        Plan("s001-m0", ("effect", "ask", "effect2", "choice"), 80),
        Plan("s001-m1", (), 80),
        Plan("s001-m2", ("effect",)),
        Plan("x", ()),
    ):
        assert Plan.parse(plan.text) == plan
    assert Plan.parse("[x] plan: fly") is None
    assert Plan.parse("hello") is None


def test_a_whole_task_step_by_step() -> None:
    plan = Plan("s007-m2", ("effect2", "ask", "choice", "effect"), 50)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        user("[s007-m1] plan: effect"),  # an earlier task of the session
        assistant({"tool_calls": [{"id": "s007-m1.0.0", "name": "effect"}]}),
        tool("s007-m1.0.0", "effect made"),
        assistant({"text": "done s007-m1"}),
        user(plan.text),
    ]
    first = respond({"messages": messages})
    assert first is not None
    assert [c["id"] for c in first["tool_calls"]] == ["s007-m2.0.0", "s007-m2.0.1"]
    assert first == respond({"messages": list(messages)})  # the same request, the same reply
    assert 0 <= first["delay"] <= 0.05
    messages += [
        assistant(first),
        tool("s007-m2.0.0", "ok"),
        tool("s007-m2.0.1", "interrupted"),
    ]
    ask = respond({"messages": messages})
    assert ask is not None
    (call,) = ask["tool_calls"]
    assert call["name"] == "ask_user"
    question = {"id": "q_1", "kind": "text", "prompt": call["arguments"]["prompt"]}
    messages += [assistant(ask), tool(call["id"], answer_for(question)["text"])]
    choice = respond({"messages": messages})
    assert choice is not None
    (call,) = choice["tool_calls"]
    assert call["arguments"]["kind"] == "choice"
    question = {"id": "q_2", "kind": "choice", "prompt": "?", "options": ["red", "blue"]}
    assert answer_for(question) == {"question_id": "q_2", "choice": "blue"}
    messages += [assistant(choice), tool(call["id"], "blue")]
    last = respond({"messages": messages})
    assert last is not None
    messages += [assistant(last), tool("s007-m2.3.0", "effect made")]
    final = respond({"messages": messages})
    assert final is not None
    assert final["text"] == "done s007-m2"


@pytest.mark.parametrize(
    ("turns", "problem"),
    [
        ([assistant({"tool_calls": [{"id": "other", "name": "effect"}]})], "shows calls"),
        (
            [
                assistant({"tool_calls": [{"id": "t.0.0", "name": "effect"}]}),
                tool("t.0.0", "ok"),
                tool("t.0.0", "ok"),
            ],
            "did not call",
        ),
        (
            [
                assistant({"tool_calls": [{"id": "t.0.0", "name": "effect"}]}),
                assistant({"tool_calls": [{"id": "t.1.0", "name": "ask_user"}]}),
            ],
            "lacks the results",
        ),
        (
            [
                assistant({"tool_calls": [{"id": "t.0.0", "name": "effect"}]}),
                tool("t.0.0", "ok"),
                assistant({"tool_calls": [{"id": "t.1.0", "name": "ask_user"}]}),
                tool("t.1.0", "something else"),
            ],
            "the answer to",
        ),
        ([{"role": "developer", "content": "x"}], "unexpected 'developer'"),
    ],
)
def test_a_confusing_conversation_is_called_out(turns: list[dict[str, Any]], problem: str) -> None:
    plan = Plan("t", ("effect", "ask"))
    messages = [user(plan.text), *turns]
    reply = respond({"messages": messages})
    assert reply is not None
    assert reply["text"].startswith("confused t: ")
    assert problem in reply["text"]


def test_requests_without_a_plan_get_nothing() -> None:
    assert respond({"messages": [user("hello")]}) is None
    assert respond({"messages": [{"role": "system", "content": "x"}]}) is None
