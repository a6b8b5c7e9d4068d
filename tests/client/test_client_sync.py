"""The blocking ``Client`` against a real server (uvicorn on a thread): a conversation, a
question answered, and the stream resuming after dropped connections."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openbuda.client import Client, ConnectionFailed
from openbuda.domain.errors import NotFound
from openbuda.domain.states import TaskStatus
from openbuda.settings import Settings
from openbuda.testing import ScriptedModel, call, delayed, reply
from tests.client.live_server import API_KEY, DroppingTransport, LiveServer, free_port, live_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path, ScriptedModel()) as running:
        yield running


def test_a_conversation_with_a_question(server: LiveServer) -> None:
    server.model.add(
        delayed(0.2, call("ask_user", prompt="Approve the plan?", kind="approval")),
        reply("Plan approved, going ahead."),
    )
    # the key and URL come from the credentials.json the server wrote at its first start
    with Client(settings=Settings(home=server.home)) as client:
        assert client.base_url == server.url
        agent = client.agents.create("helper")
        session = client.sessions.create(agent.id)
        accepted = client.sessions.send(session.id, "Make a plan")
        with client.sessions.stream(session.id, until_idle=True) as stream:
            types = [event.type for event in stream]
            cursor = stream.last_seq
        assert "question" in types and types[-1] == "task.status"
        task = client.tasks.get(accepted.task_id)
        assert task.status is TaskStatus.WAITING and task.question is not None
        [waiting] = list(client.tasks.iterate(status="waiting"))
        assert waiting.id == task.id

        client.tasks.answer(task.id, task.question.id, approved=True, note="fine")
        rest = list(client.sessions.stream(session.id, after=cursor, until_idle=True))
        assert rest[0].type == "answer" and rest[0].data["approved"] is True
        done = client.tasks.get(task.id)
        assert done.result is not None and done.result.text == "Plan approved, going ahead."
        with pytest.raises(NotFound):
            client.tasks.get("tsk_nope")


@pytest.mark.parametrize("drops", [{1: 2}, {1: 4, 2: 3}])
def test_the_stream_resumes_over_a_real_connection(
    server: LiveServer, drops: dict[int, int]
) -> None:
    server.model.add(reply("a fairly long answer, streamed in chunks of eight"))
    dropping = DroppingTransport(httpx.HTTPTransport(), drops)
    with Client(server.url, API_KEY, transport=dropping) as client:
        agent = client.agents.create("helper")
        session = client.sessions.create(agent.id)
        client.sessions.send(session.id, "talk")
        events = list(client.sessions.stream(session.id, until_idle=True))
        reference = [e.seq for e in client.sessions.events(session.id).items]
    assert [e.seq for e in events if e.seq is not None] == reference
    assert len(dropping.stream_requests) == len(drops) + 1


def test_nothing_listening_is_a_clear_connection_error() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", API_KEY) as client,
        pytest.raises(ConnectionFailed) as raised,
    ):
        client.agents.list()
    assert "is `openbuda serve` running?" in str(raised.value)
