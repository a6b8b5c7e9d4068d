"""``ComputerService`` over the process backend: status, exec, sleep/wake/restart, previews and
signed links, scoped by the principal's space."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from openbuda.computer import ComputerLayout, ProcessBackend
from openbuda.domain.errors import (
    InvalidPath,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent, AgentSettings, Role
from openbuda.ports import OutputStream, Store
from openbuda.runtime import LazyBackend, Runtime
from openbuda.service.computer import NothingListens, PreviewGrant
from openbuda.settings import Settings
from openbuda.testing import FakeClock
from tests.client.live_server import free_port
from tests.harness import engine_settings, make_principal

pytestmark = pytest.mark.anyio


@dataclass
class World:
    runtime: Runtime
    principal: Principal
    clock: FakeClock
    layout: ComputerLayout

    async def agent(self, **settings: Any) -> Agent:
        return await self.runtime.agents.create(
            self.principal, name="box", settings=AgentSettings(**settings)
        )


@asynccontextmanager
async def start(store: Store, settings: Settings, principal: Principal) -> AsyncGenerator[World]:
    clock = FakeClock(auto_advance=False)
    layout = ComputerLayout(settings.resolved_computer_dir())
    async with Runtime.start(
        settings, store=store, clock=clock, sandbox=ProcessBackend(layout), run_engine=False
    ) as runtime:
        yield World(runtime, principal, clock, layout)


@pytest.fixture
async def world(store: Store, tmp_path: Path) -> AsyncIterator[World]:
    principal = await make_principal(store)
    async with start(store, engine_settings(tmp_path), principal) as running:
        yield running


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


async def test_a_computer_never_started_is_stopped(world: World) -> None:
    agent = await world.agent(sleep_timeout_s=600)
    computer = await world.runtime.computer.status(world.principal, agent.id)
    assert computer.status.state == "stopped" and computer.sleep_timeout_s == 600
    assert world.runtime.computers.running(agent.id) is None
    slept = await world.runtime.computer.sleep(world.principal, agent.id)
    assert slept.status.state == "stopped"  # sleeping does not start it


async def test_exec_streams_output_and_reports_the_ending(world: World) -> None:
    agent = await world.agent()
    computer = world.runtime.computer
    seen: list[tuple[OutputStream, str]] = []

    async def on_output(stream: OutputStream, text: str) -> None:
        seen.append((stream, text))

    result = await computer.exec(
        world.principal, agent.id, "echo out; echo err >&2; exit 4", on_output=on_output
    )
    assert (result.exit_code, result.stdout, result.stderr) == (4, "out\n", "err\n")
    assert sorted(seen) == [("stderr", "err\n"), ("stdout", "out\n")]
    assert not result.timed_out and result.limit is None

    await computer.exec(world.principal, agent.id, "mkdir -p work/deep")
    here = await computer.exec(world.principal, agent.id, "pwd", cwd="/agent/work/deep")
    assert here.stdout.strip() == str(world.layout.agent_files(agent.id) / "work" / "deep")

    slow = await computer.exec(world.principal, agent.id, "sleep 20", timeout_s=0.3)
    assert slow.timed_out and slow.limit == "timeout" and slow.exit_code == 137
    assert slow.duration_ms < 10_000


async def test_exec_refuses_bad_requests_before_running(world: World) -> None:
    agent = await world.agent()
    computer = world.runtime.computer
    with pytest.raises(ValidationFailed, match="empty"):
        await computer.exec(world.principal, agent.id, "   ")
    with pytest.raises(ValidationFailed, match="timeout_s"):
        await computer.exec(world.principal, agent.id, "true", timeout_s=0)
    with pytest.raises(InvalidPath, match="does not exist"):
        await computer.exec(world.principal, agent.id, "true", cwd="/agent/nowhere")
    with pytest.raises(InvalidPath, match="outside the computer"):
        await computer.exec(world.principal, agent.id, "true", cwd="/etc")
    with pytest.raises(InvalidPath, match="only sessions have a /session"):
        await computer.exec(world.principal, agent.id, "true", cwd="/session")
    (world.layout.agent_files(agent.id) / "file.txt").write_text("x")
    with pytest.raises(InvalidPath, match="is not a directory"):
        await computer.exec(world.principal, agent.id, "true", cwd="file.txt")


async def test_a_background_server_sleeps_wakes_and_dies_on_restart(world: World) -> None:
    agent = await world.agent()
    computer = world.runtime.computer
    port = free_port()
    started = await computer.exec(
        world.principal,
        agent.id,
        f"python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 & echo $!; "
        "echo temp > $TMPDIR/scratch; echo kept > kept.txt",
    )
    pid = int(started.stdout)
    with anyio.fail_after(10):
        while port not in (await computer.status(world.principal, agent.id)).status.ports:
            await anyio.sleep(0.05)
    running = await computer.status(world.principal, agent.id)
    assert running.status.state == "running" and running.status.memory_bytes > 0
    assert running.status.file_count == 1 and running.status.disk_bytes >= 5  # in blocks

    slept = await computer.sleep(world.principal, agent.id)
    assert slept.status.state == "sleeping" and process_state(pid) == "T"
    woken = await computer.wake(world.principal, agent.id)
    assert woken.status.state == "running" and process_state(pid) in ("S", "R")

    await computer.sleep(world.principal, agent.id)
    stream = await computer.open_port(world.principal, agent.id, port)  # wakes it by itself
    assert process_state(pid) in ("S", "R")
    await stream.send(b"GET / HTTP/1.0\r\n\r\n")
    assert (await stream.receive()).startswith(b"HTTP/1.0 200")
    await stream.aclose()

    restarted = await computer.restart(world.principal, agent.id)
    assert restarted.status.state == "running"
    with anyio.fail_after(5):
        while process_state(pid) not in (None, "Z"):
            await anyio.sleep(0.02)
    with pytest.raises(NothingListens, match=f"port {port}"):
        await computer.open_port(world.principal, agent.id, port)
    after = await computer.exec(world.principal, agent.id, "ls $TMPDIR; cat kept.txt")
    assert after.stdout == "kept\n"  # /tmp cleared, /agent kept


async def test_another_spaces_agent_is_not_found(world: World, store: Store) -> None:
    agent = await world.agent()
    stranger = await make_principal(store, "elsewhere", role=Role.MEMBER)
    computer = world.runtime.computer
    for attempt in (
        computer.status(stranger, agent.id),
        computer.exec(stranger, agent.id, "true"),
        computer.wake(stranger, agent.id),
        computer.sleep(stranger, agent.id),
        computer.restart(stranger, agent.id),
        computer.open_port(stranger, agent.id, 8000),
        computer.preview_link(stranger, agent.id, 8000),
    ):
        with pytest.raises(NotFound):
            await attempt
    assert world.runtime.computers.running(agent.id) is None  # nothing was started


async def test_members_use_the_computer(world: World, store: Store) -> None:
    agent = await world.agent()
    member = Principal(world.principal.space_id, "mbr_someone", Role.MEMBER)
    result = await world.runtime.computer.exec(member, agent.id, "echo hi")
    assert result.stdout == "hi\n"


async def test_signed_preview_links(world: World) -> None:
    agent = await world.agent()
    other = await world.agent()
    computer = world.runtime.computer
    link = await computer.preview_link(world.principal, agent.id, 8000)
    assert link.expires_at - world.clock.now() <= timedelta(minutes=15)
    assert link.expires_at - world.clock.now() > timedelta(minutes=14)

    grant = await computer.check_preview(agent.id, 8000, link.token)
    assert grant == PreviewGrant(world.principal.space_id, agent.id, 8000, link.expires_at)
    for agent_id, port, token in (
        (agent.id, 8001, link.token),  # another port
        (other.id, 8000, link.token),  # another agent
        (agent.id, 8000, link.token[:-2] + ("AA" if link.token[-2:] != "AA" else "BB")),
        (agent.id, 8000, link.token.replace(".", ".9", 1)),  # a later expiry
        (agent.id, 8000, "spc_x.1.abc"),
        (agent.id, 8000, "garbage"),
    ):
        with pytest.raises(Unauthorized, match="invalid"):
            await computer.check_preview(agent_id, port, token)
    with pytest.raises(Unauthorized, match="another agent or port"):
        await computer.open_port(grant, agent.id, 8001)

    world.clock.advance(15 * 60 + 1)
    with pytest.raises(Unauthorized, match="expired"):
        await computer.check_preview(agent.id, 8000, link.token)

    day = await computer.preview_link(world.principal, agent.id, 8000, expires_in_s=24 * 3600)
    assert day.expires_at - world.clock.now() == timedelta(hours=24)
    for wrong in (0, 24 * 3600 + 1):
        with pytest.raises(ValidationFailed, match="expires_in_s"):
            await computer.preview_link(world.principal, agent.id, 8000, expires_in_s=wrong)
    with pytest.raises(ValidationFailed, match="port"):
        await computer.preview_link(world.principal, agent.id, 70_000)


async def test_the_signing_key_is_made_once_and_kept(store: Store, tmp_path: Path) -> None:
    principal = await make_principal(store)
    settings = engine_settings(tmp_path)
    async with start(store, settings, principal) as first:
        agent = await first.agent()
        link = await first.runtime.computer.preview_link(principal, agent.id, 3000)
    key = tmp_path / "secret.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and len(key.read_text().strip()) >= 32

    async with start(store, settings, principal) as again:  # a restart: the link still opens
        assert (await again.runtime.computer.check_preview(agent.id, 3000, link.token)).port == 3000

    other = engine_settings(tmp_path / "other", secret_key="a-configured-key-of-some-length")
    async with start(store, other, principal) as elsewhere:
        with pytest.raises(Unauthorized):
            await elsewhere.runtime.computer.check_preview(agent.id, 3000, link.token)
    assert not (tmp_path / "other" / "secret.key").exists()


async def test_the_backend_opens_on_first_use(store: Store, tmp_path: Path) -> None:
    principal = await make_principal(store)
    settings = engine_settings(tmp_path, computer_backend="process")
    async with Runtime.start(settings, store=store, run_engine=False) as runtime:
        backend = runtime.computers.backend
        assert isinstance(backend, LazyBackend) and not backend.opened
        agent = await runtime.agents.create(principal, name="box")
        assert (await runtime.computer.status(principal, agent.id)).status.state == "stopped"
        assert not backend.opened  # a process that never runs a command never opens it
        result = await runtime.computer.exec(principal, agent.id, "echo $OPENBUDA_AGENT_DIR")
        assert backend.opened and backend.name == "process"
        assert result.stdout.strip() == str(tmp_path / "computers" / "agents" / agent.id / "agent")
