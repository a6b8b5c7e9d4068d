"""Messages to busy sessions (``on_busy``), questions and answers, cancels, the inbox."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from tests.api.conftest import Api, assert_error

from openbuda.domain.conversation import ModelInput, ModelReply, UserTurn
from openbuda.testing import call, reply

pytestmark = pytest.mark.anyio


class Gate:
    """A model step that holds the task ``running`` until ``open()``."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self._event = anyio.Event()

    async def __call__(self, _request: ModelInput) -> ModelReply:
        await self._event.wait()
        return ModelReply(self.answer)

    def open(self) -> None:
        self._event.set()


async def running(api: Api, session_id: str, text: str, gate: Gate) -> dict[str, Any]:
    """Send ``text`` and wait until its task holds the model at ``gate``."""
    calls = len(api.model.inputs)
    api.model.add(gate)
    accepted = await api.send(session_id, text)
    await api.wait_model_called(calls + 1)
    return accepted


def user_texts(request: ModelInput) -> list[str]:
    return [turn.text for turn in request.turns if isinstance(turn, UserTurn)]


async def test_queue_runs_the_next_message_after_the_current_task(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    gate = Gate("first answer")
    first = await running(api, session["id"], "first", gate)
    api.model.add(reply("second answer"))
    second = await api.send(session["id"], "second", on_busy="queue")
    assert second["task_id"] != first["task_id"] and second["kind"] == "task"
    queued = (await api.client.get(f"/v1/tasks/{second['task_id']}")).json()
    assert queued["status"] == "queued"
    assert (await api.client.get(f"/v1/sessions/{session['id']}")).json()["status"] == "working"
    gate.open()
    assert (await api.wait_task(second["task_id"]))["result"]["text"] == "second answer"
    assert (await api.wait_task(first["task_id"]))["status"] == "completed"
    assert user_texts(api.model.inputs[1])[-1] == "second"


async def test_reject_answers_409_session_busy(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    gate = Gate("done")
    first = await running(api, session["id"], "work", gate)
    response = await api.client.post(
        f"/v1/sessions/{session['id']}/messages", json={"text": "more", "on_busy": "reject"}
    )
    error = assert_error(response, 409, "session_busy")
    assert error["details"]["task_id"] == first["task_id"]
    gate.open()
    await api.wait_task(first["task_id"])
    api.model.add(reply("ok"))
    accepted = await api.send(session["id"], "now", on_busy="reject")
    assert (await api.wait_task(accepted["task_id"]))["status"] == "completed"


async def test_steer_gives_the_text_to_the_running_task(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    gate = Gate("draft")
    first = await running(api, session["id"], "write a poem", gate)
    api.model.add(reply("a poem about cats"))
    steer = await api.send(session["id"], "about cats", on_busy="steer")
    assert steer["task_id"] == first["task_id"] and steer["kind"] == "steer"
    gate.open()
    task = await api.wait_task(first["task_id"])
    assert task["result"]["text"] == "a poem about cats"
    assert "about cats" in user_texts(api.model.inputs[1])


async def test_interrupt_cancels_the_current_task_and_starts_the_new_one(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    gate = Gate("never")
    first = await running(api, session["id"], "slow", gate)
    api.model.add(reply("fast"))
    second = await api.send(session["id"], "instead", on_busy="interrupt")
    assert second["task_id"] != first["task_id"]
    cancelled = await api.wait_task(first["task_id"])
    assert cancelled["status"] == "cancelled"
    assert (await api.wait_task(second["task_id"]))["result"]["text"] == "fast"
    statuses = [
        e["data"]
        for e in await api.events(session["id"])
        if e["type"] == "task.status" and e["task_id"] == first["task_id"]
    ]
    assert statuses[-1] == {"status": "cancelled", "reason": "interrupted"}


async def test_a_choice_question_makes_messages_409_until_answered(api: Api) -> None:
    agent = await api.agent()
    session = await api.session(agent["id"])
    api.model.add(call("ask_user", prompt="Which size?", kind="choice", options=["S", "M"]))
    accepted = await api.send(session["id"], "order a shirt")
    task = await api.wait_task(accepted["task_id"])
    assert task["status"] == "waiting"
    question = task["question"]
    assert question["kind"] == "choice" and question["options"] == ["S", "M"]
    assert question["prompt"] == "Which size?" and question["id"].startswith("q_")
    assert question["asked_at"].endswith("Z")

    waiting = (await api.client.get(f"/v1/sessions/{session['id']}")).json()
    assert waiting["status"] == "waiting" and waiting["open_question"]["id"] == question["id"]
    inbox = (await api.client.get("/v1/tasks", params={"status": "waiting"})).json()
    assert [t["id"] for t in inbox["items"]] == [task["id"]]

    for on_busy in ("queue", "steer", "reject"):
        error = assert_error(
            await api.client.post(
                f"/v1/sessions/{session['id']}/messages", json={"text": "M", "on_busy": on_busy}
            ),
            409,
            "question_pending",
        )
        assert error["details"]["question"]["id"] == question["id"]
        assert error["details"]["question"]["options"] == ["S", "M"]
        assert error["details"]["task_id"] == task["id"]

    answers = f"/v1/tasks/{task['id']}/answer"
    assert_error(
        await api.client.post(answers, json={"question_id": question["id"], "choice": "XL"}),
        422,
        "validation_error",
    )
    assert_error(
        await api.client.post(answers, json={"question_id": question["id"], "choice": "1"}),
        422,
        "validation_error",
    )
    assert_error(
        await api.client.post(answers, json={"question_id": "q_other", "choice": "M"}),
        409,
        "conflict",
    )
    api.model.add(reply("Ordered a size M shirt."))
    answered = await api.client.post(answers, json={"question_id": question["id"], "choice": "M"})
    assert answered.status_code == 202, answered.text
    assert answered.json()["id"] == task["id"]
    assert answered.json()["status"] in ("queued", "running", "completed")
    done = await api.wait_task(task["id"])
    assert done["result"]["text"] == "Ordered a size M shirt." and done["question"] is None
    error = assert_error(
        await api.client.post(answers, json={"question_id": question["id"], "choice": "M"}),
        409,
        "invalid_transition",
    )
    assert error["details"]["status"] == "completed"


async def test_a_message_answers_an_open_text_question(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    api.model.add(call("ask_user", prompt="Which city?"), reply("Booked for Paris."))
    accepted = await api.send(session["id"], "book a trip")
    task = await api.wait_task(accepted["task_id"])
    assert task["question"]["kind"] == "text" and task["question"]["options"] is None
    answer = await api.send(session["id"], "Paris")
    assert answer["task_id"] == task["id"] and answer["kind"] == "answer"
    done = await api.wait_task(task["id"], frozenset({"completed"}))
    assert done["result"]["text"] == "Booked for Paris."
    types = [e["type"] for e in await api.events(session["id"])]
    assert types.count("message") == 2  # the user's first message and the assistant's reply
    assert types.count("answer") == 1
    messages = (await api.client.get(f"/v1/sessions/{session['id']}/messages")).json()["items"]
    assert [(m["role"], m["text"]) for m in messages] == [
        ("user", "book a trip"),
        ("user", "Paris"),
        ("assistant", "Booked for Paris."),
    ]


async def test_an_approval_question_gates_a_tool(api: Api) -> None:
    agent = await api.agent(settings={"approval_tools": ["record"]})
    session = await api.session(agent["id"])
    api.model.add(call("record", text="rm -rf"), reply("I did not run it."))
    accepted = await api.send(session["id"], "clean up")
    task = await api.wait_task(accepted["task_id"])
    question = task["question"]
    assert question["kind"] == "approval" and question["tool_name"] == "record"
    error = assert_error(
        await api.client.post(f"/v1/sessions/{session['id']}/messages", json={"text": "yes"}),
        409,
        "question_pending",
    )
    assert error["details"]["question"]["kind"] == "approval"
    assert_error(
        await api.client.post(
            f"/v1/tasks/{task['id']}/answer", json={"question_id": question["id"], "text": "ok"}
        ),
        422,
        "validation_error",
    )
    answered = await api.client.post(
        f"/v1/tasks/{task['id']}/answer",
        json={"question_id": question["id"], "approved": False, "note": "too risky"},
    )
    assert answered.status_code == 202
    done = await api.wait_task(task["id"], frozenset({"completed"}))
    assert done["result"]["text"] == "I did not run it."
    assert api.record.calls == []


async def test_cancel_a_running_or_waiting_task_then_409(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    gate = Gate("never")
    first = await running(api, session["id"], "slow", gate)
    cancelled = await api.client.post(f"/v1/tasks/{first['task_id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    error = assert_error(
        await api.client.post(f"/v1/tasks/{first['task_id']}/cancel"), 409, "invalid_transition"
    )
    assert error["details"]["status"] == "cancelled"

    api.model.add(call("ask_user", prompt="Sure?"))
    waiting = await api.send(session["id"], "ask me")
    assert (await api.wait_task(waiting["task_id"]))["status"] == "waiting"
    response = await api.client.post(f"/v1/tasks/{waiting['task_id']}/cancel")
    assert response.status_code == 202 and response.json()["question"] is None
    assert (await api.client.get(f"/v1/sessions/{session['id']}")).json()["status"] == "idle"
    assert_error(await api.client.post("/v1/tasks/tsk_nope/cancel"), 404, "not_found")


async def test_the_inbox_lists_waiting_tasks_across_agents(api: Api) -> None:
    waiting: list[str] = []
    for name in ("one", "two"):
        agent = await api.agent(name=name)
        session = await api.session(agent["id"])
        api.model.add(call("ask_user", prompt=f"{name}?"))
        accepted = await api.send(session["id"], "go")
        await api.wait_task(accepted["task_id"])
        waiting.append(accepted["task_id"])
    api.model.add(reply("done"))
    other = await api.session((await api.agent(name="three"))["id"])
    finished = await api.send(other["id"], "go")
    await api.wait_task(finished["task_id"])
    inbox = (await api.client.get("/v1/tasks", params={"status": "waiting"})).json()
    assert sorted(t["id"] for t in inbox["items"]) == sorted(waiting)
    assert all(t["question"]["prompt"] in ("one?", "two?") for t in inbox["items"])
    everything = (await api.client.get("/v1/tasks", params={"limit": 2})).json()
    assert len(everything["items"]) == 2 and everything["next_cursor"]
    rest = (
        await api.client.get("/v1/tasks", params={"limit": 2, "cursor": everything["next_cursor"]})
    ).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
