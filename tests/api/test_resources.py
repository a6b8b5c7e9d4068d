"""Agents, sessions, messages, events and tasks: the happy paths and their JSON shapes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tests.api.conftest import Api, assert_error

from openbuda.testing import reply

pytestmark = pytest.mark.anyio

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def assert_times(obj: dict[str, Any], *names: str) -> None:
    for name in names:
        value = obj[name]
        assert value is None or RFC3339_UTC.match(value), (name, value)


async def test_agents_crud(api: Api) -> None:
    created = await api.client.post(
        "/v1/agents",
        json={
            "name": "support",
            "description": "Answers customers",
            "instructions": "Be kind.",
            "model": "openai:gpt-4o-mini",
            "settings": {"max_steps": 7, "limits": {"memory_mb": 2048}, "idle_timeout_s": 60},
        },
    )
    assert created.status_code == 201, created.text
    agent = created.json()
    assert set(agent) >= {
        "id",
        "name",
        "description",
        "instructions",
        "model",
        "settings",
        "created_at",
        "updated_at",
    }
    assert agent["id"].startswith("agt_")
    assert agent["settings"]["max_steps"] == 7
    assert agent["settings"]["limits"]["memory_mb"] == 2048
    assert agent["settings"]["limits"]["pids"] == 256
    assert agent["settings"]["idle_timeout_s"] == 60
    assert agent["settings"]["sleep_timeout_s"] == 1800
    assert_times(agent, "created_at", "updated_at")

    got = await api.client.get(f"/v1/agents/{agent['id']}")
    assert got.status_code == 200 and got.json() == agent

    # PATCH: only the fields given; settings merged; model null goes back to the default
    patched = await api.client.patch(
        f"/v1/agents/{agent['id']}",
        json={"description": "Helps", "model": None, "settings": {"limits": {"pids": 64}}},
    )
    assert patched.status_code == 200, patched.text
    changed = patched.json()
    assert changed["name"] == "support" and changed["description"] == "Helps"
    assert changed["model"] is None
    assert changed["settings"]["max_steps"] == 7
    assert changed["settings"]["limits"] == {**agent["settings"]["limits"], "pids": 64}
    untouched = await api.client.patch(f"/v1/agents/{agent['id']}", json={"name": "helpdesk"})
    assert untouched.json()["model"] is None and untouched.json()["name"] == "helpdesk"

    second = await api.agent(name="second")
    page = (await api.client.get("/v1/agents", params={"limit": 1})).json()
    assert [a["id"] for a in page["items"]] == [agent["id"]]
    rest = (await api.client.get("/v1/agents", params={"cursor": page["next_cursor"]})).json()
    assert [a["id"] for a in rest["items"]] == [second["id"]] and rest["next_cursor"] is None

    assert (await api.client.delete(f"/v1/agents/{agent['id']}")).status_code == 204
    assert_error(await api.client.get(f"/v1/agents/{agent['id']}"), 404, "not_found")
    assert_error(await api.client.delete(f"/v1/agents/{agent['id']}"), 404, "not_found")


async def test_agent_validation(api: Api) -> None:
    cases: list[dict[str, Any]] = [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"name": "x", "description": "d" * 2001},
        {"name": "x", "instructions": "i" * 100_001},
        {"name": "x", "model": "gpt-4o"},
        {"name": "x", "model": "openai:\x00"},
        {"name": "x", "settings": {"max_steps": 0}},
        {"name": "x", "settings": {"sleep_timeout_s": 10}},
        {"name": "x", "settings": {"idle_timeout_s": 2**40}},
        {"name": "x", "settings": {"network": "everything"}},
        {"name": "x", "settings": {"unknown": 1}},
        {"name": "x", "color": "blue"},
    ]
    for body in cases:
        assert_error(await api.client.post("/v1/agents", json=body), 422, "validation_error")
    for raw in (rb'{"name": "bad\ud800"}', rb'{"name": "x", "description": "\udfff"}'):
        response = await api.client.post(
            "/v1/agents", content=raw, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 422, "validation_error")
    agent = await api.agent()
    assert_error(
        await api.client.patch(f"/v1/agents/{agent['id']}", json={"name": ""}),
        422,
        "validation_error",
    )
    error = assert_error(
        await api.client.post("/v1/agents", json={"name": "x" * 101}), 422, "validation_error"
    )
    assert error["details"]["errors"][0]["loc"] == ["body", "name"]


async def test_sessions_crud_filters_and_pages(api: Api) -> None:
    agent = await api.agent()
    billing = await api.session(agent["id"], title="Billing question", external_user_id="cust-1")
    assert set(billing) >= {
        "id",
        "agent_id",
        "title",
        "status",
        "external_user_id",
        "created_at",
        "last_activity_at",
        "task_count",
        "open_question",
    }
    assert billing["status"] == "idle" and billing["task_count"] == 0
    assert billing["open_question"] is None and billing["external_user_id"] == "cust-1"
    assert_times(billing, "created_at", "last_activity_at")
    other = await api.session(agent["id"], title="Shipping")
    third = await api.session(agent["id"])

    base = f"/v1/agents/{agent['id']}/sessions"
    listed = (await api.client.get(base)).json()
    assert [s["id"] for s in listed["items"]] == [third["id"], other["id"], billing["id"]]
    by_user = (await api.client.get(base, params={"external_user_id": "cust-1"})).json()
    assert [s["id"] for s in by_user["items"]] == [billing["id"]]
    search = (await api.client.get(base, params={"q": "BILL"})).json()
    assert [s["id"] for s in search["items"]] == [billing["id"]]
    idle = (await api.client.get(base, params={"status": "idle"})).json()
    assert len(idle["items"]) == 3
    working = (await api.client.get(base, params={"status": "working"})).json()
    assert working["items"] == []
    assert_error(await api.client.get(base, params={"status": "busy"}), 422, "validation_error")

    first = (await api.client.get(base, params={"limit": 2})).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = (
        await api.client.get(base, params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert [s["id"] for s in second["items"]] == [billing["id"]]
    assert second["next_cursor"] is None

    renamed = await api.client.patch(f"/v1/sessions/{other['id']}", json={"title": "Returns"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Returns"
    got = await api.client.get(f"/v1/sessions/{other['id']}")
    assert got.json()["title"] == "Returns"
    assert_error(
        await api.client.patch(f"/v1/sessions/{other['id']}", json={"title": "t" * 201}),
        422,
        "validation_error",
    )

    assert (await api.client.delete(f"/v1/sessions/{other['id']}")).status_code == 204
    assert_error(await api.client.get(f"/v1/sessions/{other['id']}"), 404, "not_found")
    assert_error(await api.client.delete(f"/v1/sessions/{other['id']}"), 404, "not_found")
    assert_error(await api.client.get("/v1/agents/agt_nope/sessions"), 404, "not_found")


async def test_a_session_imports_history(api: Api) -> None:
    agent = await api.agent()
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "text": f"line {i}"} for i in range(1200)
    ]
    session = await api.session(agent["id"], title="Imported", history=history)
    assert session["last_seq"] == 1201
    messages: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (
            await api.client.get(f"/v1/sessions/{session['id']}/messages", params=params)
        ).json()
        messages += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(m["role"], m["text"]) for m in messages] == [(h["role"], h["text"]) for h in history]
    assert_error(
        await api.client.post(
            f"/v1/agents/{agent['id']}/sessions",
            json={"history": [{"role": "system", "text": "x"}]},
        ),
        422,
        "validation_error",
    )


async def test_messages_run_tasks_and_the_conversation_reads_back(api: Api) -> None:
    agent = await api.agent()
    session = await api.session(agent["id"], title="Chat")
    api.model.add(reply("Hello! How can I help?"))
    accepted = await api.send(session["id"], "Hi there")
    assert set(accepted) >= {"message_id", "task_id", "session_id"}
    assert accepted["session_id"] == session["id"] and accepted["kind"] == "task"
    task = await api.wait_task(accepted["task_id"])
    assert task["status"] == "completed"
    assert set(task) >= {
        "id",
        "session_id",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "question",
        "result",
        "error",
    }
    assert task["result"] == {"text": "Hello! How can I help?", "files": []}
    assert task["error"] is None and task["question"] is None
    assert_times(task, "created_at", "started_at", "finished_at")

    messages = (await api.client.get(f"/v1/sessions/{session['id']}/messages")).json()
    assert [(m["role"], m["text"]) for m in messages["items"]] == [
        ("user", "Hi there"),
        ("assistant", "Hello! How can I help?"),
    ]
    assert messages["items"][0]["message_id"] == accepted["message_id"]
    assert all(m["task_id"] == task["id"] for m in messages["items"])
    assert_times(messages["items"][0], "at")

    events = await api.events(session["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "session.created" and "task_id" not in events[0]
    assert [e["type"] for e in events[-3:]] == ["message", "task.result", "task.status"]
    assert events[-1]["data"] == {"status": "completed"}
    assert all(set(e) <= {"seq", "id", "type", "task_id", "at", "data"} for e in events)
    assert_times(events[1], "at")
    page = (
        await api.client.get(
            f"/v1/sessions/{session['id']}/events", params={"after": 2, "limit": 2}
        )
    ).json()
    assert [e["seq"] for e in page["items"]] == [3, 4] and page["next_cursor"] == "4"
    rest = (
        await api.client.get(
            f"/v1/sessions/{session['id']}/events", params={"cursor": page["next_cursor"]}
        )
    ).json()
    assert rest["items"][0]["seq"] == 5 and rest["next_cursor"] is None
    assert_error(
        await api.client.get(f"/v1/sessions/{session['id']}/events?cursor=abc"),
        400,
        "invalid_request",
    )

    session_now = (await api.client.get(f"/v1/sessions/{session['id']}")).json()
    assert session_now["task_count"] == 1 and session_now["status"] == "idle"
    tasks = (await api.client.get("/v1/tasks", params={"session_id": session["id"]})).json()
    assert [t["id"] for t in tasks["items"]] == [task["id"]]
    assert (await api.client.get("/v1/tasks", params={"status": "waiting"})).json()["items"] == []
    assert (await api.client.get("/v1/tasks", params={"agent_id": "agt_other"})).json()[
        "items"
    ] == []
    assert_error(await api.client.get("/v1/tasks?status=asleep"), 422, "validation_error")
    assert_error(await api.client.get("/v1/tasks/tsk_nope"), 404, "not_found")
    assert_error(
        await api.client.post(f"/v1/sessions/{session['id']}/messages", json={"text": ""}),
        422,
        "validation_error",
    )
    assert_error(
        await api.client.post(f"/v1/sessions/{session['id']}/messages", json={"text": "\x00"}),
        422,
        "validation_error",
    )
    assert_error(
        await api.client.post(
            f"/v1/sessions/{session['id']}/messages", json={"text": "x" * 100_001}
        ),
        422,
        "validation_error",
    )
    assert_error(
        await api.client.post(
            f"/v1/sessions/{session['id']}/messages", json={"text": "x", "on_busy": "shout"}
        ),
        422,
        "validation_error",
    )
