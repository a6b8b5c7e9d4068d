"""The SDK end to end against the real app in-process (``AsyncClient`` over a streaming ASGI
transport), with a scripted model: agents, sessions, messages, the stream, questions and
answers, the inbox, cancelling, idempotency, and error answers as typed exceptions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from openbuda.client import ApiError, AsyncClient, Event, HistoryMessage
from openbuda.domain.errors import (
    InvalidRequest,
    InvalidTransition,
    NotFound,
    QuestionPending,
    Unauthorized,
    ValidationFailed,
)
from openbuda.domain.records import QuestionKind, Role
from openbuda.domain.states import SessionStatus, TaskStatus
from openbuda.testing import ScriptedModel, call, delayed, reply
from tests.client.live_server import (
    API_KEY,
    DroppingTransport,
    in_process,
    in_process_client,
    scripted_app,
    server_settings,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
async def client(tmp_path: Path, model: ScriptedModel) -> AsyncIterator[AsyncClient]:
    async with in_process_client(tmp_path, model) as client:
        yield client


async def until_idle(client: AsyncClient, session_id: str, after: int | None) -> list[Event]:
    async with client.sessions.stream(session_id, after=after, until_idle=True) as stream:
        return [event async for event in stream]


async def test_identity(client: AsyncClient) -> None:
    me = await client.me()
    assert me.role is Role.OWNER and me.instance_owner
    assert me.space.id.startswith("spc_") and me.member.id.startswith("mbr_")
    health = await client.health()
    assert health.status == "ok"


async def test_a_conversation_followed_on_the_stream(
    client: AsyncClient, model: ScriptedModel
) -> None:
    model.add(reply("Hello there, friend."))
    agent = await client.agents.create(
        "helper", instructions="Be brief.", settings={"max_steps": 5}
    )
    assert agent.settings.max_steps == 5 and agent.instructions == "Be brief."
    session = await client.sessions.create(agent.id, title="first")
    assert session.status is SessionStatus.IDLE and session.last_seq == 1

    accepted = await client.sessions.send(session.id, "hi")
    assert accepted.session_id == session.id and accepted.kind == "task"
    events = await until_idle(client, session.id, after=session.last_seq)

    stored = [e for e in events if not e.ephemeral]
    assert [e.seq for e in stored] == list(range(2, 2 + len(stored)))  # no gap, no duplicate
    assert [e.type for e in stored][-3:] == ["message", "task.result", "task.status"]
    assert stored[-1].data == {"status": "completed"}
    deltas = [e.data["text"] for e in events if e.type == "text.delta"]
    assert "".join(deltas) == "Hello there, friend."
    assert all(e.task_id == accepted.task_id for e in events if e.type != "session.created")

    task = await client.tasks.get(accepted.task_id)
    assert task.status is TaskStatus.COMPLETED
    assert task.result is not None and task.result.text == "Hello there, friend."

    messages = await client.sessions.messages(session.id)
    assert [(m.role, m.text) for m in messages.items] == [
        ("user", "hi"),
        ("assistant", "Hello there, friend."),
    ]
    page = await client.sessions.events(session.id, after=0, limit=3)
    assert [e.seq for e in page.items] == [1, 2, 3] and page.next_cursor == "3"
    rest = await client.sessions.events(session.id, cursor=page.next_cursor, limit=500)
    assert rest.items[0].seq == 4 and rest.next_cursor is None


async def test_a_choice_question_the_inbox_and_the_answer(
    client: AsyncClient, model: ScriptedModel
) -> None:
    model.add(
        call("ask_user", prompt="Which cuisine?", kind="choice", options=["Thai", "Pizza"]),
        reply("Booked Thai."),
    )
    agent = await client.agents.create("planner")
    session = await client.sessions.create(agent.id)
    accepted = await client.sessions.send(session.id, "Plan lunch")
    events = await until_idle(client, session.id, after=None)  # a waiting task is idle
    [question_event] = [e for e in events if e.type == "question"]
    assert question_event.data["prompt"] == "Which cuisine?"

    [waiting] = (await client.tasks.list(status="waiting")).items
    assert waiting.id == accepted.task_id and waiting.question is not None
    question = waiting.question
    assert question.kind is QuestionKind.CHOICE and question.options == ["Thai", "Pizza"]
    assert (await client.sessions.get(session.id)).open_question == question

    with pytest.raises(QuestionPending) as pending:  # a message cannot answer a choice
        await client.sessions.send(session.id, "Thai")
    assert pending.value.details["question"]["id"] == question.id
    with pytest.raises(ValidationFailed):
        await client.tasks.answer(waiting.id, question.id, choice="Sushi")

    answered = await client.tasks.answer(waiting.id, question.id, choice="Thai")
    assert answered.status is TaskStatus.QUEUED
    last = max(e.seq for e in events if e.seq is not None)
    after = await until_idle(client, session.id, after=last)
    assert after[0].type == "answer" and after[0].data["choice"] == "Thai"
    assert (await client.tasks.get(waiting.id)).status is TaskStatus.COMPLETED
    assert (await client.tasks.list(status="waiting")).items == []


async def test_a_text_question_is_answered_by_the_next_message(
    client: AsyncClient, model: ScriptedModel
) -> None:
    model.add(call("ask_user", prompt="Which day?"), reply("Friday it is."))
    agent = await client.agents.create("planner")
    session = await client.sessions.create(agent.id)
    first = await client.sessions.send(session.id, "Plan")
    await until_idle(client, session.id, after=None)
    second = await client.sessions.send(session.id, "Friday")
    assert (second.kind, second.task_id) == ("answer", first.task_id)
    await until_idle(client, session.id, after=None)
    task = await client.tasks.get(first.task_id)
    assert task.result is not None and task.result.text == "Friday it is."


async def test_cancel(client: AsyncClient, model: ScriptedModel) -> None:
    model.add(delayed(30, reply("too late")))
    agent = await client.agents.create("slow")
    session = await client.sessions.create(agent.id)
    accepted = await client.sessions.send(session.id, "go")
    cancelled = await client.tasks.cancel(accepted.task_id)
    assert cancelled.status is TaskStatus.CANCELLED
    with pytest.raises(InvalidTransition) as again:
        await client.tasks.cancel(accepted.task_id)
    assert isinstance(again.value, ApiError) and again.value.status == 409
    events = await until_idle(client, session.id, after=None)
    assert events[-1].data == {"status": "cancelled", "reason": "cancelled"}


async def test_sessions_history_rename_filters_and_delete(client: AsyncClient) -> None:
    agent = await client.agents.create("archivist")
    imported = await client.sessions.create(
        agent.id,
        title="moved over",
        external_user_id="user-7",
        history=[HistoryMessage(role="user", text="hello"), {"role": "assistant", "text": "hi!"}],
    )
    other = await client.sessions.create(agent.id, title="other")
    messages = await client.sessions.messages(imported.id)
    assert [m.text for m in messages.items] == ["hello", "hi!"]

    renamed = await client.sessions.rename(imported.id, "renamed")
    assert renamed.title == "renamed"
    found = [s.id async for s in client.sessions.iterate(agent.id, q="renam")]
    assert found == [imported.id]
    mine = (await client.sessions.list(agent.id, external_user_id="user-7")).items
    assert [s.id for s in mine] == [imported.id]
    everything = [s.id async for s in client.sessions.iterate(agent.id, page_size=1)]
    assert sorted(everything) == sorted([imported.id, other.id])

    await client.sessions.delete(other.id)
    with pytest.raises(NotFound):
        await client.sessions.get(other.id)


async def test_agents_update_and_delete(client: AsyncClient) -> None:
    agent = await client.agents.create("helper", model="test:scripted")
    updated = await client.agents.update(
        agent.id, description="helps", model=None, settings={"max_steps": 7}
    )
    assert (updated.description, updated.model, updated.settings.max_steps) == ("helps", None, 7)
    assert [a.id async for a in client.agents.iterate()] == [agent.id]
    await client.agents.delete(agent.id)
    with pytest.raises(NotFound) as missing:
        await client.agents.get(agent.id)
    assert isinstance(missing.value, ApiError) and missing.value.status == 404
    assert agent.id in missing.value.message


async def test_idempotency_key_gives_the_same_result(client: AsyncClient) -> None:
    first = await client.agents.create("once", idempotency_key="create-once")
    again = await client.agents.create("once", idempotency_key="create-once")
    assert again.id == first.id
    assert len((await client.agents.list()).items) == 1


async def test_api_keys(client: AsyncClient) -> None:
    created = await client.api_keys.create("ci", role="member", expires_in_days=30)
    assert created.secret is not None and created.role is Role.MEMBER
    keys = (await client.api_keys.list()).items
    assert {key.id for key in keys} >= {created.id}
    assert all(key.secret is None for key in keys)
    await client.api_keys.delete(created.id)


async def test_error_answers_are_typed(client: AsyncClient) -> None:
    with pytest.raises(NotFound):
        await client.sessions.get("ses_missing")
    with pytest.raises(ValidationFailed) as invalid:
        await client.agents.list(limit=0)
    assert isinstance(invalid.value, ApiError) and invalid.value.status == 422
    with pytest.raises(InvalidRequest):
        await client.agents.list(cursor="not-a-cursor")
    with pytest.raises(ValidationFailed):
        await client.agents.create("x" * 101)
    with pytest.raises(NotFound):
        await client.tasks.answer("tsk_missing", "q_1", text="hi")


async def test_a_wrong_key_is_unauthorized(tmp_path: Path, model: ScriptedModel) -> None:
    app = scripted_app(server_settings(tmp_path), model)
    async with (
        in_process(app) as transport,
        AsyncClient("http://openbuda.test", "ob_wrong_key_000000000000", transport=transport) as c,
    ):
        with pytest.raises(Unauthorized) as raised:
            await c.me()
        assert isinstance(raised.value, ApiError) and raised.value.status == 401
        with pytest.raises(Unauthorized):  # also before a stream starts
            await until_idle(c, "ses_x", after=None)


@pytest.mark.parametrize("drops", [{1: 0}, {1: 3}, {1: 5, 2: 2}, {1: 1, 2: 1, 3: 1}])
async def test_the_stream_resumes_after_a_dropped_connection(
    tmp_path: Path, model: ScriptedModel, drops: dict[int, int]
) -> None:
    """Disconnect after event k; the SDK reconnects with Last-Event-ID: k and gets k+1 onwards,
    with no gap and no duplicate."""
    model.add(reply("one two three four five six seven"))
    app = scripted_app(server_settings(tmp_path), model)
    async with in_process(app) as inner:
        dropping = DroppingTransport(inner, drops)
        async with AsyncClient("http://openbuda.test", API_KEY, transport=dropping) as client:
            agent = await client.agents.create("helper")
            session = await client.sessions.create(agent.id)
            accepted = await client.sessions.send(session.id, "count")
            # let the task finish first so that every connection replays from the store
            while (await client.tasks.get(accepted.task_id)).status is not TaskStatus.COMPLETED:
                await anyio.sleep(0.02)
            events = await until_idle(client, session.id, after=None)
            reference = [e.seq for e in (await client.sessions.events(session.id)).items]
    assert [e.seq for e in events] == reference
    assert len(dropping.stream_requests) == len(drops) + 1
    ids = dropping.last_event_ids
    assert ids[0] is None
    expected, seen = [], 0
    for number in range(1, len(drops) + 1):
        seen += drops[number]
        expected.append(str(seen) if seen else None)
    assert ids[1:] == expected


async def test_a_live_stream_resumes_mid_task(tmp_path: Path, model: ScriptedModel) -> None:
    """A drop while the task runs: the stored events after the drop come from the replay,
    live ones after that, and every seq is seen once."""
    model.add(delayed(0.3, call("ask_user", prompt="Sure?", kind="approval")), reply("done"))
    app = scripted_app(server_settings(tmp_path), model)
    async with in_process(app) as inner:
        dropping = DroppingTransport(inner, {1: 3})
        async with AsyncClient("http://openbuda.test", API_KEY, transport=dropping) as client:
            agent = await client.agents.create("helper")
            session = await client.sessions.create(agent.id)
            accepted = await client.sessions.send(session.id, "go")
            events = await until_idle(client, session.id, after=None)
            task = await client.tasks.get(accepted.task_id)
            assert task.question is not None
            await client.tasks.answer(task.id, task.question.id, approved=True)
            events += await until_idle(client, session.id, after=events[-1].seq)
            reference = [e.seq for e in (await client.sessions.events(session.id)).items]
    assert [e.seq for e in events if e.seq is not None] == reference
    assert dropping.last_event_ids[:2] == [None, "3"]
