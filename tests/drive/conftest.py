"""Fixtures of the working-copy sync tests: a space with an agent and a session in a real store,
local blobs, and the agent's computer running on a real backend (``process``, or ``bwrap``
where isolation matters and it can run here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from openbuda.clock import SystemClock
from openbuda.computer import ComputerLayout, Computers, ProcessBackend
from openbuda.domain.drive import DriveRef, DriveVersion
from openbuda.domain.records import Agent, AgentSettings, Role, Session
from openbuda.drive.blobs import LocalBlobStore
from openbuda.drive.sync import DriveSync
from openbuda.engine.broadcaster import InProcessBroadcaster
from openbuda.engine.tools import FilesChanged, ToolContext
from openbuda.ports import (
    ExecRequest,
    ExecResult,
    NewAgent,
    NewSession,
    Sandbox,
    SandboxBackend,
    SandboxView,
    Store,
)
from openbuda.service.deps import ServiceDeps
from openbuda.service.drive import DriveLimits, DriveService, iterate_bytes
from tests.conformance.sandbox_backends import bwrap_backend, opened

__all__ = ["SyncWorld", "make_world"]


@dataclass
class SyncWorld:
    """One agent, its session and its running computer, with a ``DriveSync`` over them."""

    store: Store
    drive: DriveService
    computers: Computers
    sync: DriveSync
    agent: Agent
    session: Session
    member_id: str
    computer_dir: Path

    @property
    def ref(self) -> DriveRef:
        return DriveRef(self.agent.space_id, self.agent.id)

    @property
    def space_ref(self) -> DriveRef:
        return DriveRef(self.agent.space_id)

    @property
    def agent_dir(self) -> Path:
        return ComputerLayout(self.computer_dir).agent_files(self.agent.id)

    def context(self, task_id: str = "tsk_1", session: Session | None = None) -> ToolContext:
        return ToolContext(self.agent, session or self.session, task_id, "call_1")

    async def sandbox(self) -> Sandbox:
        return await self.computers.get(self.agent)

    async def run(self, command: str, *, cwd: str | None = None) -> ExecResult:
        sandbox = await self.sandbox()
        request = ExecRequest(command, SandboxView(self.session.id), cwd=cwd, timeout_s=60)
        result = await sandbox.exec(request)
        assert result.exit_code == 0, result.stderr
        return result

    async def tool_call(self, command: str, task_id: str = "tsk_1") -> FilesChanged:
        """What the engine does around a shell tool call: before, the command, after."""
        await self.sync.before_tool(self.context(task_id))
        await self.run(command)
        return await self.sync.after_tool(self.context(task_id))

    async def api_write(self, path: str, data: bytes, ref: DriveRef | None = None) -> None:
        from openbuda.domain.drive import Actor

        actor = Actor(member_id=self.member_id)
        await self.drive.write(ref or self.ref, path, iterate_bytes(data), actor)

    async def history(self, path: str, ref: DriveRef | None = None) -> list[DriveVersion]:
        return await self.drive.history(ref or self.ref, path)

    async def content(self, version: DriveVersion) -> bytes:
        assert version.sha256 is not None
        return await self.drive.blobs.read(version.sha256)

    async def live(self, ref: DriveRef | None = None) -> dict[str, bytes]:
        """The Drive's live files and their content."""
        files = {}
        for entry in await self.drive.list(ref or self.ref, recursive=True):
            files[entry.path] = (await self.drive.read(ref or self.ref, entry.path))[1]
        return files

    def local(self) -> dict[str, bytes]:
        """The files of ``/agent`` on the host (blocking; small trees only)."""
        found: dict[str, bytes] = {}
        for path in sorted(self.agent_dir.rglob("*")):
            if path.is_file() and not path.is_symlink():
                found[path.relative_to(self.agent_dir).as_posix()] = path.read_bytes()
        return found


@pytest.fixture
def limits() -> DriveLimits:
    return DriveLimits()


async def make_world(
    store: Store, backend: SandboxBackend, tmp_path: Path, limits: DriveLimits, **settings: Any
) -> SyncWorld:
    now = datetime.now(UTC)
    async with store.write() as tx:
        space = await tx.create_space("space", now)
        member = await tx.create_member(space.id, "owner", Role.OWNER, now)
        agent = await tx.create_agent(
            NewAgent(space.id, "helper", settings=AgentSettings(**settings)), now
        )
        session = await tx.create_session(NewSession(space.id, agent.id), now)
    deps = ServiceDeps(store, SystemClock(), InProcessBroadcaster())
    blobs = await anyio.to_thread.run_sync(LocalBlobStore, tmp_path / "blobs")
    drive = DriveService(deps, blobs, limits)
    computers = Computers(backend)
    computer_dir = tmp_path / "computers"
    sync = DriveSync(drive, computers, computer_dir)
    computers.on_connect = sync.connected
    world = SyncWorld(
        store,
        drive,
        computers,
        sync,
        agent,
        session,
        member.id,
        computer_dir,
    )
    await world.sandbox()
    return world


@pytest.fixture
async def world(store: Store, tmp_path: Path, limits: DriveLimits) -> AsyncIterator[SyncWorld]:
    """The agent's computer on the ``process`` backend."""
    async with opened(ProcessBackend(ComputerLayout(tmp_path / "computers"))) as backend:
        yield await make_world(store, backend, tmp_path, limits)


@pytest.fixture(params=["process", "bwrap"])
async def any_world(
    request: pytest.FixtureRequest, store: Store, tmp_path: Path, limits: DriveLimits
) -> AsyncIterator[SyncWorld]:
    """The agent's computer on each backend (``bwrap`` skipped where it cannot run)."""
    if request.param == "bwrap":
        backend = bwrap_backend(tmp_path)
    else:
        backend = ProcessBackend(ComputerLayout(tmp_path / "computers"))
    async with opened(backend):
        yield await make_world(store, backend, tmp_path, limits)
