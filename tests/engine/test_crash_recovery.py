"""The recovery rules (ARCHITECTURE §3), one at a time, without processes or timing.

Each test builds the state a crash leaves behind: a task claimed by a worker that is now gone
(``Organizer.claim`` of a runtime built for it and never started) and the events it stored
before dying (fenced appends, as the loop writes them). Then a restarted organizer
(``recover``) or another worker's reaper (``reap``, with a fake clock past the lease) re-queues
the task and a live worker runs it to the end:

- a ``tool.call`` without its ``tool.result`` is in doubt: a non-idempotent tool gets an
  ``interrupted`` result and does not run again; an idempotent one runs again with the same key;
- a stored model response is never asked for again: its tool calls run, a final answer
  completes the task; a model call without a stored response is simply made again;
- a restarted organizer with the same worker id re-queues at once what it held (embedded: every
  running task), with reason ``lease_expired``; a lease that expired elsewhere is reaped;
- a worker whose lease was taken over cannot store anything (``LeaseLost``) and so never runs
  the tool it was about to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from openbuda.domain.conversation import ModelReply, ToolResultTurn, UserTurn
from openbuda.domain.errors import LeaseLost
from openbuda.domain.events import EventType, NewEvent
from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent, Event, Task
from openbuda.domain.states import TaskStatus
from openbuda.engine.tools import Tool, ToolRegistry
from openbuda.ports import Clock, Fence, ReadEvents, Store, TaskChange
from openbuda.runtime import Runtime
from openbuda.service.sessions import OnBusy
from openbuda.service.transitions import transition
from openbuda.settings import Settings
from openbuda.testing import FakeClock, ScriptedModel, calls, reply, tool_call
from openbuda.testing.tools import RecordingTool
from tests.harness import engine_settings, make_principal

pytestmark = pytest.mark.anyio

LEASE_S = 30.0


@dataclass
class Scene:
    store: Store
    principal: Principal
    agent: Agent
    settings: Settings

    def worker(
        self,
        worker_id: str,
        *,
        model: ScriptedModel | None = None,
        tools: Sequence[Tool] = (),
        embedded: bool = False,
        clock: Clock | None = None,
    ) -> Runtime:
        """A runtime for one worker process, not started: its organizer is driven by hand."""
        client = model or ScriptedModel()
        return Runtime.build(
            self.settings.model_copy(update={"embedded": embedded, "worker_id": worker_id}),
            self.store,
            clock=clock,
            models=lambda _spec: client,
            tools=ToolRegistry(tools),
            worker_id=worker_id,
        )

    async def send(self, text: str = "go", agent: Agent | None = None) -> tuple[str, str]:
        services = self.worker("client")
        session = await services.sessions.create(self.principal, (agent or self.agent).id)
        accepted = await services.sessions.send(self.principal, session.id, text)
        return session.id, accepted.task_id

    async def crashed_worker(
        self, worker_id: str = "w1", *, clock: Clock | None = None, events: Sequence[NewEvent] = ()
    ) -> Task:
        """Claim the oldest queued task as ``worker_id``, store ``events`` and die."""
        dead = self.worker(worker_id, clock=clock)
        claimed = await dead.organizer.claim(1)
        assert len(claimed) == 1, claimed
        task = claimed[0]
        if events:
            await self.append(task, events)
        return task

    async def append(self, task: Task, events: Sequence[NewEvent]) -> list[Event]:
        """Append as the holder of ``task``'s lease (the loop's fenced write)."""
        async with self.store.write() as tx:
            return await tx.append(
                task.space_id,
                task.session_id,
                list(events),
                datetime.now(UTC),
                fence=Fence(task.id, task.lease_epoch),
            )

    async def task(self, task_id: str) -> Task:
        async with self.store.read() as tx:
            task = await tx.get_task(self.principal.space_id, task_id)
        assert task is not None
        return task

    async def events(self, session_id: str, task_id: str | None = None) -> list[Event]:
        async with self.store.read() as tx:
            return await tx.read_events(
                ReadEvents(self.principal.space_id, session_id, task_id=task_id)
            )

    async def run_next(self, live: Runtime) -> Task:
        """Claim the next task as ``live`` and run it to where it stops."""
        claimed = await live.organizer.claim(1)
        assert len(claimed) == 1, claimed
        await live.organizer.runner.run(claimed[0])
        return await self.task(claimed[0].id)


@pytest.fixture
async def scene(store: Store, tmp_path: Path) -> Scene:
    principal = await make_principal(store)
    settings = engine_settings(tmp_path, lease_seconds=LEASE_S)
    services = Runtime.build(settings, store)
    agent = await services.agents.create(principal, name="helper", model="test:scripted")
    return Scene(store, principal, agent, settings)


def response(reply_: ModelReply, input_seq: int = 0) -> NewEvent:
    return NewEvent(EventType.MODEL_RESPONSE, {**reply_.to_event_data(), "input_seq": input_seq})


def record_call(call_id: str = "call_1", text: str = "x") -> ModelReply:
    return calls(tool_call("record", {"text": text}, call_id=call_id))


def intent(call_id: str = "call_1", text: str = "x") -> NewEvent:
    return NewEvent(
        EventType.TOOL_CALL, {"call_id": call_id, "name": "record", "args": {"text": text}}
    )


def with_task(task: Task, events: Sequence[NewEvent]) -> list[NewEvent]:
    return [NewEvent(event.type, event.data, task.id) for event in events]


def kinds(events: Sequence[Event]) -> list[str]:
    return [
        f"{e.type}:{e.data['status']}" + (f":{e.data['reason']}" if "reason" in e.data else "")
        if e.type == EventType.TASK_STATUS
        else e.type
        for e in events
    ]


# -- tool calls in doubt -------------------------------------------------------------------------


@pytest.mark.parametrize("embedded", [False, True], ids=["same-worker-id", "embedded"])
async def test_an_in_doubt_call_of_a_non_idempotent_tool_is_interrupted_not_run_again(
    scene: Scene, embedded: bool
) -> None:
    session_id, task_id = await scene.send()
    crashed = await scene.crashed_worker("w1")
    await scene.append(crashed, with_task(crashed, [response(record_call()), intent()]))

    record = RecordingTool(idempotent=False)
    model = ScriptedModel([reply("I will check before repeating it.")])
    worker_id = "w9" if embedded else "w1"
    live = scene.worker(worker_id, model=model, tools=[record], embedded=embedded)
    assert await live.organizer.recover() == 1
    task = await scene.run_next(live)

    assert task.status is TaskStatus.COMPLETED
    assert record.calls == []
    model.assert_all_used()
    last = model.inputs[0].turns[-1]
    assert isinstance(last, ToolResultTurn)
    assert (last.call_id, last.name, last.is_error) == ("call_1", "record", True)
    assert "interrupted" in last.output
    events = await scene.events(session_id, task_id)
    assert kinds(events) == [
        "message",
        "task.status:queued",
        "task.status:running",
        "model.response",
        "tool.call",
        "task.status:queued:lease_expired",
        "task.status:running",
        "tool.result",
        "model.response",
        "message",
        "task.result",
        "task.status:completed",
    ]
    assert events[7].data["status"] == "interrupted"


async def test_an_in_doubt_call_of_an_idempotent_tool_runs_again_with_the_same_key(
    scene: Scene,
) -> None:
    session_id, task_id = await scene.send()
    crashed = await scene.crashed_worker("w1")
    await scene.append(crashed, with_task(crashed, [response(record_call()), intent()]))

    record = RecordingTool(idempotent=True)
    model = ScriptedModel([reply("done")])
    live = scene.worker("w1", model=model, tools=[record])
    assert await live.organizer.recover() == 1
    task = await scene.run_next(live)

    assert task.status is TaskStatus.COMPLETED
    assert record.calls == [(f"{task_id}:call_1", {"text": "x"})]
    assert model.inputs[0].turns[-1] == ToolResultTurn("call_1", "record", "echo: x")
    events = await scene.events(session_id, task_id)
    assert [e.type for e in events].count("tool.call") == 1, "the intent is not stored twice"
    results = [e.data for e in events if e.type == "tool.result"]
    assert [(r["call_id"], r["status"]) for r in results] == [("call_1", "ok")]


async def test_a_stored_response_runs_its_calls_without_asking_the_model_again(
    scene: Scene,
) -> None:
    session_id, task_id = await scene.send()
    crashed = await scene.crashed_worker("w1")
    await scene.append(crashed, with_task(crashed, [response(record_call())]))

    record = RecordingTool(idempotent=False)
    model = ScriptedModel([reply("done")])
    live = scene.worker("w1", model=model, tools=[record])
    assert await live.organizer.recover() == 1
    task = await scene.run_next(live)

    assert task.status is TaskStatus.COMPLETED
    assert record.calls == [(f"{task_id}:call_1", {"text": "x"})], "not in doubt: it runs"
    assert len(model.inputs) == 1, "only the step after the tool call asks the model"
    assert kinds(await scene.events(session_id, task_id))[-8:] == [
        "task.status:queued:lease_expired",
        "task.status:running",
        "tool.call",
        "tool.result",
        "model.response",
        "message",
        "task.result",
        "task.status:completed",
    ]


# -- model calls -----------------------------------------------------------------------------------


async def test_a_model_call_without_a_stored_response_is_made_again(scene: Scene) -> None:
    session_id, task_id = await scene.send("hello")
    await scene.crashed_worker("w1")  # it died while the model was thinking

    model = ScriptedModel([reply("hi")])
    live = scene.worker("w1", model=model)
    assert await live.organizer.recover() == 1
    task = await scene.run_next(live)

    assert task.status is TaskStatus.COMPLETED
    assert task.result is not None
    assert task.result.text == "hi"
    assert model.inputs[0].turns == (UserTurn("hello"),)
    types = [e.type for e in await scene.events(session_id, task_id)]
    assert types.count("model.response") == 1


async def test_a_stored_final_answer_completes_the_task_without_asking_again(
    scene: Scene,
) -> None:
    session_id, task_id = await scene.send()
    crashed = await scene.crashed_worker("w1")
    input_seq = (await scene.events(session_id))[-1].seq
    await scene.append(crashed, with_task(crashed, [response(reply("the answer"), input_seq)]))

    model = ScriptedModel([])  # any model call fails the test
    live = scene.worker("w1", model=model)
    assert await live.organizer.recover() == 1
    task = await scene.run_next(live)

    assert task.status is TaskStatus.COMPLETED
    assert task.result is not None
    assert task.result.text == "the answer"
    model.assert_all_used()
    events = await scene.events(session_id, task_id)
    assert [e.type for e in events].count("model.response") == 1
    assert events[-3].data["text"] == "the answer"


async def test_a_steer_stored_after_a_final_answer_still_reaches_the_model(scene: Scene) -> None:
    session_id, _task_id = await scene.send("work")
    crashed = await scene.crashed_worker("w1")
    input_seq = (await scene.events(session_id))[-1].seq
    await scene.append(crashed, with_task(crashed, [response(reply("first try"), input_seq)]))
    services = scene.worker("client")
    await services.sessions.send(scene.principal, session_id, "shorter", on_busy=OnBusy.STEER)

    model = ScriptedModel([reply("short")])
    live = scene.worker("w1", model=model)
    assert await live.organizer.recover() == 1
    task = await scene.run_next(live)

    assert task.result is not None
    assert task.result.text == "short"
    assert model.inputs[0].turns[-1] == UserTurn("shorter")


# -- leases ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("embedded", [False, True], ids=["same-worker-id", "embedded"])
async def test_a_restarted_organizer_requeues_what_it_held_at_once(
    scene: Scene, embedded: bool
) -> None:
    # two agents: one agent's tasks go to the one worker its computer is placed on
    other = await scene.worker("client").agents.create(scene.principal, name="other")
    _, mine = await scene.send("mine")
    _, theirs = await scene.send("theirs", agent=other)
    await scene.crashed_worker("w1")
    await scene.crashed_worker("w2")

    live = scene.worker("w1", embedded=embedded)
    assert await live.organizer.recover() == (2 if embedded else 1)

    requeued = [mine, theirs] if embedded else [mine]
    for task_id in (mine, theirs):
        task = await scene.task(task_id)
        if task_id in requeued:
            assert task.status is TaskStatus.QUEUED
            assert task.lease_owner is None
            events = await scene.events(task.session_id, task_id)
            assert events[-1].data == {"status": "queued", "reason": "lease_expired"}
        else:
            assert task.status is TaskStatus.RUNNING, "w2's lease is still valid"
            assert task.lease_owner == "w2"
    assert await live.organizer.recover() == 0, "nothing is re-queued twice"


async def test_a_started_runtime_recovers_before_it_claims(scene: Scene) -> None:
    session_id, task_id = await scene.send("again")
    await scene.crashed_worker("w1")
    model = ScriptedModel([reply("recovered")])
    async with Runtime.start(
        scene.settings.model_copy(update={"embedded": False}),
        store=scene.store,
        models=lambda _spec: model,
        worker_id="w1",
    ):
        with anyio.fail_after(5):  # far less than the 30 s lease
            while True:
                if (await scene.task(task_id)).status is TaskStatus.COMPLETED:
                    break
                await anyio.sleep(0.01)
    statuses = [e.data for e in await scene.events(session_id, task_id) if e.type == "task.status"]
    assert statuses == [
        {"status": "queued"},
        {"status": "running", "worker": "w1", "epoch": 1},
        {"status": "queued", "reason": "lease_expired"},
        {"status": "running", "worker": "w1", "epoch": 2},
        {"status": "completed"},
    ]


async def test_an_expired_lease_is_reaped_by_another_worker(scene: Scene) -> None:
    clock = FakeClock()
    session_id, task_id = await scene.send()
    await scene.crashed_worker("w1", clock=clock)
    other = scene.worker("w2", clock=clock)

    clock.advance(LEASE_S - 1)
    assert await other.organizer.reap() == 0
    clock.advance(2)
    assert await other.organizer.reap() == 1
    assert await other.organizer.reap() == 0

    task = await scene.task(task_id)
    assert (task.status, task.lease_owner) == (TaskStatus.QUEUED, None)
    events = await scene.events(session_id, task_id)
    assert events[-1].data == {"status": "queued", "reason": "lease_expired"}
    claimed = await other.organizer.claim(1)
    assert [(t.id, t.lease_owner) for t in claimed] == [(task_id, "w2")]


async def test_a_worker_whose_lease_was_taken_over_cannot_write(scene: Scene) -> None:
    clock = FakeClock()
    session_id, task_id = await scene.send()
    record = RecordingTool()
    stale_model = ScriptedModel([reply("too late")])
    stale = scene.worker("w1", clock=clock, model=stale_model, tools=[record])
    stale_task = (await stale.organizer.claim(1))[0]
    clock.advance(LEASE_S + 1)
    live = scene.worker("w2", clock=clock)
    assert await live.organizer.reap() == 1
    live_task = (await live.organizer.claim(1))[0]
    assert live_task.lease_epoch == stale_task.lease_epoch + 1
    before = await scene.events(session_id)

    with pytest.raises(LeaseLost):
        await scene.append(stale_task, with_task(stale_task, [response(reply("x"))]))
    async with scene.store.write() as tx:
        lost = await transition(
            tx,
            TaskChange(
                stale_task.space_id,
                task_id,
                frozenset({TaskStatus.RUNNING}),
                TaskStatus.COMPLETED,
                clock.now(),
                fence=Fence(task_id, stale_task.lease_epoch),
                clear_lease=True,
                set_finished=True,
            ),
            session_id=session_id,
        )
    assert lost is None
    await stale.organizer.runner.run(stale_task)  # its model answers; storing it fails
    assert await scene.events(session_id) == before

    # the live worker stored a tool call; the stale one, still running, must not run it
    await scene.append(live_task, with_task(live_task, [response(record_call())]))
    await stale.organizer.runner.run(stale_task)
    assert record.calls == []
    events = await scene.events(session_id)
    assert events[-1].type == "model.response", "the stale worker stored nothing"
    task = await scene.task(task_id)
    assert (task.status, task.lease_owner, task.lease_epoch) == (
        TaskStatus.RUNNING,
        "w2",
        live_task.lease_epoch,
    )
    assert len(stale_model.inputs) == 1, "a model call is no side effect, a tool call would be"
