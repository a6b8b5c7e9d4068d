"""The event stream (SSE): replay, live follow, resume with ``Last-Event-ID``, ``?until=idle``,
heartbeats, ephemeral events, and that a client going away never cancels anything."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from tests.api.conftest import Api, assert_error, make_api, sse_messages
from tests.api.test_messages import Gate, running

from openbuda.ports import Store
from openbuda.testing import call, reply

pytestmark = pytest.mark.anyio


Predicate = Callable[[dict[str, Any]], bool]


class SseReader:
    """Reads one SSE message at a time from a streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        message: dict[str, Any] = {}
        with anyio.fail_after(timeout):
            async for line in self._lines:
                if line == "":
                    if message:
                        return message
                    continue
                if line.startswith(":"):
                    message["comment"] = line[1:].strip()
                    continue
                name, _, value = line.partition(": ")
                message[name] = json.loads(value) if name == "data" else value
        raise EOFError("the stream ended")

    async def rest(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every message until the stream ends."""
        messages: list[dict[str, Any]] = []
        with anyio.fail_after(timeout):
            while True:
                try:
                    messages.append(await self.next(timeout))
                except EOFError:
                    return messages

    async def until(self, predicate: Predicate, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Messages up to and including the first that ``predicate`` accepts."""
        seen: list[dict[str, Any]] = []
        with anyio.fail_after(timeout):
            while True:
                message = await self.next(timeout)
                seen.append(message)
                if predicate(message):
                    return seen


@asynccontextmanager
async def open_stream(
    api: Api, session_id: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncGenerator[SseReader]:
    async with api.client.stream(
        "GET",
        f"/v1/sessions/{session_id}/events/stream",
        params=params,
        headers=headers or {},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseReader(response)


def stored(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if "id" in m]


def is_status(status: str) -> Predicate:
    def check(message: dict[str, Any]) -> bool:
        data = message.get("data") or {}
        status_data = data.get("data") or {}
        return message.get("event") == "task.status" and status_data.get("status") == status

    return check


async def test_replay_sends_every_stored_event_then_ends_when_idle(api: Api) -> None:
    session = await api.session((await api.agent())["id"], title="Replay")
    api.model.add(reply("Hello there, friend."))
    accepted = await api.send(session["id"], "hi")
    await api.wait_task(accepted["task_id"])
    response = await api.client.get(
        f"/v1/sessions/{session['id']}/events/stream", params={"until": "idle"}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"
    messages = sse_messages(response.text)
    events = await api.events(session["id"])
    assert [m["data"] for m in messages] == events
    assert [m["id"] for m in messages] == [str(e["seq"]) for e in events]
    assert [m["event"] for m in messages] == [e["type"] for e in events]

    after = await api.client.get(
        f"/v1/sessions/{session['id']}/events/stream", params={"until": "idle", "after": 3}
    )
    assert [m["data"]["seq"] for m in sse_messages(after.text)] == [e["seq"] for e in events[3:]]
    resumed = await api.client.get(
        f"/v1/sessions/{session['id']}/events/stream",
        params={"until": "idle", "after": 1},
        headers={"Last-Event-ID": "5"},
    )
    assert [m["data"]["seq"] for m in sse_messages(resumed.text)] == [e["seq"] for e in events[5:]]


async def test_live_follow_with_ephemeral_deltas_and_no_gap(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    api.model.add(call("record", text="note"), reply("All done, with a long answer."))
    async with open_stream(api, session["id"]) as stream:
        first = await stream.next()
        assert first["event"] == "session.created" and first["id"] == "1"
        accepted = await api.send(session["id"], "go")
        messages = [first, *await stream.until(is_status("completed"))]
    await api.wait_task(accepted["task_id"])
    seqs = [int(m["id"]) for m in stored(messages)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [m["data"] for m in stored(messages)] == await api.events(session["id"])
    deltas = [m for m in messages if m.get("event") == "text.delta"]
    assert deltas and all("id" not in m for m in deltas)
    assert "".join(m["data"]["data"]["text"] for m in deltas) == "All done, with a long answer."
    assert all(m["data"]["task_id"] == accepted["task_id"] for m in deltas)
    output = [m for m in messages if m.get("event") == "tool.output"]
    assert output and output[0]["data"]["data"] == {
        "call_id": output[0]["data"]["data"]["call_id"],
        "stream": "stdout",
        "text": "note",
    }


async def test_resume_after_event_k_gets_k_plus_1_onwards(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    gate = Gate("the end")
    async with open_stream(api, session["id"]) as stream:
        accepted = await running(api, session["id"], "work", gate)
        before = await stream.until(is_status("running"))
    k = int(stored(before)[-1]["id"])
    api.model.add(reply("more"))
    await api.send(session["id"], "queued meanwhile")  # events while nobody listens
    gate.open()
    await api.wait_task(accepted["task_id"], frozenset({"completed"}))
    async with open_stream(api, session["id"], headers={"Last-Event-ID": str(k)}) as stream:
        after = await stream.until(
            lambda m: is_status("completed")(m) and m["data"]["task_id"] != accepted["task_id"]
        )
    seqs = [int(m["id"]) for m in stored(before)] + [int(m["id"]) for m in stored(after)]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert int(stored(after)[0]["id"]) == k + 1
    assert seqs[-1] == (await api.events(session["id"]))[-1]["seq"]


async def test_until_idle_ends_when_the_task_waits_or_ends(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    api.model.add(call("ask_user", prompt="Which one?"))
    accepted = await api.send(session["id"], "pick")
    async with open_stream(api, session["id"], until="idle") as stream:
        messages = await stream.rest()
    assert [m["event"] for m in messages][-2:] == ["question", "task.status"]
    assert messages[-1]["data"]["data"] == {"status": "waiting", "reason": "question"}
    task = await api.wait_task(accepted["task_id"])
    assert task["status"] == "waiting"

    idle = await api.session((await api.agent(name="idle"))["id"])
    response = await api.client.get(
        f"/v1/sessions/{idle['id']}/events/stream", params={"until": "idle"}
    )
    assert [m["event"] for m in sse_messages(response.text)] == ["session.created"]


async def test_disconnecting_never_cancels_the_task(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    gate = Gate("finished anyway")
    async with open_stream(api, session["id"]) as stream:
        accepted = await running(api, session["id"], "work", gate)
        await stream.until(is_status("running"))
    await anyio.sleep(0.05)
    assert api.runtime.broadcaster.subscriber_count(session["id"]) == 0
    task = (await api.client.get(f"/v1/tasks/{accepted['task_id']}")).json()
    assert task["status"] == "running"
    gate.open()
    done = await api.wait_task(accepted["task_id"])
    assert done["status"] == "completed" and done["result"]["text"] == "finished anyway"


async def test_stream_errors(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    base = f"/v1/sessions/{session['id']}/events/stream"
    assert_error(await api.client.get("/v1/sessions/ses_nope/events/stream"), 404, "not_found")
    assert_error(
        await api.client.get(base, headers={"Last-Event-ID": "abc"}), 400, "invalid_request"
    )
    assert_error(await api.client.get(base, params={"after": -1}), 422, "validation_error")
    assert_error(await api.client.get(base, params={"until": "done"}), 422, "validation_error")
    assert_error(await api.client_for(None).get(base), 401, "unauthorized")


async def test_heartbeats_are_comment_lines(store: Store, tmp_path: Path) -> None:
    async for api in make_api(store, tmp_path, settings={"sse_heartbeat_seconds": 0.05}):
        session = await api.session((await api.agent())["id"])
        async with open_stream(api, session["id"]) as stream:
            assert (await stream.next())["event"] == "session.created"
            assert await stream.next() == {"comment": "keep-alive"}
            assert await stream.next() == {"comment": "keep-alive"}
            api.model.add(reply("hi"))
            await api.send(session["id"], "hello")
            live = await stream.until(is_status("completed"))
        assert [int(m["id"]) for m in stored(live)] == list(range(2, 2 + len(stored(live))))


async def test_many_writers_many_readers_no_gap_no_duplicate(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    count = 8
    api.model.add(*(reply(f"answer {i}") for i in range(count)))
    results: list[list[dict[str, Any]]] = []

    async def read_all() -> None:
        async with open_stream(api, session["id"]) as stream:
            seen: list[dict[str, Any]] = []
            completed = 0
            while completed < count:
                message = await stream.next()
                seen.append(message)
                completed += is_status("completed")(message)
            results.append(seen)

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(read_all)
        await anyio.sleep(0.05)
        for i in range(count):
            group.start_soon(api.send, session["id"], f"message {i}")
    events = await api.events(session["id"])
    for seen in results:
        assert [m["data"] for m in stored(seen)] == events[: len(stored(seen))]
        assert len(stored(seen)) == len(events)
