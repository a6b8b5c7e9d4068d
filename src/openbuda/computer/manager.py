"""The computers of one process: connected on first use, put to sleep when idle.

``Computers`` sits between the services and a ``SandboxBackend``. It keeps one ``Sandbox`` per
agent that has been used here, the time of its last activity, and runs a loop that puts to sleep
every computer idle for longer than its agent's ``sleep_timeout_s`` (a sleeping computer wakes
by itself on the next command, file access or preview).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc

from openbuda.domain.errors import Forbidden
from openbuda.domain.records import Agent, Session
from openbuda.ports import Sandbox, SandboxBackend, SandboxSpec, SandboxStatus, SandboxView

__all__ = ["Computers", "spec_for"]

log = logging.getLogger("openbuda.computer")


def spec_for(agent: Agent) -> SandboxSpec:
    return SandboxSpec(
        space_id=agent.space_id,
        agent_id=agent.id,
        limits=agent.settings.limits,
        network=agent.settings.network,
    )


@dataclass(slots=True)
class _Entry:
    sandbox: Sandbox
    sleep_timeout_s: float
    last_active: float


class Computers:
    def __init__(self, backend: SandboxBackend, *, check_seconds: float = 30.0) -> None:
        self.backend = backend
        self._check_seconds = check_seconds
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self.on_connect: Callable[[Agent, Sandbox], Awaitable[None]] | None = None
        """Awaited after ``get`` connected a computer (started or attached it): Drive's sync
        brings in what changed while it did not run here (``drive.sync``)."""

    def view_for(self, agent: Agent, session: Session | None) -> SandboxView:
        """The view of a session's commands (``None``: a member's console)."""
        if session is None:
            return SandboxView(session_id=None, shared_writable=True)
        external = session.external_user_id is not None
        if external and not self.backend.capabilities.isolated:
            raise Forbidden(
                f"the {self.backend.name!r} computer backend has no isolation and does not run "
                "commands for external users' sessions; install bubblewrap"
            )
        return SandboxView(
            session_id=session.id,
            shared_writable=not external or agent.settings.external_users_can_write,
        )

    async def get(self, agent: Agent) -> Sandbox:
        """The agent's computer, started or attached if needed; counts as activity."""
        entry = self._entries.get(agent.id)
        connected = False
        if entry is None or entry.sandbox.spec != spec_for(agent):
            lock = self._locks.setdefault(agent.id, anyio.Lock())
            async with lock:
                sandbox = await self.backend.connect(spec_for(agent))
                entry = _Entry(sandbox, agent.settings.sleep_timeout_s, time.monotonic())
                self._entries[agent.id] = entry
                connected = True
        entry.sleep_timeout_s = agent.settings.sleep_timeout_s
        entry.last_active = time.monotonic()
        if connected and self.on_connect is not None:
            await self.on_connect(agent, entry.sandbox)
        return entry.sandbox

    def running(self, agent_id: str) -> Sandbox | None:
        """The agent's computer if it was started here (``None``: nothing to stop or freeze)."""
        entry = self._entries.get(agent_id)
        return None if entry is None else entry.sandbox

    def placed(self) -> list[tuple[str, str]]:
        """``(space_id, agent_id)`` of every computer connected here (awake or asleep)."""
        return [(e.sandbox.spec.space_id, agent_id) for agent_id, e in self._entries.items()]

    def touch(self, agent_id: str) -> None:
        entry = self._entries.get(agent_id)
        if entry is not None:
            entry.last_active = time.monotonic()

    async def status(self, agent: Agent) -> SandboxStatus:
        """The computer's status without starting it (``stopped`` when it never ran here)."""
        entry = self._entries.get(agent.id)
        if entry is None:
            return SandboxStatus(state="stopped")
        return await entry.sandbox.status()

    async def forget(self, agent_id: str) -> None:
        """Stop and drop an agent's computer (the agent was deleted)."""
        entry = self._entries.pop(agent_id, None)
        self._locks.pop(agent_id, None)
        if entry is not None:
            with anyio.CancelScope(shield=True):
                await entry.sandbox.destroy()

    async def sleep_idle(self) -> int:
        """Put to sleep every computer idle past its timeout; how many were."""
        now = time.monotonic()
        slept = 0
        for agent_id, entry in list(self._entries.items()):
            if now - entry.last_active < entry.sleep_timeout_s:
                continue
            status = await entry.sandbox.status()
            if status.state == "running":
                try:
                    await entry.sandbox.sleep()
                except Exception:
                    log.exception("could not put the computer of %r to sleep", agent_id)
                    continue
                slept += 1
        return slept

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._check_seconds)
            await self.sleep_idle()

    async def aclose(self) -> None:
        self._entries.clear()
        with anyio.CancelScope(shield=True):
            await self.backend.aclose()
