"""The computer tools through the real engine: a scripted model calls them, the process backend
runs them, and the task's events, result and files show what happened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from openbuda.computer import ComputerLayout, ProcessBackend
from openbuda.computer.process import ProcessSandbox
from openbuda.computer.tools import STREAM_CAP, computer_tools
from openbuda.domain.conversation import ToolResultTurn
from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent, AgentSettings, Event, Session, Task
from openbuda.domain.states import TaskStatus
from openbuda.ports import ReadEvents, Sandbox, SandboxBackend, SandboxCapabilities, SandboxSpec
from openbuda.runtime import Runtime
from openbuda.testing import ScriptedModel, call, calls, reply
from tests.harness import engine_settings, make_principal

pytestmark = pytest.mark.anyio

SETTLED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.WAITING})


class IsolatedProcessBackend(ProcessBackend):
    """The process backend claiming isolation, so that external users' sessions may run (the
    view's read-only rules are enforced by the host file API, which both backends share)."""

    @property
    def capabilities(self) -> SandboxCapabilities:
        return SandboxCapabilities(isolated=True, freeze=False, internet=True, disk_quota=False)


class BrokenBackend:
    """Computers that cannot start."""

    name = "broken"
    capabilities = SandboxCapabilities(isolated=True, freeze=True, internet=False, disk_quota=False)

    async def connect(self, spec: SandboxSpec) -> Sandbox:
        raise OSError("no loop device left")

    async def aclose(self) -> None:
        return None


@dataclass
class World:
    runtime: Runtime
    principal: Principal
    model: ScriptedModel
    layout: ComputerLayout

    async def agent(self, **settings: Any) -> Agent:
        return await self.runtime.agents.create(
            self.principal, name="coder", model="test:scripted", settings=AgentSettings(**settings)
        )

    async def run(
        self, agent: Agent, text: str, *, external_user_id: str | None = None
    ) -> tuple[Session, Task, list[dict[str, Any]]]:
        """Send ``text`` in a new session; the settled task and the live events seen."""
        session = await self.runtime.sessions.create(
            self.principal, agent.id, external_user_id=external_user_id
        )
        live: list[dict[str, Any]] = []
        subscription = self.runtime.broadcaster.subscribe(session.id)

        async def watch() -> None:
            async for event in subscription:
                live.append(event)

        accepted = None
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            accepted = await self.runtime.sessions.send(self.principal, session.id, text)
            with anyio.fail_after(20):
                while (
                    await self.runtime.tasks.get(self.principal, accepted.task_id)
                ).status not in SETTLED:
                    await anyio.sleep(0.02)
            group.cancel_scope.cancel()
        await subscription.close()
        assert accepted is not None
        return session, await self.runtime.tasks.get(self.principal, accepted.task_id), live

    async def results(self, session: Session) -> list[Event]:
        async with self.runtime.store.read() as tx:
            events = await tx.read_events(ReadEvents(self.principal.space_id, session.id))
        return [e for e in events if e.type == "tool.result"]

    def tool_outputs(self, step: int) -> list[ToolResultTurn]:
        """The tool results the model saw in its call number ``step`` (from 0)."""
        return [t for t in self.model.inputs[step].turns if isinstance(t, ToolResultTurn)]


async def world_with(
    store: Any, tmp_path: Path, backend: SandboxBackend | None = None
) -> AsyncIterator[World]:
    model = ScriptedModel(name="test:scripted")
    layout = ComputerLayout(tmp_path / "computers")
    principal = await make_principal(store)
    async with Runtime.start(
        engine_settings(tmp_path, computer_backend="process"),
        store=store,
        models=lambda _spec: model,
        sandbox=backend or ProcessBackend(layout),
    ) as runtime:
        yield World(runtime, principal, model, layout)
    model.assert_all_used()


@pytest.fixture
async def world(store: Any, tmp_path: Path) -> AsyncIterator[World]:
    async for running in world_with(store, tmp_path):
        yield running


async def test_the_runtime_offers_the_computer_tools_by_default(world: World) -> None:
    names = world.runtime.organizer.deps.tools.names()
    assert names == sorted(
        ["shell", "read_file", "write_file", "edit_file", "list_files", "remember"]
    )
    specs = {tool.spec.name: tool for tool in computer_tools(world.runtime.computers)}
    assert specs["shell"].spec.parameters["required"] == ["command"]
    assert set(specs["shell"].spec.parameters["properties"]) == {"command", "timeout_s"}
    assert specs["edit_file"].spec.parameters["required"] == ["path", "old", "new"]
    idempotent = {name: tool.idempotent for name, tool in specs.items()}
    assert idempotent == {
        "shell": False,
        "read_file": True,
        "write_file": True,
        "edit_file": False,
        "list_files": True,
    }


async def test_write_then_cat_lists_the_file_and_streams_the_output(world: World) -> None:
    world.model.add(
        call("write_file", path="notes/todo.md", content="- buy milk\n"),
        call("shell", command="cat notes/todo.md && echo oops >&2"),
        reply("Done."),
    )
    agent = await world.agent()
    session, task, live = await world.run(agent, "write a todo")

    assert task.status is TaskStatus.COMPLETED
    assert task.result is not None and task.result.files == ["/agent/notes/todo.md"]
    assert (world.layout.agent_files(agent.id) / "notes" / "todo.md").read_text() == "- buy milk\n"
    [wrote] = world.tool_outputs(1)
    assert wrote.output == "wrote /agent/notes/todo.md (11 bytes)" and not wrote.is_error
    shell = world.tool_outputs(2)[-1]
    assert shell.output == "exit code 0\n--- stdout ---\n- buy milk\n--- stderr ---\noops"
    outputs = [e["data"] for e in live if e["type"] == "tool.output"]
    assert {"call_id": "call_2", "stream": "stdout", "text": "- buy milk\n"} in outputs
    assert {"call_id": "call_2", "stream": "stderr", "text": "oops\n"} in outputs
    assert all(e.get("seq") is None for e in live if e["type"] == "tool.output")  # ephemeral
    results = await world.results(session)
    assert [r.data["status"] for r in results] == ["ok", "ok"]
    assert results[0].data["files"] == ["/agent/notes/todo.md"]


async def test_read_list_and_the_errors_of_files(world: World) -> None:
    agent = await world.agent()
    agent_dir = world.layout.agent_files(agent.id)
    (agent_dir / "src").mkdir(parents=True)
    (agent_dir / "src" / "main.py").write_text("print('hi')\n")
    (agent_dir / "blob.bin").write_bytes(b"\x00\x01\x02")
    (agent_dir / "big.txt").write_text("x" * 70_000)
    world.model.add(
        calls(
            ("read_file", {"path": "/agent/src/main.py"}),
            ("list_files", {}),
            ("read_file", {"path": "blob.bin"}),
            ("read_file", {"path": "big.txt"}),
            ("read_file", {"path": "missing.txt"}),
            ("read_file", {"path": "/etc/passwd"}),
            ("list_files", {"path": "../.."}),
        ),
        reply("Seen."),
    )
    session, task, _ = await world.run(agent, "look around")
    assert task.status is TaskStatus.COMPLETED and task.result is not None
    assert task.result.files == []
    seen = world.tool_outputs(1)
    assert seen[0].output == "print('hi')\n" and not seen[0].is_error
    assert seen[1].output.splitlines() == [
        "/agent/",
        "  src/",
        "  big.txt  (70000 bytes)",
        "  blob.bin  (3 bytes)",
    ]
    assert seen[2].is_error and "binary file" in seen[2].output
    assert seen[3].is_error and "70000 bytes" in seen[3].output and "shell" in seen[3].output
    assert seen[4].is_error and "'/agent/missing.txt' does not exist" in seen[4].output
    assert seen[5].is_error and "outside the computer's files" in seen[5].output
    assert seen[6].is_error and "'..' is not allowed" in seen[6].output
    statuses = [r.data["status"] for r in await world.results(session)]
    assert statuses == ["ok", "ok", "error", "error", "error", "error", "error"]


async def test_edit_file_needs_exactly_one_occurrence(world: World) -> None:
    agent = await world.agent()
    path = world.layout.agent_files(agent.id) / "app.py"
    path.parent.mkdir(parents=True)
    path.write_text("x = 1\ny = 1\n")
    world.model.add(
        call("edit_file", path="app.py", old="z = 1", new="z = 2"),
        call("edit_file", path="app.py", old=" = 1", new=" = 2"),
        call("edit_file", path="app.py", old="y = 1", new="y = 2"),
        call("edit_file", path="nope.py", old="a", new="b"),
        reply("Edited."),
    )
    _, task, _ = await world.run(agent, "edit it")

    absent, twice, done, missing = (world.tool_outputs(i)[-1] for i in range(1, 5))
    assert absent.is_error and "does not appear in /agent/app.py" in absent.output
    assert twice.is_error and "appears 2 times in /agent/app.py" in twice.output
    assert not done.is_error and done.output.startswith("edited /agent/app.py")
    assert missing.is_error and "does not exist" in missing.output
    assert path.read_text() == "x = 1\ny = 2\n"
    assert task.result is not None and task.result.files == ["/agent/app.py"]


async def test_a_big_output_is_capped_and_saved_to_the_session(world: World) -> None:
    world.model.add(call("shell", command="seq 1 30000"), reply("Counted."))
    agent = await world.agent()
    session, task, live = await world.run(agent, "count")
    assert task.status is TaskStatus.COMPLETED

    full = "".join(f"{n}\n" for n in range(1, 30001))
    [result] = world.tool_outputs(1)
    assert not result.is_error
    assert result.output.startswith("exit code 0\n--- stdout ---\n1\n2\n3\n")
    assert result.output.rstrip().endswith(
        f"29999\n30000\n(the whole output, {len(full)} bytes, is saved in "
        "/session/.outputs/call_1.log)"
    )
    assert "bytes omitted; the whole output is in /session/.outputs/call_1.log]" in result.output
    assert len(result.output.encode()) < STREAM_CAP + 500
    log = world.layout.session_files(agent.id, session.id) / ".outputs" / "call_1.log"
    assert log.read_text() == full
    streamed = "".join(e["data"]["text"] for e in live if e["type"] == "tool.output")
    assert streamed == full
    assert task.result is not None and task.result.files == []  # /session is not listed


async def test_a_command_past_its_timeout_is_killed_and_says_so(world: World) -> None:
    world.model.add(
        call("shell", command="echo started; sleep 30", timeout_s=0.5),
        call("shell", command="exit 3"),
        reply("Slow."),
    )
    agent = await world.agent()
    session, task, _ = await world.run(agent, "wait")
    assert task.status is TaskStatus.COMPLETED
    timed_out = world.tool_outputs(1)[-1]
    assert timed_out.is_error
    assert timed_out.output.startswith("exit code 137 (killed: timeout 0.5 s)")
    assert "started" in timed_out.output
    failed = world.tool_outputs(2)[-1]
    assert failed.output == "exit code 3\n(no output)" and not failed.is_error
    durations = [r.data["duration_ms"] for r in await world.results(session)]
    assert durations[0] < 10_000


async def test_the_process_backend_refuses_external_users(world: World) -> None:
    world.model.add(call("shell", command="id"), reply("No."))
    agent = await world.agent()
    _, task, _ = await world.run(agent, "who am i", external_user_id="customer-1")
    assert task.status is TaskStatus.COMPLETED
    [refused] = world.tool_outputs(1)
    assert refused.is_error and "no isolation" in refused.output


@pytest.fixture
async def isolated(store: Any, tmp_path: Path) -> AsyncIterator[World]:
    backend = IsolatedProcessBackend(ComputerLayout(tmp_path / "computers"))
    async for running in world_with(store, tmp_path, backend):
        yield running


async def test_an_external_users_session_cannot_write_the_agents_files(isolated: World) -> None:
    world = isolated
    agent = await world.agent()
    shared = world.layout.agent_files(agent.id)
    shared.mkdir(parents=True)
    (shared / "README.md").write_text("shared knowledge\n")
    world.model.add(
        calls(
            ("write_file", {"path": "/agent/hack.md", "content": "pwned"}),
            ("edit_file", {"path": "README.md", "old": "shared", "new": "stolen"}),
            ("write_file", {"path": "/space/x.md", "content": "pwned"}),
            ("write_file", {"path": "/session/mine.md", "content": "my notes"}),
            ("read_file", {"path": "README.md"}),
        ),
        reply("Tried."),
    )
    session, task, _ = await world.run(agent, "hack", external_user_id="customer-1")
    outputs = world.tool_outputs(1)
    assert [o.is_error for o in outputs] == [True, True, True, False, False]
    assert all("read-only in this session" in o.output for o in outputs[:3])
    assert outputs[4].output == "shared knowledge\n"
    assert not (shared / "hack.md").exists()
    assert (shared / "README.md").read_text() == "shared knowledge\n"
    mine = world.layout.session_files(agent.id, session.id) / "mine.md"
    assert mine.read_text() == "my notes"
    assert task.result is not None and task.result.files == []  # nothing shared changed


async def test_an_agent_may_let_external_users_write(isolated: World) -> None:
    world = isolated
    agent = await world.agent(external_users_can_write=True)
    world.model.add(call("write_file", path="from-customer.md", content="hello"), reply("Ok."))
    _, task, _ = await world.run(agent, "write", external_user_id="customer-2")
    assert task.result is not None and task.result.files == ["/agent/from-customer.md"]
    assert (world.layout.agent_files(agent.id) / "from-customer.md").read_text() == "hello"


async def test_sessions_have_their_own_scratch(world: World) -> None:
    world.model.add(
        call("write_file", path="/session/note.md", content="first"),
        reply("One."),
        call("list_files", path="/session"),
        reply("Two."),
    )
    agent = await world.agent()
    first, _, _ = await world.run(agent, "one")
    second, _, _ = await world.run(agent, "two")
    listing = world.tool_outputs(3)[-1].output
    assert listing == "/session/ is empty"
    assert (world.layout.session_files(agent.id, first.id) / "note.md").read_text() == "first"
    assert not (world.layout.session_files(agent.id, second.id) / "note.md").exists()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a killed process not yet reaped is a zombie: not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def test_deleting_an_agent_stops_its_computer(world: World) -> None:
    world.model.add(
        call("shell", command="sleep 60 >/dev/null 2>&1 & echo $! > daemon.pid"),
        reply("Started."),
    )
    agent = await world.agent()
    await world.run(agent, "start a daemon")
    pid = int((world.layout.agent_files(agent.id) / "daemon.pid").read_text())
    sandbox = world.runtime.computers.running(agent.id)
    assert isinstance(sandbox, ProcessSandbox)
    assert (await sandbox.status()).state == "running" and alive(pid)

    await world.runtime.agents.delete(world.principal, agent.id)
    assert world.runtime.computers.running(agent.id) is None
    assert (await sandbox.status()).state == "stopped"
    with anyio.fail_after(5):
        while alive(pid):
            await anyio.sleep(0.02)


async def test_a_computer_that_cannot_start_is_an_error_result(store: Any, tmp_path: Path) -> None:
    async for world in world_with(store, tmp_path, BrokenBackend()):
        world.model.add(
            calls(("shell", {"command": "ls"}), ("read_file", {"path": "a.txt"})), reply("Down.")
        )
        agent = await world.agent()
        _, task, _ = await world.run(agent, "try")
        assert task.status is TaskStatus.COMPLETED
        outputs = world.tool_outputs(1)
        assert [o.is_error for o in outputs] == [True, True]
        assert all(o.output == "the computer cannot start: no loop device left" for o in outputs)
