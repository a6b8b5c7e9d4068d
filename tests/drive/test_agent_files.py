"""The Agent Drive end to end: an agent with its computer tools, run by the real loop.

Files any program writes in ``/agent`` become versions by the task, are listed in the task's
result and in a ``drive.changed`` event; a member's API write reaches ``/agent`` before the
agent's next tool call; ``remember`` lands in ``MEMORY.md``, which the next task reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from openbuda.domain.conversation import SystemText, ToolResultTurn
from openbuda.domain.drive import MEMORY_INDEX, Actor, DriveRef
from openbuda.domain.principal import Principal
from openbuda.domain.records import AgentSettings, Task
from openbuda.domain.states import TaskStatus
from openbuda.ports import ReadEvents, Store
from openbuda.runtime import Runtime
from openbuda.service.drive import iterate_bytes
from openbuda.testing import ScriptedModel, call, reply
from tests.harness import engine_settings, make_principal

pytestmark = pytest.mark.anyio


@pytest.fixture
async def world(store: Store, tmp_path: Path) -> AsyncIterator[tuple[Runtime, ScriptedModel]]:
    model = ScriptedModel(name="test:scripted")
    settings = engine_settings(tmp_path, computer_backend="process")
    async with Runtime.start(settings, store=store, models=lambda _spec: model) as runtime:
        yield runtime, model
    model.assert_all_used()


async def _finish(runtime: Runtime, principal: Principal, task_id: str) -> Task:
    with anyio.fail_after(30):
        while True:
            task = await runtime.tasks.get(principal, task_id)
            if task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.WAITING):
                return task
            await anyio.sleep(0.02)


async def test_files_the_agent_makes_become_versions_of_its_task(
    world: tuple[Runtime, ScriptedModel],
) -> None:
    runtime, model = world
    principal = await make_principal(runtime.store)
    agent = await runtime.agents.create(
        principal, name="maker", model="test:scripted", settings=AgentSettings()
    )
    session = await runtime.sessions.create(principal, agent.id)
    model.add(
        call("shell", command="mkdir -p out && echo hello > out/a.txt && echo x > gone.txt"),
        call("shell", command="rm gone.txt && echo changed >> out/a.txt"),
        reply("Made out/a.txt."),
    )
    sent = await runtime.sessions.send(principal, session.id, "make a file")
    task = await _finish(runtime, principal, sent.task_id)
    assert task.status == TaskStatus.COMPLETED, task.error
    assert task.result is not None and task.result.files == ["/agent/out/a.txt"]

    async with runtime.store.read() as tx:
        events = await tx.read_events(ReadEvents(principal.space_id, session.id))
    changed = [sorted(e.data["paths"]) for e in events if e.type == "drive.changed"]
    assert changed == [["/agent/gone.txt", "/agent/out/a.txt"]] * 2
    assert all(e.task_id == task.id for e in events if e.type == "drive.changed")

    ref = DriveRef(principal.space_id, agent.id)
    history = await runtime.drive.history(ref, "out/a.txt")
    assert [v.version for v in history] == [2, 1]
    assert history[0].actor == Actor(agent_id=agent.id, task_id=task.id, session_id=session.id)
    _found, data = await runtime.drive.read(ref, "out/a.txt")
    assert data == b"hello\nchanged\n"
    gone = await runtime.drive.history(ref, "gone.txt")
    assert [v.op for v in gone] == ["delete", "write"]


async def test_a_member_write_reaches_the_computer_before_the_next_tool_call(
    world: tuple[Runtime, ScriptedModel],
) -> None:
    runtime, model = world
    principal = await make_principal(runtime.store)
    agent = await runtime.agents.create(principal, name="reader", model="test:scripted")
    session = await runtime.sessions.create(principal, agent.id)
    ref = DriveRef(principal.space_id, agent.id)

    model.add(call("shell", command="echo started"), reply("ok"))
    first = await runtime.sessions.send(principal, session.id, "start")
    await _finish(runtime, principal, first.task_id)  # the computer runs now

    await runtime.drive.write(
        ref, "brief.md", iterate_bytes(b"from the member\n"), Actor(member_id=principal.member_id)
    )
    model.add(call("shell", command="cat brief.md"), reply("read it"))
    second = await runtime.sessions.send(principal, session.id, "read the brief")
    task = await _finish(runtime, principal, second.task_id)
    assert task.status == TaskStatus.COMPLETED
    outputs = [t for t in model.inputs[-1].turns if isinstance(t, ToolResultTurn)]
    assert "from the member" in outputs[-1].output


async def test_remember_reaches_the_next_task_and_the_computer(
    world: tuple[Runtime, ScriptedModel],
) -> None:
    runtime, model = world
    principal = await make_principal(runtime.store)
    agent = await runtime.agents.create(principal, name="memo", model="test:scripted")
    session = await runtime.sessions.create(principal, agent.id)

    model.add(
        call("remember", text="The user's name is Ada."),
        call("shell", command="cat MEMORY.md"),
        reply("noted"),
    )
    sent = await runtime.sessions.send(principal, session.id, "remember my name: Ada")
    task = await _finish(runtime, principal, sent.task_id)
    assert task.status == TaskStatus.COMPLETED
    assert task.result is not None and "/agent/MEMORY.md" in task.result.files
    outputs = [t for t in model.inputs[-1].turns if isinstance(t, ToolResultTurn)]
    assert "The user's name is Ada." in outputs[-1].output, "the index reached /agent"

    other = await runtime.sessions.create(principal, agent.id)
    model.add(reply("Hello Ada"))
    again = await runtime.sessions.send(principal, other.id, "who am I?")
    await _finish(runtime, principal, again.task_id)
    system = "\n".join(t.text for t in model.inputs[-1].turns if isinstance(t, SystemText))
    assert "The user's name is Ada." in system
    ref = DriveRef(principal.space_id, agent.id)
    _found, index = await runtime.drive.read(ref, MEMORY_INDEX)
    assert index.decode().startswith("# Memory")
