"""An agent's computer moves to another worker: the new worker (another machine: its own
computer directory) re-creates it from the Agent Drive, so the agent finds the files it made
on the first one."""

from __future__ import annotations

from pathlib import Path

import pytest

from openbuda.domain.records import Task
from openbuda.domain.states import TaskStatus
from openbuda.ports import ReadEvents, Store
from openbuda.runtime import Runtime
from openbuda.testing import ScriptedModel, calls, reply, tool_call
from tests.harness import engine_settings, make_principal

pytestmark = pytest.mark.anyio


async def test_the_next_worker_rebuilds_the_computer_from_the_agent_drive(
    store: Store, tmp_path: Path
) -> None:
    space = await make_principal(store)
    model = ScriptedModel(
        [
            calls(tool_call("write_file", {"path": "/agent/notes.txt", "content": "kept\n"})),
            reply("written"),
            calls(tool_call("read_file", {"path": "/agent/notes.txt"})),
            reply("read"),
        ]
    )

    def machine(name: str) -> Runtime:
        return Runtime.build(
            engine_settings(
                tmp_path / name,  # its own home and computer directory: another machine
                embedded=False,
                worker_id=name,
                computer_backend="process",
                drive_blobs=str(tmp_path / "shared-blobs"),  # what S3 is across machines
            ),
            store,
            models=lambda _spec: model,
            worker_id=name,
        )

    async def run_next(runtime: Runtime) -> Task:
        (task,) = await runtime.organizer.claim(1)
        await runtime.organizer.runner.run(task)
        found = await runtime.tasks.get(space, task.id)
        assert found.status is TaskStatus.COMPLETED, found
        return found

    first = machine("m1")
    agent = await first.agents.create(space, name="mover", model="test:scripted")
    session = await first.sessions.create(space, agent.id)
    await first.sessions.send(space, session.id, "write a note")
    try:
        await run_next(first)
    finally:
        await first.computers.aclose()
    async with store.write() as tx:  # m1 is gone: its placement ends with it
        assert await tx.release_computers("m1", None) == 1

    second = machine("m2")
    await second.sessions.send(space, session.id, "read it back")
    try:
        task = await run_next(second)
    finally:
        await second.computers.aclose()
    async with store.read() as tx:
        events = await tx.read_events(ReadEvents(space.space_id, session.id, task_id=task.id))
    (result,) = [e for e in events if e.type == "tool.result"]
    assert "kept" in str(result.data), result.data
    assert any((tmp_path / "m2" / "computers").rglob("notes.txt")), "re-created on m2's disk"
