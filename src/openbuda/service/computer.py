"""Members at an agent's computer: status, commands, sleep, wake, restart and previews.

Every call is scoped by the principal's space (another space's agent is ``NotFound``) and open to
any member: the computer is the agent's workspace, and members are who it works for. Commands
run in the members' console view (no ``/session``; ``/agent`` and ``/space`` writable).

Previews reach a server the agent runs on a port of its computer. A browser cannot send an API
key with a link, so a member asks for a *signed preview link*: a token carrying the space and an
expiry, with an HMAC-SHA256 over (space, agent, port, expiry) under the server's secret key
(``Settings.secret_key``). It opens that one port of that one agent until it expires (15 minutes
by default, at most 24 hours); it is checked without touching the store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

import anyio
import anyio.to_thread

from openbuda.computer._paths import parse_path
from openbuda.computer.manager import Computers
from openbuda.domain.errors import (
    InvalidPath,
    NotFound,
    OpenbudaError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent
from openbuda.engine.tools import FilesChanged
from openbuda.ports import (
    ExecRequest,
    ExecResult,
    OutputCallback,
    PortStream,
    Sandbox,
    SandboxStatus,
    SandboxView,
)
from openbuda.service.deps import ServiceDeps

__all__ = [
    "DEFAULT_LINK_SECONDS",
    "MAX_COMMAND_CHARS",
    "MAX_EXEC_TIMEOUT_S",
    "MAX_LINK_SECONDS",
    "ComputerService",
    "ComputerStatus",
    "ConsoleSync",
    "NothingListens",
    "PreparedExec",
    "PreviewGrant",
    "PreviewLink",
]

DEFAULT_LINK_SECONDS: Final = 15 * 60
MAX_LINK_SECONDS: Final = 24 * 3600
MAX_COMMAND_CHARS: Final = 100_000
MAX_EXEC_TIMEOUT_S: Final = 86_400
"""A member's command may ask for up to this timeout (the agent's ``exec_timeout_s`` is the
default)."""
CONSOLE: Final = SandboxView(session_id=None, shared_writable=True)


class NothingListens(Unavailable):
    """No server listens on the port of a preview (the computer itself is up)."""


@dataclass(frozen=True, slots=True)
class ComputerStatus:
    status: SandboxStatus
    sleep_timeout_s: int


@dataclass(frozen=True, slots=True)
class PreviewLink:
    agent_id: str
    port: int
    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PreviewGrant:
    """What a valid signed link allows: one port of one agent, until ``expires_at``."""

    space_id: str
    agent_id: str
    port: int
    expires_at: datetime


class ConsoleSync(Protocol):
    """Drive's working-copy sync around a member's console command (``drive.sync``)."""

    async def pull(self, agent: Agent) -> None:
        """Bring Drive writes made elsewhere into the computer's files."""
        ...

    async def sync_member(self, agent: Agent, member_id: str) -> FilesChanged:
        """Turn what the command changed into versions by the member."""
        ...


@dataclass(frozen=True, slots=True)
class PreparedExec:
    """A member's command, checked and with its computer started: ``run`` runs it (and, with
    Drive, syncs the working copies around it)."""

    sandbox: Sandbox
    request: ExecRequest
    agent: Agent | None = None
    member_id: str | None = None
    sync: ConsoleSync | None = None

    async def run(self, on_output: OutputCallback | None = None) -> ExecResult:
        if self.sync is None or self.agent is None or self.member_id is None:
            return await self.sandbox.exec(self.request, on_output)
        await self.sync.pull(self.agent)
        try:
            return await self.sandbox.exec(self.request, on_output)
        finally:
            with anyio.CancelScope(shield=True):
                await self.sync.sync_member(self.agent, self.member_id)


def _check_port(port: int) -> int:
    if not 1 <= port <= 65_535:
        raise ValidationFailed(f"port must be 1-65535, got {port}", details={"field": "port"})
    return port


class ComputerService:
    def __init__(
        self,
        deps: ServiceDeps,
        computers: Computers,
        secret_key: Callable[[], bytes],
        console_sync: ConsoleSync | None = None,
    ) -> None:
        self._deps = deps
        self._computers = computers
        self._secret_key = secret_key
        self._key: bytes | None = None
        self.console_sync = console_sync
        """Drive's sync around members' commands (set by the runtime)."""

    # -- the computer ------------------------------------------------------------------------

    async def _agent(self, space_id: str, agent_id: str) -> Agent:
        async with self._deps.store.read() as tx:
            agent = await tx.get_agent(space_id, agent_id)
        if agent is None:
            raise NotFound.of("agent", agent_id)
        return agent

    async def _sandbox(self, agent: Agent) -> Sandbox:
        """The agent's computer, started if needed (``Unavailable`` when it cannot start)."""
        try:
            return await self._computers.get(agent)
        except OpenbudaError:
            raise
        except Exception as error:
            raise Unavailable(
                f"the computer of agent {agent.id!r} cannot start: {error}",
                details={"agent_id": agent.id},
            ) from error

    async def _status(self, agent: Agent) -> ComputerStatus:
        status = await self._computers.status(agent)
        return ComputerStatus(status, agent.settings.sleep_timeout_s)

    async def status(self, principal: Principal, agent_id: str) -> ComputerStatus:
        """The computer's state and use; a computer not started here is ``stopped``."""
        return await self._status(await self._agent(principal.space_id, agent_id))

    async def wake(self, principal: Principal, agent_id: str) -> ComputerStatus:
        """Start the computer, or thaw it when it sleeps."""
        agent = await self._agent(principal.space_id, agent_id)
        sandbox = await self._sandbox(agent)
        await sandbox.wake()
        return await self._status(agent)

    async def sleep(self, principal: Principal, agent_id: str) -> ComputerStatus:
        """Put the computer to sleep now (a stopped one stays stopped)."""
        agent = await self._agent(principal.space_id, agent_id)
        sandbox = self._computers.running(agent.id)
        if sandbox is not None:
            await sandbox.sleep()
        return await self._status(agent)

    async def restart(self, principal: Principal, agent_id: str) -> ComputerStatus:
        """Kill every process and clear ``/tmp`` (``/agent`` stays); starts a stopped one."""
        agent = await self._agent(principal.space_id, agent_id)
        sandbox = await self._sandbox(agent)
        await sandbox.restart()
        return await self._status(agent)

    async def prepare_exec(
        self,
        principal: Principal,
        agent_id: str,
        command: str,
        *,
        cwd: str | None = None,
        timeout_s: float | None = None,
    ) -> PreparedExec:
        """Check a member's command and start the computer, before anything runs (so that
        a stream starts only once every error that has a status of its own is ruled out)."""
        if not command.strip():
            raise ValidationFailed("the command is empty", details={"field": "command"})
        if len(command) > MAX_COMMAND_CHARS or "\x00" in command:
            raise ValidationFailed(
                f"a command is at most {MAX_COMMAND_CHARS} characters, without NUL",
                details={"field": "command"},
            )
        if timeout_s is not None and not 0 < timeout_s <= MAX_EXEC_TIMEOUT_S:
            raise ValidationFailed(
                f"timeout_s must be above 0 and at most {MAX_EXEC_TIMEOUT_S}",
                details={"field": "timeout_s"},
            )
        if cwd is not None:
            cwd = str(parse_path(cwd))
        agent = await self._agent(principal.space_id, agent_id)
        sandbox = await self._sandbox(agent)
        if cwd is not None:
            entry = await sandbox.files(CONSOLE).stat(cwd)
            if entry is None or entry.kind != "dir":
                what = "does not exist" if entry is None else "is not a directory"
                raise InvalidPath(f"{cwd!r} {what}", details={"path": cwd})
        request = ExecRequest(command, view=CONSOLE, cwd=cwd, timeout_s=timeout_s)
        return PreparedExec(sandbox, request, agent, principal.member_id, self.console_sync)

    async def exec(
        self,
        principal: Principal,
        agent_id: str,
        command: str,
        *,
        cwd: str | None = None,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        """Run ``command`` (``bash -c``) in the computer; ``on_output`` gets the output live.

        The result comes whenever the command ran, also when a limit killed it or it timed out.
        """
        prepared = await self.prepare_exec(
            principal, agent_id, command, cwd=cwd, timeout_s=timeout_s
        )
        return await prepared.run(on_output)

    async def open_port(
        self, access: Principal | PreviewGrant, agent_id: str, port: int
    ) -> PortStream:
        """A byte stream to ``port`` in the computer; ``NothingListens`` when nothing listens
        there, ``Unavailable`` when the computer cannot start."""
        _check_port(port)
        if isinstance(access, PreviewGrant) and (
            access.agent_id != agent_id or access.port != port
        ):
            raise Unauthorized("this preview link is for another agent or port")
        agent = await self._agent(access.space_id, agent_id)
        sandbox = await self._sandbox(agent)
        try:
            return await sandbox.connect_port(port)
        except Unavailable as error:
            raise NothingListens(error.message, details={"port": port}) from None

    # -- signed preview links ----------------------------------------------------------------

    async def _signing_key(self) -> bytes:
        if self._key is None:
            self._key = await anyio.to_thread.run_sync(self._secret_key)
        return self._key

    async def _signature(self, space_id: str, agent_id: str, port: int, expires: int) -> str:
        message = f"openbuda-preview\x00{space_id}\x00{agent_id}\x00{port}\x00{expires}"
        digest = hmac.new(await self._signing_key(), message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    async def preview_link(
        self,
        principal: Principal,
        agent_id: str,
        port: int,
        *,
        expires_in_s: int = DEFAULT_LINK_SECONDS,
    ) -> PreviewLink:
        """A token that opens ``port`` of the agent's computer without an API key."""
        _check_port(port)
        if not 1 <= expires_in_s <= MAX_LINK_SECONDS:
            raise ValidationFailed(
                f"expires_in_s must be 1-{MAX_LINK_SECONDS}", details={"field": "expires_in_s"}
            )
        agent = await self._agent(principal.space_id, agent_id)
        expires = math.ceil(self._deps.clock.now().timestamp()) + expires_in_s
        return await self._link(agent.space_id, agent.id, port, expires)

    async def _link(self, space_id: str, agent_id: str, port: int, expires: int) -> PreviewLink:
        signature = await self._signature(space_id, agent_id, port, expires)
        return PreviewLink(
            agent_id,
            port,
            f"{space_id}.{expires}.{signature}",
            datetime.fromtimestamp(expires, UTC),
        )

    async def check_preview(self, agent_id: str, port: int, token: str) -> PreviewGrant:
        """The grant of a valid token for this agent and port; ``Unauthorized`` otherwise."""
        invalid = Unauthorized("the preview link is invalid or was made for another page")
        parts = token.split(".")
        if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
            raise invalid
        space_id, expires_text, signature = parts
        if len(expires_text) > 11:  # past the year 5000: never one of ours
            raise invalid
        expires = int(expires_text)
        expected = await self._signature(space_id, agent_id, port, expires)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise invalid
        expires_at = datetime.fromtimestamp(expires, UTC)
        if self._deps.clock.now() >= expires_at:
            raise Unauthorized(
                "the preview link expired: ask for a new one",
                details={"expired_at": expires_at.isoformat()},
            )
        return PreviewGrant(space_id, agent_id, port, expires_at)
