"""The durable agent loop end to end through the services, on every store."""

from __future__ import annotations

import pytest

from openbuda.domain.conversation import AssistantTurn, SystemText, ToolResultTurn, UserTurn
from openbuda.domain.errors import (
    Conflict,
    InvalidTransition,
    ModelError,
    QuestionPending,
    SessionBusy,
    Unavailable,
    ValidationFailed,
)
from openbuda.domain.records import QuestionKind
from openbuda.domain.states import SessionStatus, TaskStatus
from openbuda.models import resolve_model
from openbuda.service.sessions import OnBusy
from openbuda.service.tasks import Answer
from openbuda.settings import Settings
from openbuda.testing import call, delayed, reply

from .conftest import Harness

pytestmark = pytest.mark.anyio


async def test_a_message_runs_a_task_to_its_result(harness: Harness) -> None:
    harness.model.add(reply("Hello there."))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id, title="t")

    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "Hi!")
    task = await harness.wait_task(accepted.task_id)

    assert task.status is TaskStatus.COMPLETED
    assert task.result is not None and task.result.text == "Hello there."
    assert task.lease_owner is None
    assert await harness.types(session.id) == [
        "session.created",
        "message",
        "task.status",
        "task.status",
        "model.response",
        "message",
        "task.result",
        "task.status",
    ]
    events = await harness.events(session.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(e.task_id == task.id for e in events[1:])
    assert events[-1].data == {"status": "completed"}
    model_input = harness.model.last_input
    assert model_input.turns == (SystemText("Be brief."), UserTurn("Hi!"))
    assert [t.name for t in model_input.tools][:1] == ["ask_user"]
    messages = await harness.runtime.sessions.messages(harness.principal, session.id)
    assert [(m.role, m.text) for m in messages] == [("user", "Hi!"), ("assistant", "Hello there.")]
    session = await harness.runtime.sessions.get(harness.principal, session.id)
    assert session.status is SessionStatus.IDLE
    assert session.task_count == 1


async def test_tool_calls_store_intent_then_result(harness: Harness) -> None:
    harness.model.add(call("record", text="note"), reply("Done."))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)

    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "Take a note")
    task = await harness.wait_task(accepted.task_id)

    assert task.status is TaskStatus.COMPLETED
    types = await harness.types(session.id, task.id)
    assert types[types.index("model.response") :][:3] == [
        "model.response",
        "tool.call",
        "tool.result",
    ]
    assert harness.record.calls == [(f"{task.id}:call_1", {"text": "note"})]
    second = harness.model.inputs[1]
    assert second.turns[-1] == ToolResultTurn("call_1", "record", "echo: note")
    assert isinstance(second.turns[-2], AssistantTurn)


async def test_unknown_tools_and_bad_arguments_become_error_results(harness: Harness) -> None:
    harness.model.add(call("nope"), call("record", text=3), reply("ok"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "go")
    task = await harness.wait_task(accepted.task_id)
    assert task.status is TaskStatus.COMPLETED
    results = [e.data for e in await harness.events(session.id, task.id) if e.type == "tool.result"]
    assert [r["status"] for r in results] == ["error", "error"]
    assert "no tool named 'nope'" in results[0]["output"]
    assert "'text' must be of type string" in results[1]["output"]
    assert harness.record.calls == []


async def test_ask_user_text_waits_without_a_lease_and_continues_with_the_answer(
    harness: Harness,
) -> None:
    harness.model.add(call("ask_user", prompt="Which city?"), reply("Paris it is."))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "Book a trip")

    task = await harness.wait_task(accepted.task_id)
    assert task.status is TaskStatus.WAITING
    assert task.lease_owner is None and task.lease_until is None
    assert task.question is not None and task.question.kind is QuestionKind.TEXT
    assert task.question.prompt == "Which city?"
    session_now = await harness.runtime.sessions.get(harness.principal, session.id)
    assert session_now.status is SessionStatus.WAITING
    assert session_now.open_question is not None
    assert session_now.open_question.id == task.question.id
    assert harness.runtime.organizer.running_count == 0
    inbox = await harness.runtime.tasks.list(harness.principal, status=TaskStatus.WAITING)
    assert [t.id for t in inbox.items] == [task.id]

    with pytest.raises(Conflict):
        await harness.runtime.tasks.answer(
            harness.principal, task.id, Answer(question_id="q_wrong", text="Paris")
        )
    await harness.runtime.tasks.answer(
        harness.principal, task.id, Answer(question_id=task.question.id, text="Paris")
    )
    task = await harness.wait_task(task.id)
    assert task.status is TaskStatus.COMPLETED
    assert task.question is None
    resumed = harness.model.last_input
    assert resumed.turns[-1] == ToolResultTurn("call_1", "ask_user", "Paris")
    types = await harness.types(session.id, task.id)
    waiting_at = types.index("question")
    assert types[waiting_at - 1 : waiting_at + 5] == [
        "tool.call",
        "question",
        "task.status",
        "answer",
        "tool.result",
        "task.status",
    ]
    with pytest.raises(InvalidTransition):
        await harness.runtime.tasks.answer(
            harness.principal, task.id, Answer(question_id="q_x", text="again")
        )


async def test_a_message_to_a_session_waiting_on_a_text_question_answers_it(
    harness: Harness,
) -> None:
    harness.model.add(call("ask_user", prompt="Name?"), reply("Hi Ada."))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    first = await harness.runtime.sessions.send(harness.principal, session.id, "Greet me")
    await harness.wait_task(first.task_id)

    second = await harness.runtime.sessions.send(harness.principal, session.id, "Ada")
    assert second.kind == "answer" and second.task_id == first.task_id
    task = await harness.wait_task(first.task_id)
    assert task.status is TaskStatus.COMPLETED
    messages = await harness.runtime.sessions.messages(harness.principal, session.id)
    assert [(m.role, m.text) for m in messages] == [
        ("user", "Greet me"),
        ("user", "Ada"),
        ("assistant", "Hi Ada."),
    ]
    assert "message" not in [
        e.type
        for e in await harness.events(session.id)
        if e.seq > 0 and e.data.get("text") == "Ada"
    ]


async def test_choice_questions_take_one_of_the_options(harness: Harness) -> None:
    harness.model.add(
        call("ask_user", prompt="Size?", kind="choice", options=["S", "M", "L"]), reply("M, noted.")
    )
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "Order a shirt")
    task = await harness.wait_task(accepted.task_id)
    assert task.question is not None and task.question.options == ["S", "M", "L"]

    with pytest.raises(QuestionPending) as pending:
        await harness.runtime.sessions.send(harness.principal, session.id, "M")
    assert pending.value.details["question"]["id"] == task.question.id
    with pytest.raises(ValidationFailed):
        await harness.runtime.tasks.answer(
            harness.principal, task.id, Answer(task.question.id, choice="XL")
        )
    await harness.runtime.tasks.answer(
        harness.principal, task.id, Answer(task.question.id, choice="M")
    )
    task = await harness.wait_task(task.id)
    assert task.status is TaskStatus.COMPLETED
    assert harness.model.last_input.turns[-1] == ToolResultTurn("call_1", "ask_user", "M")


@pytest.mark.parametrize("approved", [True, False])
async def test_tools_that_need_approval_ask_first(harness: Harness, approved: bool) -> None:
    harness.model.add(call("record", text="deploy"), reply("finished"))
    agent = await harness.agent(approval_tools=["record"])
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "Deploy")
    task = await harness.wait_task(accepted.task_id)
    assert task.status is TaskStatus.WAITING
    assert task.question is not None and task.question.kind is QuestionKind.APPROVAL
    assert "record" in task.question.prompt
    assert harness.record.calls == []

    await harness.runtime.tasks.answer(
        harness.principal, task.id, Answer(task.question.id, approved=approved, note="careful")
    )
    task = await harness.wait_task(task.id)
    assert task.status is TaskStatus.COMPLETED
    last = harness.model.last_input.turns[-1]
    assert isinstance(last, ToolResultTurn)
    if approved:
        assert harness.record.calls == [(f"{task.id}:call_1", {"text": "deploy"})]
        assert last.output == "echo: deploy" and not last.is_error
    else:
        assert harness.record.calls == []
        assert last.is_error and "denied" in last.output and "careful" in last.output


async def test_queue_runs_messages_in_order_each_seeing_only_earlier_ones(
    harness: Harness,
) -> None:
    harness.model.add(delayed(0.2, reply("one")), reply("two"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    first = await harness.runtime.sessions.send(harness.principal, session.id, "first")
    second = await harness.runtime.sessions.send(harness.principal, session.id, "second")
    assert second.kind == "task" and second.task_id != first.task_id
    done = await harness.wait_task(second.task_id, frozenset({TaskStatus.COMPLETED}))
    assert done.result is not None and done.result.text == "two"
    first_input, second_input = harness.model.inputs
    assert [t for t in first_input.turns if isinstance(t, UserTurn)] == [UserTurn("first")]
    assert second_input.turns[1:] == (
        UserTurn("first"),
        AssistantTurn("one"),
        UserTurn("second"),
    )


async def test_reject_refuses_while_busy(harness: Harness) -> None:
    harness.model.add(delayed(0.3, reply("one")))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    first = await harness.runtime.sessions.send(harness.principal, session.id, "first")
    with pytest.raises(SessionBusy):
        await harness.runtime.sessions.send(
            harness.principal, session.id, "second", on_busy=OnBusy.REJECT
        )
    await harness.wait_task(first.task_id)
    assert len(await harness.runtime.sessions.messages(harness.principal, session.id)) == 2


async def test_interrupt_cancels_the_current_task_and_starts_the_new_one(
    harness: Harness,
) -> None:
    harness.model.add(delayed(5, reply("never")), reply("second answer"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    first = await harness.runtime.sessions.send(harness.principal, session.id, "slow")
    await harness.wait_task(first.task_id, frozenset({TaskStatus.RUNNING}))
    second = await harness.runtime.sessions.send(
        harness.principal, session.id, "fast", on_busy=OnBusy.INTERRUPT
    )
    done = await harness.wait_task(second.task_id)
    assert done.status is TaskStatus.COMPLETED
    cancelled = await harness.runtime.tasks.get(harness.principal, first.task_id)
    assert cancelled.status is TaskStatus.CANCELLED
    statuses = [
        e.data for e in await harness.events(session.id, first.task_id) if e.type == "task.status"
    ]
    assert statuses[-1] == {"status": "cancelled", "reason": "interrupted"}
    assert "model.response" not in await harness.types(session.id, first.task_id)


async def test_steer_reaches_the_running_task_at_its_next_step(harness: Harness) -> None:
    harness.model.add(delayed(0.3, call("record", text="a")), reply("adjusted"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    first = await harness.runtime.sessions.send(harness.principal, session.id, "work")
    await harness.wait_model_called()
    steer = await harness.runtime.sessions.send(
        harness.principal, session.id, "use metric units", on_busy=OnBusy.STEER
    )
    assert steer.kind == "steer" and steer.task_id == first.task_id
    task = await harness.wait_task(first.task_id)
    assert task.status is TaskStatus.COMPLETED
    turns = harness.model.last_input.turns
    assert turns[-1] == UserTurn("use metric units")
    assert isinstance(turns[-2], ToolResultTurn)
    assert UserTurn("use metric units") not in harness.model.inputs[0].turns


async def test_a_steer_that_arrives_as_the_task_finishes_gets_another_step(
    harness: Harness,
) -> None:
    harness.model.add(delayed(0.3, reply("first try")), reply("with the steer"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    first = await harness.runtime.sessions.send(harness.principal, session.id, "work")
    await harness.wait_model_called()
    await harness.runtime.sessions.send(
        harness.principal, session.id, "shorter", on_busy=OnBusy.STEER
    )
    task = await harness.wait_task(first.task_id)
    assert task.result is not None and task.result.text == "with the steer"
    assert harness.model.last_input.turns[-2:] == (AssistantTurn("first try"), UserTurn("shorter"))


async def test_steer_without_a_running_task_starts_one(harness: Harness) -> None:
    harness.model.add(reply("ok"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(
        harness.principal, session.id, "hello", on_busy=OnBusy.STEER
    )
    assert accepted.kind == "task"
    assert (await harness.wait_task(accepted.task_id)).status is TaskStatus.COMPLETED


async def test_max_steps_fails_a_looping_task(harness: Harness) -> None:
    harness.model.add(*[call("record", text=str(i)) for i in range(3)])
    agent = await harness.agent(max_steps=3)
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "loop")
    task = await harness.wait_task(accepted.task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error is not None and task.error.code == "max_steps"
    assert "max_steps is 3" in task.error.message
    assert len(harness.record.calls) == 3


async def test_model_errors_are_retried_then_fail_clearly(harness: Harness) -> None:
    harness.model.add(ModelError("overloaded"), reply("recovered"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "x")
    task = await harness.wait_task(accepted.task_id)
    assert task.status is TaskStatus.COMPLETED

    harness.model.add(*[ModelError("down") for _ in range(3)])
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "y")
    task = await harness.wait_task(accepted.task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error is not None and task.error.code == "model_error"
    assert "down" in task.error.message and "3 attempt" in task.error.message


async def test_no_model_fails_with_guidance(harness: Harness) -> None:
    harness.models["none:configured"] = resolve_model(
        "nosuchprovider:model", Settings(block_real_models=True)
    )
    agent = await harness.runtime.agents.create(
        harness.principal, name="nomodel", model="none:configured"
    )
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "x")
    task = await harness.wait_task(accepted.task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error is not None and task.error.code == "no_model"


async def test_cancel_queued_running_and_waiting_tasks(harness: Harness) -> None:
    harness.model.add(delayed(5, reply("never")), call("ask_user", prompt="?"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    running = await harness.runtime.sessions.send(harness.principal, session.id, "a")
    queued = await harness.runtime.sessions.send(harness.principal, session.id, "b")
    await harness.wait_task(running.task_id, frozenset({TaskStatus.RUNNING}))

    cancelled = await harness.runtime.tasks.cancel(harness.principal, queued.task_id)
    assert cancelled.status is TaskStatus.CANCELLED
    cancelled = await harness.runtime.tasks.cancel(harness.principal, running.task_id)
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.finished_at is not None

    waiting = await harness.runtime.sessions.send(harness.principal, session.id, "c")
    task = await harness.wait_task(waiting.task_id)
    assert task.status is TaskStatus.WAITING
    cancelled = await harness.runtime.tasks.cancel(harness.principal, waiting.task_id)
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.question is None
    with pytest.raises(InvalidTransition):
        await harness.runtime.tasks.cancel(harness.principal, waiting.task_id)
    session_now = await harness.runtime.sessions.get(harness.principal, session.id)
    assert session_now.status is SessionStatus.IDLE


async def test_a_store_outage_during_a_run_requeues_the_task_instead_of_failing_it(
    harness: Harness,
) -> None:
    # Unavailable is what the stores raise when the database is locked or its pool exhausted
    harness.model.add(Unavailable("no database connection was free in time"), reply("ok"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "go")
    task = await harness.wait_task(accepted.task_id)
    assert task.status is TaskStatus.COMPLETED
    statuses = [
        e.data for e in await harness.events(session.id, task.id) if e.type == "task.status"
    ]
    assert {"status": "queued", "reason": "lease_expired"} in statuses
    assert task.error is None
