"""The ``process`` backend: commands run as plain host processes, for development only.

Nothing is isolated: a command sees the host's files, network and processes as the server's
user. ``/agent``, ``/space``, ``/session`` and ``/tmp`` exist as host directories (the file API
and the working directory use them; absolute sandbox paths inside a command do not work). Sleep
stops the computer's process groups with ``SIGSTOP``; restart kills them and clears ``/tmp``.
The server refuses this backend for sessions of external users.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Final, Literal

import anyio
import anyio.abc
import anyio.to_thread

from openbuda.computer._capture import OutputCapture
from openbuda.computer._files import HostFiles
from openbuda.computer._hostfs import HostRoot
from openbuda.computer._layout import ComputerLayout
from openbuda.computer._paths import Mount, parse_path
from openbuda.computer._portstream import SocketPortStream
from openbuda.computer._procfs import (
    CpuRate,
    cpu_seconds,
    listening_ports,
    processes_in_group,
    rss_bytes,
    socket_inodes,
)
from openbuda.computer._working import HostWorkingCopy
from openbuda.domain.errors import InvalidPath, Unavailable
from openbuda.ports import (
    ExecRequest,
    ExecResult,
    OutputCallback,
    OutputStream,
    PortStream,
    SandboxCapabilities,
    SandboxFiles,
    SandboxSpec,
    SandboxState,
    SandboxStatus,
    SandboxView,
)

__all__ = ["ProcessBackend", "ProcessSandbox"]

WARNING: Final = (
    "the 'process' computer backend runs agents' commands as plain host processes with NO "
    "isolation: use it for development only (install bubblewrap for the real sandbox)"
)
_DRAIN_SECONDS: Final = 0.05
"""After a command exits, how long its output pipes are read for what background children
still hold open before they are closed."""


class ProcessSandbox:
    def __init__(self, spec: SandboxSpec, layout: ComputerLayout) -> None:
        self._spec = spec
        self._layout = layout
        self._state: SandboxState = "running"
        self._groups: set[int] = set()
        self._cpu_rate = CpuRate()
        self._tmp = layout.run_dir(spec.agent_id) / "tmp"
        for path in (self._agent_dir, self._space_dir, self._tmp):
            path.mkdir(parents=True, exist_ok=True)

    @property
    def spec(self) -> SandboxSpec:
        return self._spec

    @property
    def state(self) -> SandboxState:
        return self._state

    def respec(self, spec: SandboxSpec) -> None:
        """Limits apply from the next command on (nothing here needs a restart)."""
        self._spec = spec

    @property
    def _agent_dir(self) -> Path:
        return self._layout.agent_files(self._spec.agent_id)

    @property
    def _space_dir(self) -> Path:
        return self._layout.space_files(self._spec.space_id)

    def _host_dir(self, mount: Mount, view: SandboxView) -> Path | None:
        if mount == "agent":
            return self._agent_dir
        if mount == "space":
            return self._space_dir
        if mount == "tmp":
            return self._tmp / (view.session_id or "console")
        if view.session_id is None:
            return None
        return self._layout.session_files(self._spec.agent_id, view.session_id)

    def _make_scratch(self, view: SandboxView) -> None:
        """The view's ``/session`` and ``/tmp`` exist from its first use on."""
        for mount in ("session", "tmp"):
            directory = self._host_dir(mount, view)
            if directory is not None:
                directory.mkdir(parents=True, exist_ok=True)

    def files(self, view: SandboxView) -> SandboxFiles:
        self._make_scratch(view)

        def root(mount: Mount) -> HostRoot | None:
            directory = self._host_dir(mount, view)
            return None if directory is None else HostRoot(directory, f"/{mount}")

        return HostFiles(root, view, before=self.wake)

    async def working_copy(self, mount: Literal["agent", "space"]) -> HostWorkingCopy:
        await self.wake()
        root = HostRoot(self._agent_dir if mount == "agent" else self._space_dir, f"/{mount}")
        return await anyio.to_thread.run_sync(HostWorkingCopy.pinned, root)

    def _live_groups(self) -> set[int]:
        live = {pgid for pgid in self._groups if _group_alive(pgid)}
        self._groups = live
        return live

    async def exec(
        self, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> ExecResult:
        await self.wake()
        view = request.view
        cwd_path = parse_path(request.cwd or "/agent")
        cwd_root = self._host_dir(cwd_path.mount, view)
        if cwd_root is None:
            raise InvalidPath(f"{str(cwd_path)!r} is not available here")
        cwd = cwd_root.joinpath(*cwd_path.parts)
        self._make_scratch(view)
        if not cwd.is_dir():
            raise InvalidPath(
                f"{str(cwd_path)!r} is not a directory", details={"path": str(cwd_path)}
            )
        tmp = self._host_dir("tmp", view)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),  # noqa: TID251 - the dev backend runs on the host
            "HOME": str(self._agent_dir),
            "LANG": "C.UTF-8",
            "TMPDIR": str(tmp),
            "OPENBUDA_AGENT_DIR": str(self._agent_dir),
            **request.env,
        }
        timeout = request.timeout_s or self._spec.limits.exec_timeout_s
        capture = OutputCapture(request.capture_bytes, on_output)
        started = time.monotonic()
        timed_out = False
        process = await anyio.open_process(
            ["bash", "-c", request.command],
            cwd=cwd,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        self._groups.add(process.pid)

        drained = {"stdout": anyio.Event(), "stderr": anyio.Event()}

        async def pump(name: OutputStream, stream: anyio.abc.ByteReceiveStream | None) -> None:
            try:
                if stream is None:
                    return
                with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
                    async for chunk in stream:
                        await capture.feed(name, chunk)
            finally:
                drained[name].set()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(pump, "stdout", process.stdout)
                group.start_soon(pump, "stderr", process.stderr)
                with anyio.move_on_after(timeout) as scope:
                    await process.wait()
                if scope.cancelled_caught:
                    timed_out = True
                    _kill_group(process.pid)
                    await process.wait()
                with anyio.move_on_after(_DRAIN_SECONDS):  # only background children wait
                    for event in drained.values():
                        await event.wait()
                group.cancel_scope.cancel()
        finally:
            if process.returncode is None:  # the caller gave up (cancelled): so does the command
                _kill_group(process.pid)
            with anyio.CancelScope(shield=True):
                await process.aclose()
        await capture.flush()
        code = process.returncode if process.returncode is not None else 137
        if code < 0:
            code = 128 - code
        return ExecResult(
            exit_code=137 if timed_out else code,
            stdout=capture.text("stdout"),
            stderr=capture.text("stderr"),
            timed_out=timed_out,
            duration_ms=int((time.monotonic() - started) * 1000),
            limit="timeout"
            if timed_out
            else ("file_size" if code == 128 + signal.SIGXFSZ else None),
            stdout_bytes=capture.total("stdout"),
            stderr_bytes=capture.total("stderr"),
        )

    async def connect_port(self, port: int) -> PortStream:
        await self.wake()
        try:
            return SocketPortStream(await anyio.connect_tcp("127.0.0.1", port))
        except OSError:
            raise Unavailable(f"nothing listens on port {port} in the computer") from None

    async def status(self) -> SandboxStatus:
        return await anyio.to_thread.run_sync(self._status)

    def _status(self) -> SandboxStatus:
        pids = processes_in_group(self._live_groups())
        disk, count = HostRoot(self._agent_dir, "/agent").usage()
        return SandboxStatus(
            state=self._state,
            cpu_percent=self._cpu_rate.percent(cpu_seconds(pids)),
            memory_bytes=rss_bytes(pids),
            disk_bytes=disk,
            file_count=count,
            ports=listening_ports(inodes=socket_inodes(pids)) if pids else (),
        )

    async def sleep(self) -> None:
        if self._state == "running":
            for pgid in self._live_groups():
                _signal_group(pgid, signal.SIGSTOP)
            self._state = "sleeping"

    async def wake(self) -> None:
        if self._state == "sleeping":
            for pgid in self._live_groups():
                _signal_group(pgid, signal.SIGCONT)
        self._state = "running"

    async def restart(self) -> None:
        for pgid in self._live_groups():
            _kill_group(pgid)
        self._groups.clear()
        await anyio.to_thread.run_sync(_clear, self._tmp)
        self._state = "running"

    async def destroy(self) -> None:
        await self.restart()
        self._state = "stopped"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_group(pgid: int) -> None:
    _signal_group(pgid, signal.SIGCONT)
    _signal_group(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _clear(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


class ProcessBackend:
    """Computers as host processes: no isolation, for development only."""

    def __init__(self, layout: ComputerLayout) -> None:
        self._layout = layout
        self._sandboxes: dict[str, ProcessSandbox] = {}

    @property
    def name(self) -> str:
        return "process"

    @property
    def capabilities(self) -> SandboxCapabilities:
        return SandboxCapabilities(isolated=False, freeze=False, internet=True, disk_quota=False)

    async def connect(self, spec: SandboxSpec) -> ProcessSandbox:
        sandbox = self._sandboxes.get(spec.agent_id)
        if sandbox is None:
            sandbox = ProcessSandbox(spec, self._layout)
            self._sandboxes[spec.agent_id] = sandbox
        else:
            sandbox.respec(spec)
        return sandbox

    async def aclose(self) -> None:
        for sandbox in list(self._sandboxes.values()):
            await sandbox.destroy()
        self._sandboxes.clear()
