"""Dormancy (ARCHITECTURE §4): a session's status is computed when read from its tasks, its last
activity and the agent's ``idle_timeout_s``; a dormant session resumes with its context; and
nothing is held in memory for dormant sessions or waiting tasks."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import anyio
import pytest

from openbuda.domain.conversation import AssistantTurn, ModelInput, ModelReply, SystemText, UserTurn
from openbuda.domain.principal import Principal
from openbuda.domain.records import AgentSettings
from openbuda.domain.states import SessionStatus, TaskStatus
from openbuda.ports import AgentPatch, Store, TextDeltaSink
from openbuda.runtime import Runtime
from openbuda.service.tasks import Answer
from openbuda.testing import FakeClock, ScriptedModel, call, reply
from tests.harness import make_principal

from .helpers import start_runtime, wait_tasks

pytestmark = pytest.mark.anyio

IDLE_TIMEOUT = 60


async def listed(
    runtime: Runtime, principal: Principal, agent_id: str, status: SessionStatus
) -> set[str]:
    """The ids of the agent's sessions that ``?status=`` finds (every page)."""
    found: set[str] = set()
    cursor: str | None = None
    while True:
        page = await runtime.sessions.list(
            principal, agent_id, status=status, limit=500, cursor=cursor
        )
        found |= {session.id for session in page.items}
        assert all(session.status is status for session in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return found


async def statuses(
    runtime: Runtime, principal: Principal, agent_id: str
) -> dict[SessionStatus, set[str]]:
    """The agent's sessions by the status ``?status=`` finds them in (empty ones left out)."""
    found = {status: await listed(runtime, principal, agent_id, status) for status in SessionStatus}
    return {status: ids for status, ids in found.items() if ids}


def assert_nothing_held(runtime: Runtime) -> None:
    assert runtime.organizer.running_count == 0
    assert runtime.broadcaster.subscriber_count() == 0
    assert not runtime.organizer._placed
    assert not runtime.broadcaster._subscribers


async def test_an_idle_session_turns_dormant_and_resumes_with_its_context(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    release = anyio.Event()

    async def after_release(request: ModelInput) -> ModelReply:
        await release.wait()
        return reply("Your name is Ada.")

    model = ScriptedModel([reply("Hello Ada."), after_release], name="test:scripted")
    principal = await make_principal(store)
    async with start_runtime(store, tmp_path, {"test:scripted": model}, clock=clock) as runtime:
        agent = await runtime.agents.create(
            principal,
            name="a",
            instructions="Be brief.",
            model="test:scripted",
            settings=AgentSettings(idle_timeout_s=IDLE_TIMEOUT),
        )
        session = await runtime.sessions.create(principal, agent.id)
        assert session.status is SessionStatus.IDLE

        first = await runtime.sessions.send(principal, session.id, "My name is Ada.")
        await wait_tasks(runtime, principal, [first.task_id])
        finished_at = clock.now()
        session = await runtime.sessions.get(principal, session.id)
        assert session.status is SessionStatus.IDLE
        assert session.last_activity_at == finished_at
        assert await statuses(runtime, principal, agent.id) == {SessionStatus.IDLE: {session.id}}

        clock.advance(IDLE_TIMEOUT - 1)
        assert (await runtime.sessions.get(principal, session.id)).status is SessionStatus.IDLE
        clock.advance(1)
        dormant = await runtime.sessions.get(principal, session.id)
        assert dormant.status is SessionStatus.DORMANT
        assert dormant.last_activity_at == finished_at  # reading it is no activity
        assert await statuses(runtime, principal, agent.id) == {SessionStatus.DORMANT: {session.id}}
        assert_nothing_held(runtime)

        second = await runtime.sessions.send(principal, session.id, "What is my name?")
        assert (await runtime.sessions.get(principal, session.id)).status is SessionStatus.WORKING
        assert await statuses(runtime, principal, agent.id) == {SessionStatus.WORKING: {session.id}}
        await wait_tasks(runtime, principal, [second.task_id], frozenset({TaskStatus.RUNNING}))
        assert (await runtime.sessions.get(principal, session.id)).status is SessionStatus.WORKING
        release.set()
        task = (await wait_tasks(runtime, principal, [second.task_id]))[second.task_id]
        assert task.status is TaskStatus.COMPLETED
        resumed = await runtime.sessions.get(principal, session.id)
        assert resumed.status is SessionStatus.IDLE
        assert resumed.last_activity_at == clock.now()
        assert await statuses(runtime, principal, agent.id) == {SessionStatus.IDLE: {session.id}}
        assert_nothing_held(runtime)

    model.assert_all_used()
    assert model.inputs[1].turns == (
        SystemText("Be brief."),
        UserTurn("My name is Ada."),
        AssistantTurn("Hello Ada."),
        UserTurn("What is my name?"),
    )


async def test_dormancy_is_per_session_and_per_agent_timeout(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    model = ScriptedModel(name="test:scripted")
    principal = await make_principal(store)
    async with start_runtime(store, tmp_path, {"test:scripted": model}, clock=clock) as runtime:
        quick = await runtime.agents.create(
            principal,
            name="quick",
            model="test:scripted",
            settings=AgentSettings(idle_timeout_s=10),
        )
        patient = await runtime.agents.create(
            principal,
            name="patient",
            model="test:scripted",
            settings=AgentSettings(idle_timeout_s=100),
        )
        old = await runtime.sessions.create(principal, quick.id, title="old")
        clock.advance(5)
        fresh = await runtime.sessions.create(principal, quick.id, title="fresh")
        other = await runtime.sessions.create(principal, patient.id, title="other")
        clock.advance(5)

        assert await statuses(runtime, principal, quick.id) == {
            SessionStatus.DORMANT: {old.id},
            SessionStatus.IDLE: {fresh.id},
        }
        assert await statuses(runtime, principal, patient.id) == {SessionStatus.IDLE: {other.id}}
        clock.advance(5)
        assert await statuses(runtime, principal, quick.id) == {
            SessionStatus.DORMANT: {old.id, fresh.id}
        }
        assert await statuses(runtime, principal, patient.id) == {SessionStatus.IDLE: {other.id}}

        # activity (a message and its task) wakes one session; the other stays dormant
        model.add(reply("hi"))
        accepted = await runtime.sessions.send(principal, old.id, "hello")
        await wait_tasks(runtime, principal, [accepted.task_id])
        assert await statuses(runtime, principal, quick.id) == {
            SessionStatus.IDLE: {old.id},
            SessionStatus.DORMANT: {fresh.id},
        }
        # a longer idle timeout set later applies to sessions when they are next read
        await runtime.agents.update(
            principal,
            quick.id,
            AgentPatch(settings=AgentSettings(idle_timeout_s=1000)),
        )
        assert await statuses(runtime, principal, quick.id) == {
            SessionStatus.IDLE: {old.id, fresh.id}
        }
    model.assert_all_used()


async def test_a_waiting_task_holds_nothing_and_never_goes_dormant(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    model = ScriptedModel(
        [call("ask_user", prompt="Which city?"), reply("Paris it is.")], name="test:scripted"
    )
    principal = await make_principal(store)
    async with start_runtime(store, tmp_path, {"test:scripted": model}, clock=clock) as runtime:
        agent = await runtime.agents.create(
            principal,
            name="a",
            model="test:scripted",
            settings=AgentSettings(idle_timeout_s=IDLE_TIMEOUT),
        )
        session = await runtime.sessions.create(principal, agent.id)
        accepted = await runtime.sessions.send(principal, session.id, "Book a trip")
        task = (await wait_tasks(runtime, principal, [accepted.task_id]))[accepted.task_id]
        assert task.status is TaskStatus.WAITING
        assert task.lease_owner is None and task.lease_until is None
        assert_nothing_held(runtime)

        clock.advance(IDLE_TIMEOUT * 100)
        await anyio.sleep(0.1)  # the organizer's loops get a turn with the clock moved
        waiting = await runtime.sessions.get(principal, session.id)
        assert waiting.status is SessionStatus.WAITING
        assert waiting.open_question is not None
        assert await statuses(runtime, principal, agent.id) == {SessionStatus.WAITING: {session.id}}
        assert_nothing_held(runtime)
        assert (await runtime.tasks.get(principal, task.id)).status is TaskStatus.WAITING

        assert task.question is not None
        await runtime.tasks.answer(principal, task.id, Answer(task.question.id, text="Paris"))
        done = (await wait_tasks(runtime, principal, [task.id]))[task.id]
        assert done.status is TaskStatus.COMPLETED
        assert await statuses(runtime, principal, agent.id) == {SessionStatus.IDLE: {session.id}}
        assert_nothing_held(runtime)
    model.assert_all_used()


async def test_subscribers_are_released_when_they_close(store: Store, tmp_path: Path) -> None:
    model = ScriptedModel([reply("done")], name="test:scripted")
    principal = await make_principal(store)
    async with start_runtime(store, tmp_path, {"test:scripted": model}) as runtime:
        agent = await runtime.agents.create(principal, name="a", model="test:scripted")
        session = await runtime.sessions.create(principal, agent.id)
        subscription = runtime.broadcaster.subscribe(session.id)
        assert runtime.broadcaster.subscriber_count(session.id) == 1
        accepted = await runtime.sessions.send(principal, session.id, "go")
        seen: list[str] = []
        with anyio.fail_after(10):
            async for event in subscription:
                seen.append(str(event["type"]))
                if event["type"] == "task.status" and event["data"]["status"] == "completed":
                    break
        await subscription.close()
        assert seen[0] == "message" and "model.response" in seen
        await wait_tasks(runtime, principal, [accepted.task_id])
        assert_nothing_held(runtime)


class _Echo:
    """A model that records nothing, so that the memory it holds does not grow per call."""

    name = "test:echo"

    async def respond(
        self, request: ModelInput, on_text: TextDeltaSink | None = None
    ) -> ModelReply:
        return ModelReply("ok")


@pytest.mark.slow
async def test_dormant_sessions_cost_no_memory(store: Store, tmp_path: Path) -> None:
    """500 sessions created, finished and left to go dormant leave nothing behind in the
    process: no run, no subscriber, no per-session entry in any structure (counted as memory
    blocks and objects, after a warm-up that fills caches and pools)."""
    clock = FakeClock()
    principal = await make_principal(store)
    batch, warm_up, measured = 50, 50, 500

    async def one_session(runtime: Runtime, agent_id: str) -> str:
        session = await runtime.sessions.create(principal, agent_id)
        accepted = await runtime.sessions.send(principal, session.id, "hello")
        return accepted.task_id

    async def run_sessions(runtime: Runtime, agent_id: str, count: int) -> None:
        for _ in range(count // batch):
            task_ids: list[str] = []

            async def start(task_ids: list[str] = task_ids) -> None:
                task_ids.append(await one_session(runtime, agent_id))

            async with anyio.create_task_group() as group:
                for _ in range(batch):
                    group.start_soon(start)
            done = await wait_tasks(runtime, principal, task_ids, timeout=60)
            assert {t.status for t in done.values()} == {TaskStatus.COMPLETED}

    async with start_runtime(store, tmp_path, {"test:echo": _Echo()}, clock=clock) as runtime:
        agent = await runtime.agents.create(
            principal,
            name="a",
            model="test:echo",
            settings=AgentSettings(idle_timeout_s=IDLE_TIMEOUT),
        )
        await run_sessions(runtime, agent.id, warm_up)
        # two measured halves: a leak grows in both, the noise of a cache that fills up (or
        # of pooled connections coming and going) in one of them at most
        growth: list[tuple[float, float]] = []
        for _ in range(2):
            gc.collect()
            blocks, objects = sys.getallocatedblocks(), len(gc.get_objects())
            await run_sessions(runtime, agent.id, measured // 2)
            clock.advance(IDLE_TIMEOUT)
            await anyio.sleep(0.1)  # the organizer's loops run with the clock moved
            gc.collect()
            growth.append(
                (
                    (sys.getallocatedblocks() - blocks) / (measured // 2),
                    (len(gc.get_objects()) - objects) / (measured // 2),
                )
            )

        dormant = await listed(runtime, principal, agent.id, SessionStatus.DORMANT)
        assert len(dormant) == warm_up + measured
        assert_nothing_held(runtime)
    blocks = min(blocks for blocks, _ in growth)
    objects = min(objects for _, objects in growth)
    # Anything kept per session (a dict entry, an id string, a task object) is at least one
    # block and usually several objects per session; what remains is noise from caches.
    assert blocks < 2, f"memory blocks per dormant session: {growth}"
    assert objects < 3, f"objects per dormant session: {growth}"
