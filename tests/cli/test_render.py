"""The shared terminal rendering of tasks (``chat``, ``send --wait``, ``answer``, ``demo``)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from openbuda.cli._render import Reply, TaskView, answer_hint, ask, belongs_to, describe, reply_from
from openbuda.client import Event, Question
from openbuda.domain.errors import InvalidRequest
from openbuda.domain.records import QuestionKind

AT = datetime(2025, 1, 1, tzinfo=UTC)


def question(kind: QuestionKind, options: list[str] | None = None) -> Question:
    return Question(id="q_1", kind=kind, prompt="Which [one]?", options=options, asked_at=AT)


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None), out


def test_typed_answers_are_read_as_the_question_needs() -> None:
    choice = question(QuestionKind.CHOICE, ["Thai", "Pizza"])
    assert reply_from(choice, "2") == Reply(choice="Pizza")
    assert reply_from(choice, "Thai") == Reply(choice="Thai")
    assert reply_from(choice, "7") == Reply(choice="7")  # not an option number: sent as text
    approval = question(QuestionKind.APPROVAL)
    assert reply_from(approval, "Yes") == Reply(approved=True)
    assert reply_from(approval, "deny") == Reply(approved=False)
    with pytest.raises(InvalidRequest, match="yes/approve or no/deny"):
        reply_from(approval, "maybe")
    assert reply_from(question(QuestionKind.TEXT), "Friday") == Reply(text="Friday")


def test_ask_uses_the_given_answers_then_nobody() -> None:
    out, text = console()
    choice = question(QuestionKind.CHOICE, ["Thai", "Pizza"])
    answers = ["1"]
    assert ask(choice, answers, False, out) == Reply(choice="Thai")
    assert answers == []
    assert ask(choice, answers, False, out) is None
    printed = text.getvalue()
    assert "agent asks: Which [one]?" in printed  # markup in the prompt is shown as is
    assert "  1. Thai\n  2. Pizza" in printed and "(answering '1')" in printed


def test_hints_and_descriptions() -> None:
    choice = question(QuestionKind.CHOICE, ["A", "B"])
    assert describe(choice) == "Which [one]?  [1. A / 2. B]"
    assert answer_hint(choice).startswith("1..2")
    assert answer_hint(question(QuestionKind.APPROVAL)).startswith("approve|deny")
    assert describe(question(QuestionKind.TEXT)) == "Which [one]?"


def test_the_view_streams_text_and_shows_steps() -> None:
    out, text = console()
    view = TaskView(out)
    for event in [
        Event(type="text.delta", data={"task_id": "t", "text": "Hel"}),
        Event(type="text.delta", data={"task_id": "t", "text": "lo [b]"}),
        Event(type="tool.call", data={"call_id": "c1", "name": "shell", "args": {"x": [1]}}),
        Event(type="tool.result", data={"call_id": "c1", "status": "ok", "output": "[done]"}),
        Event(type="tool.call", data={"call_id": "c2", "name": "ask_user", "args": {}}),
        Event(type="tool.result", data={"call_id": "c2", "status": "ok", "output": "hidden"}),
        Event(type="drive.changed", data={"paths": ["a"]}),
    ]:
        view.show(event)
    view.finish(result="Hello [b]", error=None)
    assert text.getvalue() == 'Hello [b]\n→ shell {"x": [1]}\n← ok: [done]\n'

    out, text = console()
    failed = TaskView(out)
    failed.finish(result=None, error=("model_error", "bad [key]"))
    assert text.getvalue() == "task failed (model_error): bad [key]\n"
    shown = TaskView(out)
    shown.finish(result="the result", error=None)
    assert "agent the result" in text.getvalue()


def test_events_of_other_tasks_are_not_the_task_s() -> None:
    assert belongs_to(Event(type="message", task_id="t1"), "t1")
    assert not belongs_to(Event(type="message", task_id="t2"), "t1")
    assert belongs_to(Event(type="session.created"), "t1")
    assert not belongs_to(Event(type="text.delta", data={"task_id": "t2"}), "t1")
