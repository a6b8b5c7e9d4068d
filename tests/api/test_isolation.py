"""Another space's ids are a 404 on every route, whoever asks — the instance owner included —
and its objects never show up in lists."""

from __future__ import annotations

from typing import Any

import pytest
from tests.api.conftest import Api, assert_error

from openbuda.testing import call

pytestmark = pytest.mark.anyio


async def test_foreign_ids_are_404_everywhere(api: Api) -> None:
    created = (await api.client.post("/v1/spaces", json={"name": "tenant-b"})).json()
    theirs = api.client_for(created["api_key"]["secret"])
    agent = await api.agent(theirs, name="their agent")
    session = await api.session(agent["id"], theirs, title="their session")
    api.model.add(call("ask_user", prompt="secret question?"))
    accepted = await api.send(session["id"], "their secret", theirs)
    task = await api.wait_task(accepted["task_id"], client=theirs)
    assert task["status"] == "waiting"
    key = (await theirs.post("/v1/api-keys", json={"name": "theirs"})).json()

    member_key = (await api.client.post("/v1/api-keys", json={"name": "m"})).json()
    asking = [api.client, api.client_for(member_key["secret"])]  # the instance owner and a member
    a, s, t = agent["id"], session["id"], task["id"]
    question = task["question"]["id"]
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/v1/agents/{a}", None),
        ("PATCH", f"/v1/agents/{a}", {"name": "mine"}),
        ("DELETE", f"/v1/agents/{a}", None),
        ("GET", f"/v1/agents/{a}/sessions", None),
        ("POST", f"/v1/agents/{a}/sessions", {"title": "intruder"}),
        ("GET", f"/v1/sessions/{s}", None),
        ("PATCH", f"/v1/sessions/{s}", {"title": "mine"}),
        ("DELETE", f"/v1/sessions/{s}", None),
        ("POST", f"/v1/sessions/{s}/messages", {"text": "hello"}),
        ("GET", f"/v1/sessions/{s}/messages", None),
        ("GET", f"/v1/sessions/{s}/events", None),
        ("GET", f"/v1/sessions/{s}/events/stream", None),
        ("GET", f"/v1/tasks/{t}", None),
        ("POST", f"/v1/tasks/{t}/cancel", None),
        ("POST", f"/v1/tasks/{t}/answer", {"question_id": question, "text": "x"}),
        ("DELETE", f"/v1/api-keys/{key['id']}", None),
    ]
    for client in asking:
        for method, path, body in requests:
            if method in ("PATCH", "DELETE") and "agents" in path and client is not api.client:
                continue  # a member is refused before the lookup (403); the owner gets the 404
            response = await client.request(method, path, json=body)
            error = assert_error(response, 404, "not_found")
            assert "secret" not in response.text and "their" not in response.text
            assert error["details"].get("id") in (a, s, t, key["id"], None)

    # nothing of theirs shows up in our lists
    assert (await api.client.get("/v1/agents")).json()["items"] == []
    assert (await api.client.get("/v1/tasks")).json()["items"] == []
    assert (await api.client.get("/v1/tasks", params={"status": "waiting"})).json()["items"] == []
    assert (await api.client.get("/v1/tasks", params={"session_id": s})).json()["items"] == []
    assert [k["name"] for k in (await api.client.get("/v1/api-keys")).json()["items"]] == [
        "bootstrap",
        "m",
    ]

    # and nothing of theirs changed
    assert (await theirs.get(f"/v1/agents/{a}")).json()["name"] == "their agent"
    assert (await theirs.get(f"/v1/sessions/{s}")).json()["title"] == "their session"
    assert (await theirs.get(f"/v1/tasks/{t}")).json()["status"] == "waiting"
    assert (await theirs.get("/v1/me")).status_code == 200
    inbox = (await theirs.get("/v1/tasks", params={"status": "waiting"})).json()
    assert [item["id"] for item in inbox["items"]] == [t]
