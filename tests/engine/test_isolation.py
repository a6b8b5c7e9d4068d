"""Isolation: 200 sessions across 2 spaces and 4 agents, each with a canary secret; no model
input, event or query result of one session contains another session's canary (ARCHITECTURE §5).

Every session's first message carries its own canary. The model echoes the canary of the input
it answers, and depending on the session calls a tool with it (so tool calls and results carry
it) or asks the user a question with it (so questions, the inbox and answers carry it). Then
everything that can be read is read back, through the services, and searched for canaries.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import anyio
import pytest

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    ModelReply,
    SystemText,
    ToolResultTurn,
    UserTurn,
)
from openbuda.domain.errors import NotFound
from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent, Session, Task
from openbuda.domain.states import TaskStatus
from openbuda.ports import Store
from openbuda.runtime import Runtime
from openbuda.service.sessions import HistoryMessage
from openbuda.service.tasks import Answer
from openbuda.testing import FunctionModel, call, reply
from openbuda.testing.tools import RecordingTool
from tests.harness import make_principal

from .helpers import all_events, all_messages, all_tasks, start_runtime, wait_tasks

pytestmark = pytest.mark.anyio

SESSIONS_PER_AGENT = 50
CANARY = re.compile(r"CANARY-[0-9a-f]{16}")
MARK = re.compile(r"AGENT-MARK-[0-9a-f]{8}")


class Plan(Enum):
    REPLY = "reply"
    TOOL = "tool"
    ASK = "ask"


@dataclass
class Planted:
    """One session and the secrets planted in it."""

    space: str
    agent: Agent
    session: Session
    canary: str
    plan: Plan
    task_ids: list[str] = field(default_factory=list[str])


def canaries_in(value: object) -> set[str]:
    return set(CANARY.findall(repr(value)))


@dataclass
class CanaryModel:
    """Answers every call with the one canary its input holds; records what it saw."""

    plans: dict[str, Plan]
    marks: dict[str, str]
    """The instructions mark of each canary's agent."""
    violations: list[str] = field(default_factory=list[str])
    calls: dict[str, int] = field(default_factory=dict[str, int])

    def __call__(self, request: ModelInput) -> ModelReply:
        found = canaries_in(request)
        users = [t.text for t in request.turns if isinstance(t, UserTurn)]
        own = canaries_in(users[0]) if users else set()
        if len(found) != 1 or found != own:
            self.violations.append(f"input with canaries {sorted(found)}, its own {sorted(own)}")
        canary = min(own or found or {"CANARY-none"})
        self.calls[canary] = self.calls.get(canary, 0) + 1
        marks = set(MARK.findall(repr(request.turns)))
        if marks != {self.marks.get(canary)}:
            self.violations.append(f"{canary}: instructions of {sorted(marks)}")
        last = request.turns[-1]
        if isinstance(last, ToolResultTurn):
            return reply(f"Done with {canary}: {last.output}")
        plan = self.plans.get(canary, Plan.REPLY)
        if users[-1].startswith("Thanks") or plan is Plan.REPLY:
            return reply(f"Noted {canary}.")
        if plan is Plan.TOOL:
            return call("record", text=f"remember {canary}")
        return call("ask_user", prompt=f"Confirm {canary}?")


async def test_canaries_never_cross_sessions_spaces_or_agents(store: Store, tmp_path: Path) -> None:
    spaces = {"A": await make_principal(store, "A"), "B": await make_principal(store, "B")}
    plans: dict[str, Plan] = {}
    marks: dict[str, str] = {}
    model = CanaryModel(plans, marks)
    record = RecordingTool()
    async with start_runtime(
        store,
        tmp_path,
        {"test:canary": FunctionModel(model)},
        tools=[record],
        max_concurrent_tasks=256,
        max_tasks_per_space=256,
    ) as runtime:
        planted = await plant(runtime, spaces, plans, marks)
        by_canary = {p.canary: p for p in planted}

        # -- round one: every session's first message --------------------------------------
        async def first_message(p: Planted) -> None:
            accepted = await runtime.sessions.send(
                spaces[p.space], p.session.id, f"My secret is {p.canary}. Keep it."
            )
            p.task_ids.append(accepted.task_id)

        await each(planted, first_message)
        for name, principal in spaces.items():
            ids = [p.task_ids[0] for p in planted if p.space == name]
            settled = await wait_tasks(runtime, principal, ids, timeout=60)
            for p in planted:
                if p.space == name:
                    expected = TaskStatus.WAITING if p.plan is Plan.ASK else TaskStatus.COMPLETED
                    assert settled[p.task_ids[0]].status is expected

        await check_inboxes(runtime, spaces, planted)
        await check_foreign_ids_are_not_found(runtime, spaces, planted)

        # -- round two: answers and second messages -----------------------------------------
        async def second_message(p: Planted) -> None:
            accepted = await runtime.sessions.send(
                spaces[p.space], p.session.id, f"Thanks, that was {p.canary}."
            )
            assert accepted.kind == ("answer" if p.plan is Plan.ASK else "task")
            if accepted.kind == "task":
                p.task_ids.append(accepted.task_id)

        await each(planted, second_message)
        for name, principal in spaces.items():
            ids = [t for p in planted if p.space == name for t in p.task_ids]
            settled = await wait_tasks(runtime, principal, ids, timeout=60)
            assert {t.status for t in settled.values()} == {TaskStatus.COMPLETED}

        assert model.violations == []
        assert set(model.calls) == set(by_canary)
        for p in planted:
            # tool: the call, the answer after its result, the second message; reply: one
            # answer per message; ask: the question, the answer after the user's answer
            assert model.calls[p.canary] == (3 if p.plan is Plan.TOOL else 2), p.plan
        for key, args in record.calls:
            task_id = key.split(":")[0]
            owner = next(p for p in planted if task_id in p.task_ids)
            assert canaries_in(args) == {owner.canary}

        await check_reads(runtime, spaces, planted)
        await check_foreign_ids_are_not_found(runtime, spaces, planted)


async def plant(
    runtime: Runtime,
    spaces: dict[str, Principal],
    plans: dict[str, Plan],
    marks: dict[str, str],
) -> list[Planted]:
    """Two agents per space, 50 sessions per agent, each with a canary in its title too."""
    planted: list[Planted] = []
    kinds = list(Plan)
    for name, principal in spaces.items():
        for agent_index in range(2):
            mark = f"AGENT-MARK-{secrets.token_hex(4)}"
            agent = await runtime.agents.create(
                principal,
                name=f"{name}{agent_index}",
                instructions=f"You are {mark}.",
                model="test:canary",
            )
            for index in range(SESSIONS_PER_AGENT):
                canary = f"CANARY-{secrets.token_hex(8)}"
                history: list[HistoryMessage] = []
                if index % 10 == 0:  # a few sessions start from imported history
                    history = [
                        HistoryMessage("user", f"Earlier I said {canary}"),
                        HistoryMessage("assistant", f"You said {canary}"),
                    ]
                session = await runtime.sessions.create(
                    principal, agent.id, title=f"chat {canary}", history=history
                )
                plan = kinds[(len(planted)) % len(kinds)]
                plans[canary] = plan
                marks[canary] = mark
                planted.append(Planted(name, agent, session, canary, plan))
    assert len(planted) == 4 * SESSIONS_PER_AGENT
    return planted


async def check_inboxes(
    runtime: Runtime, spaces: dict[str, Principal], planted: list[Planted]
) -> None:
    """Each space's inbox holds exactly its own waiting tasks, each question its own canary."""
    for name, principal in spaces.items():
        inbox = await all_tasks(runtime, principal, status=TaskStatus.WAITING)
        mine = {p.task_ids[0]: p for p in planted if p.space == name and p.plan is Plan.ASK}
        assert {t.id for t in inbox} == set(mine)
        for task in inbox:
            assert task.space_id == principal.space_id
            assert task.question is not None
            assert canaries_in(task) == {mine[task.id].canary}
            session = await runtime.sessions.get(principal, task.session_id)
            assert session.open_question is not None
            assert canaries_in(session) == {mine[task.id].canary}


async def check_reads(
    runtime: Runtime, spaces: dict[str, Principal], planted: list[Planted]
) -> None:
    """Everything a space can read about a session holds that session's canary and no other."""
    for name, principal in spaces.items():
        own = [p for p in planted if p.space == name]

        async def check_session(p: Planted, principal: Principal = principal) -> None:
            events = await all_events(runtime, principal, p.session.id)
            assert canaries_in(events) == {p.canary}
            assert {e.session_id for e in events} == {p.session.id}
            types = {e.type for e in events}
            assert {"message", "model.response", "task.result"} <= types
            if p.plan is Plan.TOOL:
                assert {"tool.call", "tool.result"} <= types
            if p.plan is Plan.ASK:
                assert {"question", "answer"} <= types
            for event in events:
                if event.type in ("message", "model.response", "tool.result", "task.result"):
                    assert canaries_in(event.data) == {p.canary}, event
            messages = await all_messages(runtime, principal, p.session.id)
            assert canaries_in(messages) == {p.canary}
            assert all(canaries_in(m.text) == {p.canary} for m in messages)
            session = await runtime.sessions.get(principal, p.session.id)
            assert canaries_in(session) == {p.canary}
            tasks = await all_tasks(runtime, principal, session_id=p.session.id)
            assert {t.id for t in tasks} == set(p.task_ids)
            assert canaries_in(tasks) == {p.canary}
            found = await runtime.sessions.list(principal, p.agent.id, query=p.canary)
            assert [s.id for s in found.items] == [p.session.id]

        await each(own, check_session)

        agents = {p.agent.id: p.agent for p in own}
        listed_agents = await runtime.agents.list(principal, limit=500)
        assert {a.id for a in listed_agents.items} == set(agents)
        for agent in agents.values():
            listed = await runtime.sessions.list(principal, agent.id, limit=500)
            expected = {p.session.id: p for p in own if p.agent.id == agent.id}
            assert {s.id for s in listed.items} == set(expected)
            for session in listed.items:
                assert canaries_in(session) == {expected[session.id].canary}
            by_agent = await all_tasks(runtime, principal, agent_id=agent.id)
            assert {t.session_id for t in by_agent} == set(expected)
        every_task = await all_tasks(runtime, principal)
        assert {t.id for t in every_task} == {t for p in own for t in p.task_ids}
        assert {t.space_id for t in every_task} == {principal.space_id}


async def check_foreign_ids_are_not_found(
    runtime: Runtime, spaces: dict[str, Principal], planted: list[Planted]
) -> None:
    """Every id of the other space answers NotFound through every service, and changes
    nothing; its canaries never show up in this space's lists and searches."""
    for name, principal in spaces.items():
        foreign = [p for p in planted if p.space != name]
        foreign_agents = {p.agent.id: p.agent for p in foreign}
        own_agents = {p.agent.id for p in planted if p.space == name}
        for agent_id in foreign_agents:
            await not_found(runtime.agents.get(principal, agent_id))
            await not_found(runtime.sessions.list(principal, agent_id))
            await not_found(runtime.sessions.create(principal, agent_id, title="x"))
            assert (await all_tasks(runtime, principal, agent_id=agent_id)) == []
        for p in foreign[:: len(foreign) // 25]:  # a sample of 25 covers every plan and agent
            sid = p.session.id
            await not_found(runtime.sessions.get(principal, sid))
            await not_found(runtime.sessions.events(principal, sid))
            await not_found(runtime.sessions.messages(principal, sid))
            await not_found(runtime.sessions.send(principal, sid, "let me in"))
            await not_found(runtime.sessions.rename(principal, sid, "mine now"))
            await not_found(runtime.sessions.delete(principal, sid))
            assert (await all_tasks(runtime, principal, session_id=sid)) == []
            for task_id in p.task_ids:
                await not_found(runtime.tasks.get(principal, task_id))
                await not_found(runtime.tasks.cancel(principal, task_id))
                await not_found(runtime.tasks.answer(principal, task_id, Answer("q_x", text="hi")))
            for agent_id in own_agents:
                found = await runtime.sessions.list(principal, agent_id, query=p.canary)
                assert found.items == []
        # nothing above changed the other space's sessions or tasks
        owner = next(q for q in spaces.values() if q is not principal)
        for p in foreign[:: len(foreign) // 25]:
            session = await runtime.sessions.get(owner, p.session.id)
            assert session.title == f"chat {p.canary}"
            tasks = await all_tasks(runtime, owner, session_id=p.session.id)
            assert {t.id for t in tasks} == set(p.task_ids)
            assert all(not _cancelled(t) for t in tasks)


def _cancelled(task: Task) -> bool:
    return task.status is TaskStatus.CANCELLED


async def each(planted: list[Planted], action: Callable[[Planted], Awaitable[None]]) -> None:
    """``action`` for every session, a few at a time (as many clients would)."""
    limiter = anyio.CapacityLimiter(16)

    async def one(p: Planted) -> None:
        async with limiter:
            await action(p)

    async with anyio.create_task_group() as group:
        for p in planted:
            group.start_soon(one, p)


async def not_found(action: Awaitable[Any]) -> None:
    with pytest.raises(NotFound):
        await action


async def test_each_model_input_holds_only_its_own_session(store: Store, tmp_path: Path) -> None:
    """The same check on a small scale, with the exact turns: two sessions of one agent with
    interleaved messages see only their own."""
    principal = await make_principal(store)
    model = FunctionModel(lambda request: reply(f"ok {sorted(canaries_in(request))}"))
    async with start_runtime(store, tmp_path, {"test:canary": model}) as runtime:
        agent = await runtime.agents.create(
            principal, name="a", instructions="Be brief.", model="test:canary"
        )
        first = await runtime.sessions.create(principal, agent.id)
        second = await runtime.sessions.create(principal, agent.id)
        secret = {first.id: "CANARY-" + "1" * 16, second.id: "CANARY-" + "2" * 16}
        task_ids: list[str] = []
        for round_ in range(2):
            for session in (first, second):
                text = f"round {round_}: {secret[session.id]}"
                accepted = await runtime.sessions.send(principal, session.id, text)
                task_ids.append(accepted.task_id)
                await wait_tasks(runtime, principal, [accepted.task_id])
    last_of_first = model.inputs[2]
    canary = secret[first.id]
    assert last_of_first.turns == (
        SystemText("Be brief."),
        UserTurn(f"round 0: {canary}"),
        AssistantTurn(f"ok ['{canary}']"),
        UserTurn(f"round 1: {canary}"),
    )
    assert [canaries_in(request) for request in model.inputs] == [
        {secret[first.id]},
        {secret[second.id]},
        {secret[first.id]},
        {secret[second.id]},
    ]
