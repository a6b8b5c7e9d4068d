"""Concurrency: many messages at once into one session follow the ``on_busy`` policy (none lost,
order kept), and many sessions at once run within the organizer's limits, in fair turns."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    ModelReply,
    SystemText,
    Turn,
    UserTurn,
)
from openbuda.domain.errors import SessionBusy
from openbuda.domain.principal import Principal
from openbuda.domain.records import AgentSettings, Task
from openbuda.domain.states import TaskStatus
from openbuda.ports import Store
from openbuda.runtime import Runtime
from openbuda.service.sessions import MessageAccepted, OnBusy
from openbuda.testing import FunctionModel, call, reply
from openbuda.testing.tools import RecordingTool
from tests.harness import make_principal

from .helpers import (
    ConcurrencyTracker,
    all_events,
    all_messages,
    all_tasks,
    holds,
    start_runtime,
    wait_for,
    wait_tasks,
)

pytestmark = pytest.mark.anyio

INSTRUCTIONS = "Be brief."
BURST = 50


def user_texts(request: ModelInput) -> list[str]:
    return [turn.text for turn in request.turns if isinstance(turn, UserTurn)]


def last_user_text(request: ModelInput) -> str:
    texts = user_texts(request)
    assert texts, f"a model input without a user turn: {request.turns}"
    return texts[-1]


async def new_session(
    runtime: Runtime, principal: Principal, model: str = "test:fn", **settings: object
) -> str:
    agent = await runtime.agents.create(
        principal,
        name="agent",
        instructions=INSTRUCTIONS,
        model=model,
        settings=AgentSettings.model_validate(settings),
    )
    return (await runtime.sessions.create(principal, agent.id)).id


async def send_all(
    runtime: Runtime,
    principal: Principal,
    session_id: str,
    texts: list[str],
    on_busy: OnBusy = OnBusy.QUEUE,
) -> list[MessageAccepted]:
    """Send every text at once (one anyio task each); the acceptances in completion order."""
    accepted: list[MessageAccepted] = []

    async def send(text: str) -> None:
        accepted.append(await runtime.sessions.send(principal, session_id, text, on_busy=on_busy))

    async with anyio.create_task_group() as group:
        for text in texts:
            group.start_soon(send, text)
    return accepted


# -- one session ------------------------------------------------------------------------------


async def test_queue_runs_a_burst_one_at_a_time_in_message_order(
    store: Store, tmp_path: Path
) -> None:
    tracker = ConcurrencyTracker()

    async def answer(request: ModelInput) -> ModelReply:
        text = last_user_text(request)
        with tracker.running(text):
            await anyio.sleep(0.002)
        return reply(f"answer to {text}")

    model = FunctionModel(answer)
    principal = await make_principal(store)
    async with start_runtime(store, tmp_path, {"test:fn": model}) as runtime:
        session_id = await new_session(runtime, principal)
        texts = [f"message {i:02d}" for i in range(BURST)]
        accepted = await send_all(runtime, principal, session_id, texts)

        assert {a.kind for a in accepted} == {"task"}
        assert len({a.task_id for a in accepted}) == BURST
        tasks = await wait_tasks(runtime, principal, [a.task_id for a in accepted])
        assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
        messages = await all_messages(runtime, principal, session_id)

    # the conversation: every message and every answer, in seq order
    assert [m.seq for m in messages] == sorted(m.seq for m in messages)
    users = [m for m in messages if m.role == "user"]
    answers = [m for m in messages if m.role == "assistant"]
    assert sorted(m.text for m in users) == texts
    in_order = [m.text for m in users]
    assert [m.text for m in answers] == [f"answer to {text}" for text in in_order]
    assert [m.task_id for m in answers] == [m.task_id for m in users]
    assert {m.message_id: m.task_id for m in users} == {a.message_id: a.task_id for a in accepted}

    # one at a time, in the order of the messages' seqs
    assert tracker.peak_total == 1
    assert tracker.starts == in_order
    by_start = sorted(tasks.values(), key=lambda t: (t.started_at, t.finished_at))
    assert [t.id for t in by_start] == [m.task_id for m in users]
    for earlier, later in itertools.pairwise(by_start):
        assert earlier.finished_at is not None and later.started_at is not None
        assert earlier.finished_at <= later.started_at

    # each task saw the conversation up to its own message, never a later one
    assert len(model.inputs) == BURST
    for index, request in enumerate(model.inputs):
        expected: list[Turn] = [SystemText(INSTRUCTIONS)]
        for text in in_order[:index]:
            expected += [UserTurn(text), AssistantTurn(f"answer to {text}")]
        expected.append(UserTurn(in_order[index]))
        assert request.turns == tuple(expected), f"input of task #{index}"


async def test_reject_refuses_a_burst_while_busy_and_stores_nothing(
    store: Store, tmp_path: Path
) -> None:
    release = anyio.Event()

    async def answer(request: ModelInput) -> ModelReply:
        await release.wait()
        return reply("done")

    principal = await make_principal(store)
    async with start_runtime(store, tmp_path, {"test:fn": FunctionModel(answer)}) as runtime:
        session_id = await new_session(runtime, principal)
        first = await runtime.sessions.send(principal, session_id, "first")
        await wait_tasks(runtime, principal, [first.task_id], frozenset({TaskStatus.RUNNING}))
        before = await all_events(runtime, principal, session_id)
        refused: list[SessionBusy] = []

        async def reject(index: int) -> None:
            with pytest.raises(SessionBusy) as busy:
                await runtime.sessions.send(
                    principal, session_id, f"rejected {index}", on_busy=OnBusy.REJECT
                )
            refused.append(busy.value)

        async with anyio.create_task_group() as group:
            for index in range(BURST):
                group.start_soon(reject, index)

        assert len(refused) == BURST
        assert {error.details["task_id"] for error in refused} == {first.task_id}
        assert await all_events(runtime, principal, session_id) == before
        assert [t.id for t in await all_tasks(runtime, principal, session_id=session_id)] == [
            first.task_id
        ]
        session = await runtime.sessions.get(principal, session_id)
        assert session.task_count == 1

        release.set()
        done = await wait_tasks(runtime, principal, [first.task_id])
        assert done[first.task_id].status is TaskStatus.COMPLETED
        messages = await all_messages(runtime, principal, session_id)
    assert [(m.role, m.text) for m in messages] == [("user", "first"), ("assistant", "done")]


async def test_steer_burst_reaches_the_running_task_before_it_completes(
    store: Store, tmp_path: Path
) -> None:
    steers = [f"steer {i:02d}" for i in range(BURST)]
    record = RecordingTool()

    async def answer(request: ModelInput) -> ModelReply:
        seen = user_texts(request)
        assert len(seen) == len(set(seen)), f"a message reached the model twice: {seen}"
        await anyio.sleep(0.003)
        if set(steers) <= set(seen):
            return reply("all seen")
        return call("record", text=str(len(seen)))

    model = FunctionModel(answer)
    principal = await make_principal(store)
    async with start_runtime(store, tmp_path, {"test:fn": model}, tools=[record]) as runtime:
        session_id = await new_session(runtime, principal, max_steps=1000)
        first = await runtime.sessions.send(principal, session_id, "work")
        await wait_tasks(runtime, principal, [first.task_id], frozenset({TaskStatus.RUNNING}))

        accepted: list[MessageAccepted] = []

        async def steer(text: str, delay: float) -> None:
            await anyio.sleep(delay)
            accepted.append(
                await runtime.sessions.send(principal, session_id, text, on_busy=OnBusy.STEER)
            )

        async with anyio.create_task_group() as group:
            for index, text in enumerate(steers):
                # spread over several steps: some land during a model call, some during a tool
                group.start_soon(steer, text, (index % 10) * 0.004)

        assert {(a.kind, a.task_id) for a in accepted} == {("steer", first.task_id)}
        task = (await wait_tasks(runtime, principal, [first.task_id]))[first.task_id]
        assert task.status is TaskStatus.COMPLETED
        assert task.result is not None and task.result.text == "all seen"
        assert task.steer_count == BURST
        messages = await all_messages(runtime, principal, session_id)
        tasks = await all_tasks(runtime, principal, session_id=session_id)

    assert [t.id for t in tasks] == [first.task_id]
    stored_steers = [m.text for m in messages if m.role == "user"][1:]
    assert sorted(stored_steers) == steers
    assert all(m.task_id == first.task_id for m in messages)
    # the completing call saw every steer exactly once, in the order they were stored
    assert user_texts(model.last_input) == ["work", *stored_steers]


async def test_interrupt_burst_leaves_only_the_last_task(store: Store, tmp_path: Path) -> None:
    release = anyio.Event()

    async def answer(request: ModelInput) -> ModelReply:
        text = last_user_text(request)
        if text == "slow":
            await anyio.sleep_forever()
        await release.wait()
        return reply(f"answer to {text}")

    principal = await make_principal(store)
    async with start_runtime(store, tmp_path, {"test:fn": FunctionModel(answer)}) as runtime:
        session_id = await new_session(runtime, principal)
        first = await runtime.sessions.send(principal, session_id, "slow")
        await wait_tasks(runtime, principal, [first.task_id], frozenset({TaskStatus.RUNNING}))
        texts = [f"interrupt {i:02d}" for i in range(BURST // 2)]
        accepted = await send_all(runtime, principal, session_id, texts, OnBusy.INTERRUPT)
        assert {a.kind for a in accepted} == {"task"}
        release.set()

        all_ids = [first.task_id, *(a.task_id for a in accepted)]
        tasks = await wait_tasks(runtime, principal, all_ids)
        messages = await all_messages(runtime, principal, session_id)
        events = await all_events(runtime, principal, session_id)

        users = [m for m in messages if m.role == "user"]
        assert users[0].text == "slow"
        assert sorted(m.text for m in users[1:]) == texts
        last = users[-1].task_id
        assert last is not None
        survivors = [t for t in tasks.values() if t.status is not TaskStatus.CANCELLED]
        assert [t.id for t in survivors] == [last]
        assert survivors[0].status is TaskStatus.COMPLETED
        assert [(m.role, m.text) for m in messages[-2:]] == [
            ("user", users[-1].text),
            ("assistant", f"answer to {users[-1].text}"),
        ]
        for task_id in all_ids:
            if task_id == last:
                continue
            statuses = [e.data for e in events if e.task_id == task_id and e.type == "task.status"]
            assert statuses[-1] == {"status": "cancelled", "reason": "interrupted"}
        assert runtime.organizer.running_count == 0


# -- many sessions ----------------------------------------------------------------------------


async def test_many_sessions_at_once_all_complete_concurrently(
    store: Store, tmp_path: Path
) -> None:
    tracker = ConcurrencyTracker()

    async def answer(request: ModelInput) -> ModelReply:
        with tracker.running():
            await anyio.sleep(0.05)
        return reply(f"answer to {last_user_text(request)}")

    principal = await make_principal(store)
    sessions_count = 100
    async with start_runtime(
        store, tmp_path, {"test:fn": FunctionModel(answer)}, max_concurrent_tasks=sessions_count
    ) as runtime:
        agent = await runtime.agents.create(principal, name="a", model="test:fn")
        session_ids = [
            (await runtime.sessions.create(principal, agent.id)).id for _ in range(sessions_count)
        ]
        accepted: list[MessageAccepted] = []

        async def send(session_id: str) -> None:
            accepted.append(await runtime.sessions.send(principal, session_id, session_id))

        async with anyio.create_task_group() as group:
            for session_id in session_ids:
                group.start_soon(send, session_id)
        tasks = await wait_tasks(runtime, principal, [a.task_id for a in accepted])

        assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
        for accepted_one in accepted:
            task = tasks[accepted_one.task_id]
            assert task.session_id == accepted_one.session_id
            assert task.result is not None
            assert task.result.text == f"answer to {accepted_one.session_id}"
    # they overlapped (one after the other they would take 100 x 50 ms)
    assert tracker.peak_total >= 10, tracker.peak_total


async def test_the_organizer_runs_at_most_max_concurrent_tasks(
    store: Store, tmp_path: Path
) -> None:
    limit = 4
    tracker = ConcurrencyTracker()
    full = anyio.Event()
    running_counts: list[int] = []
    runtime_box: list[Runtime] = []

    async def answer(request: ModelInput) -> ModelReply:
        with tracker.running():
            running_counts.append(runtime_box[0].organizer.running_count)
            if tracker.total == limit:
                full.set()
            with anyio.move_on_after(10):
                await full.wait()
            await anyio.sleep(0.01)
        return reply("ok")

    principal = await make_principal(store)
    async with start_runtime(
        store, tmp_path, {"test:fn": FunctionModel(answer)}, max_concurrent_tasks=limit
    ) as runtime:
        runtime_box.append(runtime)
        agent = await runtime.agents.create(principal, name="a", model="test:fn")
        task_ids: list[str] = []
        for index in range(5 * limit):
            session = await runtime.sessions.create(principal, agent.id)
            task_ids.append(
                (await runtime.sessions.send(principal, session.id, f"m{index}")).task_id
            )
        tasks = await wait_tasks(runtime, principal, task_ids)
    assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
    assert full.is_set()
    assert tracker.peak_total == limit
    assert max(running_counts) == limit


@dataclass
class FairRun:
    tracker: ConcurrencyTracker
    """Model calls by space (``big``, ``small``)."""
    big: list[Task]
    small: list[Task]

    def big_started_before(self, task: Task) -> int:
        """How many of ``big``'s tasks were claimed before ``task``."""
        assert task.started_at is not None
        return sum(
            1 for t in self.big if t.started_at is not None and t.started_at < task.started_at
        )


async def fair_turns_run(store: Store, tmp_path: Path, *, per_space: int) -> FairRun:
    """Space ``big`` queues 40 tasks (the first ones start and block), then ``small`` queues 2,
    then the model lets everything finish; with room for 4 tasks at once."""
    limit = 4
    tracker = ConcurrencyTracker()
    release = anyio.Event()

    async def answer(request: ModelInput) -> ModelReply:
        with tracker.running(last_user_text(request).split(" ")[0]):
            await release.wait()
            await anyio.sleep(0.005)
        return reply("ok")

    big = await make_principal(store, "big")
    small = await make_principal(store, "small")
    async with start_runtime(
        store,
        tmp_path,
        {"test:fn": FunctionModel(answer)},
        max_concurrent_tasks=limit,
        max_tasks_per_space=per_space,
    ) as runtime:

        async def queue(principal: Principal, name: str, count: int) -> list[str]:
            agent = await runtime.agents.create(principal, name=name, model="test:fn")
            task_ids: list[str] = []
            for index in range(count):
                session = await runtime.sessions.create(principal, agent.id)
                accepted = await runtime.sessions.send(principal, session.id, f"{name} {index}")
                task_ids.append(accepted.task_id)
            return task_ids

        big_ids = await queue(big, "big", 40)
        running = min(limit, per_space)
        await wait_for(holds(lambda: tracker.total == running), what=f"{running} 'big' tasks")
        small_ids = await queue(small, "small", 2)
        if per_space < limit:
            await wait_for(
                holds(lambda: tracker.active.get("small") == 2),
                what="'small' to start in the slots 'big' may not use",
                timeout=10,
            )
        release.set()
        big_tasks = await wait_tasks(runtime, big, big_ids, timeout=60)
        small_tasks = await wait_tasks(runtime, small, small_ids)
    statuses = {t.status for t in (*big_tasks.values(), *small_tasks.values())}
    assert statuses == {TaskStatus.COMPLETED}
    return FairRun(tracker, list(big_tasks.values()), list(small_tasks.values()))


async def test_fair_turns_let_a_small_space_in_before_a_big_backlog(
    store: Store, tmp_path: Path
) -> None:
    run = await fair_turns_run(store, tmp_path, per_space=32)
    assert run.tracker.peak_total == 4
    # the small space gets its turn in the next round of slots: at most two more of the big
    # space's backlog of 36 start before each of its tasks (first come, first served would
    # start 36 of them first; a window of the oldest queued tasks, 20 or more)
    assert all(4 <= run.big_started_before(task) <= 6 for task in run.small), [
        run.big_started_before(task) for task in run.small
    ]


async def test_max_tasks_per_space_leaves_room_for_other_spaces(
    store: Store, tmp_path: Path
) -> None:
    run = await fair_turns_run(store, tmp_path, per_space=2)
    assert run.tracker.peak == {"big": 2, "small": 2}
    assert run.tracker.peak_total == 4
    # the small space started in the slots the big space may not use, while the big space's
    # first two tasks still ran
    assert [run.big_started_before(task) for task in run.small] == [2, 2]
