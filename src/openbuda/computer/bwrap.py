"""The bubblewrap backend: one isolated, long-lived sandbox per agent (ARCHITECTURE §6).

A computer is one ``bwrap`` process tree started once (``_bwrap_launch`` builds the command)
running the daemon of ``_sandbox_init`` as its PID 2; an exec is one unix-socket round trip to
that daemon plus a fork inside, so background processes stay between commands. Sessions run in
PID and mount namespaces of their own inside it (see ``_sandbox_init``).

- **Host uid.** Never host root: a root server runs each agent's sandbox as the agent's own
  uid; a non-root server as itself (``_bwrap_launch``).
- **Limits.** A cgroup per computer (``_cgroups``: memory, pids, cpu; the ``bwrap`` process is
  attached before it runs). Without cgroups (not root on cgroup v1) the computer runs anyway
  with rlimits only (file size, open files, and processes per uid when root), a loud warning
  is logged, and sleep stops the processes with ``SIGSTOP`` instead of freezing them. A result
  names the limit that ended or failed its command: ``timeout``; ``file_size`` (it exited
  ``128 + SIGXFSZ``); ``memory`` / ``pids`` (the cgroup's OOM-kill / refused-fork counter
  rose while it ran, whatever its exit status); ``tmp`` (it failed with the ``/tmp`` tmpfs
  full); ``disk`` (``loop``: it failed with the ``/agent`` image full; ``check``: ``/agent``
  holds more than ``limits.disk_mb``).
- **Disk.** ``computer_disk_quota``: ``loop`` mounts ``<agent home>/disk.img`` (ext4 of
  ``limits.disk_mb``, ``_disk``) on the agent's directory before the sandbox starts (existing
  files are moved in); ``check`` measures ``/agent`` after each command; ``auto`` is ``loop``
  when root with loop devices.
- **Network.** ``none``: only loopback. ``internet``: slirp4netns on the sandbox's own network
  namespace (``_network``) and, once per backend, the host filter keeping sandbox uids off the
  host's loopback and private ranges (a loud warning when it cannot be installed).
- **Crash survival.** ``bwrap`` runs in its own session without ``--die-with-parent``; its pids
  are kept in ``<run dir>/sandbox.json``. ``connect`` attaches to a live sandbox found there
  (its spec applies at the next restart); ``aclose`` destroys every computer it started or
  attached.
- **Files.** ``HostFiles`` over the host directories; a view's ``/tmp`` is reached through
  ``/proc/<sandbox init>/root/tmp/.s/<session>`` (``_bwrap_files``).

The parts: ``_bwrap_launch`` (host ids, the command line, the generated ``/etc``),
``_bwrap_host`` (the processes of a running sandbox and its saved record), ``_bwrap_client``
(the daemon's protocol), ``_bwrap_files`` (file access) and ``_sandbox_init`` (the daemon).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.abc
import anyio.to_thread

from openbuda.computer import _disk, _network
from openbuda.computer._bwrap_client import DaemonClient, DaemonError, DaemonGone, ExitInfo
from openbuda.computer._bwrap_files import SandboxTmpRoot, ViewFiles
from openbuda.computer._bwrap_host import (
    Running,
    cgroups_work,
    kill_tree,
    mount_quota_image,
    probe,
    signal_tree,
)
from openbuda.computer._bwrap_launch import (
    INIT_PATH,
    STAGE_DIR,
    HostIds,
    IdRegistry,
    Sources,
    bwrap_argv,
    close_all,
    descendants,
    etc_files,
    launcher_argv,
    memfd,
    process_start,
    read_info,
)
from openbuda.computer._capture import OutputCapture
from openbuda.computer._cgroups import Cgroup, CgroupStats, CgroupUnavailable, open_cgroup
from openbuda.computer._files import RootsFor
from openbuda.computer._hostfs import HostRoot
from openbuda.computer._layout import ComputerLayout
from openbuda.computer._paths import Mount, parse_path
from openbuda.computer._procfs import cpu_seconds, listening_ports, rss_bytes
from openbuda.computer._sandbox_init import CONSOLE_TMP, TMP_ROOT
from openbuda.computer._seccomp import BASE_DENY, SESSION_DENY, build_filter
from openbuda.computer._working import HostWorkingCopy
from openbuda.domain.errors import InvalidPath, InvalidRequest, Unavailable
from openbuda.ports import (
    ExecRequest,
    ExecResult,
    LimitName,
    OutputCallback,
    PortStream,
    SandboxCapabilities,
    SandboxSpec,
    SandboxState,
    SandboxStatus,
    SandboxView,
)
from openbuda.settings import Settings

__all__ = ["BwrapBackend", "BwrapSandbox", "BwrapUnavailable"]

log = logging.getLogger("openbuda.computer")

_MIB: Final = 1 << 20
_START_SECONDS: Final = 20.0
_GRACE_SECONDS: Final = 30.0
"""How long past its timeout an exec waits for the daemon's answer before giving up."""
_FULL_BYTES: Final = 256 * 1024
"""A filesystem with less room than this after a failed command counts as full."""
_OPEN_FILES: Final = 4096
_WATCH_SECONDS: Final = 0.2
"""How often a running command's cgroup is checked for refused forks (then it is killed)."""
_STATE_FILE: Final = "sandbox.json"
_SOCKET_DIR: Final = "sock"
_LAUNCH_PATH: Final = "/usr/sbin:/usr/bin:/sbin:/bin"
_INIT_SOURCE: Final = Path(__file__).with_name("_sandbox_init.py")


class BwrapUnavailable(Exception):
    """bubblewrap cannot run sandboxes here (the message says why)."""


@dataclass(slots=True)
class _Config:
    """What every computer of one backend shares."""

    layout: ComputerLayout
    bwrap: str
    ids: IdRegistry | None
    """Per-agent host ids (root); ``None`` runs sandboxes as this process's user."""
    uid_range: tuple[int, int]
    quota: Literal["loop", "check"]
    cgroups: bool
    internet: bool
    tag: str
    """Distinguishes the cgroups of computers of different ``computer_dir``s."""
    base_filter: bytes
    session_filter: bytes
    init_source: bytes
    host_filter: bool | None = None
    """Whether the internet host filter is installed (``None``: not tried yet)."""

    def cgroup_name(self, agent_id: str) -> str:
        return f"agent-{self.tag}-{agent_id}"


class BwrapSandbox:
    """One agent's computer; see the module docstring."""

    def __init__(self, config: _Config, spec: SandboxSpec) -> None:
        self._config = config
        self._spec = spec
        self._lock = anyio.Lock()
        self._run: Running | None = None
        self._state: SandboxState = "stopped"
        layout = config.layout
        self._run_dir = layout.run_dir(spec.agent_id)
        self._client = DaemonClient(self._run_dir / _SOCKET_DIR)

    # -- identity and paths ----------------------------------------------------------------

    @property
    def spec(self) -> SandboxSpec:
        """The latest spec asked for (a running computer takes it at its next restart)."""
        return self._spec

    @property
    def state(self) -> SandboxState:
        """Without measuring anything (``status`` does): ``stopped`` once its processes are
        gone."""
        run = self._run
        return "stopped" if run is None or not run.alive() else self._state

    @property
    def init_pid(self) -> int | None:
        """The host pid of the sandbox's init while it runs (diagnostics and tests)."""
        return None if self._run is None else self._run.child_pid

    def respec(self, spec: SandboxSpec) -> None:
        self._spec = spec

    @property
    def _agent_dir(self) -> Path:
        return self._config.layout.agent_files(self._spec.agent_id)

    def _sources(self) -> Sources:
        layout = self._config.layout
        return Sources(
            agent=layout.agent_files(self._spec.agent_id),
            space=layout.space_files(self._spec.space_id),
            sessions=layout.sessions(self._spec.agent_id),
            run=self._run_dir / _SOCKET_DIR,
        )

    def _host_ids(self) -> HostIds:
        registry = self._config.ids
        if registry is None:
            return HostIds(os.getuid(), os.getgid(), None, switch=False)
        return registry.host_ids(self._spec.agent_id, self._spec.space_id)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Attach to the agent's sandbox if one is running, else start one."""
        async with self._lock:
            if self._run is None and not await self._attach():
                await self._start()

    async def _attach(self) -> bool:
        try:
            record = json.loads((self._run_dir / _STATE_FILE).read_text())
        except (OSError, ValueError):
            return False
        try:
            cgroup = None
            if record["cgroup"] and self._config.cgroups:
                cgroup = await anyio.to_thread.run_sync(
                    open_cgroup, self._config.cgroup_name(self._spec.agent_id)
                )
            run = Running.from_record(record, cgroup)
        except (KeyError, TypeError, ValueError, CgroupUnavailable) as exc:
            log.warning(
                "ignoring the unreadable state of the computer of %r: %s", self._spec.agent_id, exc
            )
            return False
        spec = run.spec
        if spec.agent_id != self._spec.agent_id or not run.alive():
            await self._stop(run)
            return False
        frozen = cgroup is not None and await anyio.to_thread.run_sync(cgroup.frozen)
        if cgroup is None:  # stopped with SIGSTOP by a sleep: continue it
            await anyio.to_thread.run_sync(signal_tree, run, signal.SIGCONT)
        if not frozen and not await self._client.ping(within=5.0):
            log.warning("the computer of %r does not answer; starting a new one", spec.agent_id)
            await self._stop(run)
            return False
        if spec.network == "internet" and self._config.internet and not frozen:
            run.link = await self._attach_internet(run)
        self._run = run
        self._state = "sleeping" if frozen else "running"
        log.info("attached to the running computer of %r (pid %d)", spec.agent_id, run.pid)
        return True

    async def _start(self) -> Running:
        spec = self._spec
        try:
            ids = await anyio.to_thread.run_sync(self._host_ids)
            await anyio.to_thread.run_sync(self._prepare, ids)
        except (OSError, RuntimeError, _disk.DiskUnavailable) as exc:
            raise Unavailable(f"the computer of {spec.agent_id!r} cannot start: {exc}") from exc
        cgroup = await anyio.to_thread.run_sync(self._open_cgroup)
        run = await self._launch(spec, ids, cgroup)
        if spec.network == "internet" and self._config.internet:
            run.link = await self._attach_internet(run)
        state = json.dumps(run.record(self._config.quota))
        await anyio.to_thread.run_sync((self._run_dir / _STATE_FILE).write_text, state)
        self._run = run
        self._state = "running"
        return run

    def _prepare(self, ids: HostIds) -> None:
        """Host directories, the quota image, the session filter (blocking)."""
        sources = self._sources()
        self._run_dir.mkdir(parents=True, exist_ok=True)
        for path in (sources.agent, sources.space, sources.sessions, sources.run):
            path.mkdir(parents=True, exist_ok=True)
        if self._config.quota == "loop":
            mount_quota_image(
                self._config.layout.agent_home(self._spec.agent_id),
                sources.agent,
                self._spec.limits.disk_mb,
                (ids.uid, ids.gid),
            )
        session_filter = sources.run / "session.bpf"
        session_filter.write_bytes(self._config.session_filter)
        with contextlib.suppress(FileNotFoundError):
            (sources.run / "d.sock").unlink()
        if ids.switch:
            for path in (sources.agent, sources.sessions, sources.run, session_filter):
                os.chown(path, ids.uid, ids.gid)
            for path in (sources.sessions, sources.run):
                path.chmod(0o700)
            session_filter.chmod(0o600)
            if ids.space_gid is not None:
                os.chown(sources.space, 0, ids.space_gid)
                sources.space.chmod(0o2770)
            STAGE_DIR.mkdir(parents=True, exist_ok=True)

    def _open_cgroup(self) -> Cgroup | None:
        if not self._config.cgroups:
            return None
        limits = self._spec.limits
        try:
            group = open_cgroup(self._config.cgroup_name(self._spec.agent_id))
            group.kill_all()  # leftovers of an earlier run of this computer
            group.set_limits(
                memory_bytes=limits.memory_mb * _MIB, pids=limits.pids, cpus=limits.cpus
            )
        except (CgroupUnavailable, OSError) as exc:
            log.warning(
                "NO CGROUP LIMITS for the computer of %r (%s): memory, processes and CPU are "
                "not limited and sleep stops processes instead of freezing them",
                self._spec.agent_id,
                exc,
            )
            return None
        return group

    async def _launch(self, spec: SandboxSpec, ids: HostIds, cgroup: Cgroup | None) -> Running:
        config = self._config
        owned: list[int] = []
        info_r, info_w = os.pipe()
        try:
            seccomp_fd = memfd("seccomp", config.base_filter)
            owned.append(seccomp_fd)
            files = {
                f"/etc/{name}": memfd(name, data)
                for name, data in etc_files("computer", spec.network).items()
            }
            files[INIT_PATH] = memfd("init", config.init_source)
            owned.extend(files.values())
            log_fd = os.open(
                self._run_dir / "daemon.log",
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                0o640,
            )
            owned.append(log_fd)
            argv = launcher_argv(
                ids,
                self._sources(),
                lambda sources: bwrap_argv(
                    config.bwrap,
                    sources,
                    seccomp_fd=seccomp_fd,
                    info_fd=info_w,
                    files=files,
                    tmp_bytes=spec.limits.tmp_mb * _MIB,
                ),
            )
            process = await anyio.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=log_fd,
                stderr=log_fd,
                pass_fds=(seccomp_fd, info_w, *files.values()),
                start_new_session=True,
                env={"PATH": _LAUNCH_PATH, "LANG": "C.UTF-8"},
            )
        finally:
            close_all([*owned, info_w])
        try:
            if cgroup is not None:
                await anyio.to_thread.run_sync(cgroup.attach, process.pid)
            assert process.stdin is not None
            await process.stdin.send(b"\n")
            await process.stdin.aclose()
            child_pid = await anyio.to_thread.run_sync(read_info, info_r, _START_SECONDS)
            run = Running(
                pid=process.pid,
                pid_start=process_start(process.pid) or 0,
                child_pid=child_pid,
                child_start=process_start(child_pid) or 0,
                ids=ids,
                spec=spec,
                cgroup=cgroup,
                process=process,
            )
            await self._wait_ready(process)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                if cgroup is not None:
                    with contextlib.suppress(OSError, TimeoutError):
                        await anyio.to_thread.run_sync(cgroup.kill_all)
                await process.aclose()
            if isinstance(exc, Exception):
                raise Unavailable(
                    f"the computer of {spec.agent_id!r} did not start: {exc or type(exc)}; "
                    f"bubblewrap said: {self._log_tail() or 'nothing'}"
                ) from exc
            raise
        finally:
            os.close(info_r)
        return run

    async def _wait_ready(self, process: anyio.abc.Process) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while not await self._client.ping(within=2.0):
            if process.returncode is not None:
                raise RuntimeError(f"the sandbox exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("the sandbox daemon did not answer")
            await anyio.sleep(0.005)

    def _log_tail(self) -> str:
        try:
            return (self._run_dir / "daemon.log").read_text(errors="replace")[-2000:].strip()
        except OSError:
            return ""

    async def _attach_internet(self, run: Running) -> _network.InternetLink | None:
        config = self._config
        if run.ids.switch and config.host_filter is None:
            config.host_filter = await anyio.to_thread.run_sync(
                _network.ensure_host_filter, *config.uid_range
            )
            if not config.host_filter:
                log.warning(
                    "THE HOST NETWORK FILTER IS NOT INSTALLED: computers with network "
                    "'internet' can reach this host's private network and services"
                )
        try:
            return await _network.attach_internet(
                run.child_pid,
                uid=run.ids.uid if run.ids.switch else None,
                log_path=self._run_dir / "network.log",
            )
        except _network.NetworkUnavailable as exc:
            log.warning("the computer of %r has no internet: %s", run.spec.agent_id, exc)
            return None

    async def _stop(self, run: Running) -> None:
        """Kill every process of ``run`` and forget it (shielded)."""
        with anyio.CancelScope(shield=True):
            if self._run is run:
                self._run = None
            self._state = "stopped"
            if run.link is not None:
                await run.link.aclose()
            killed = False
            if run.cgroup is not None:
                try:
                    await anyio.to_thread.run_sync(run.cgroup.kill_all)
                    killed = True
                except (OSError, TimeoutError) as exc:
                    log.warning("cannot kill the cgroup of %r: %s", run.spec.agent_id, exc)
            if not killed:
                await anyio.to_thread.run_sync(kill_tree, run)
            if run.process is not None:
                await run.process.aclose()
            else:
                for _ in range(500):
                    if process_start(run.pid) != run.pid_start:
                        break
                    await anyio.sleep(0.01)
            with contextlib.suppress(FileNotFoundError):
                (self._run_dir / _STATE_FILE).unlink()

    async def _ready(self) -> Running:
        """The running sandbox, started or woken if needed."""
        async with self._lock:
            run = self._run
            if run is not None and not run.alive():
                log.warning("the computer of %r stopped unexpectedly", self._spec.agent_id)
                await self._stop(run)
                run = None
            if run is None:
                return await self._start()
            if self._state == "sleeping":
                await self._thaw(run)
            return run

    async def _thaw(self, run: Running) -> None:
        if run.cgroup is not None:
            await anyio.to_thread.run_sync(run.cgroup.thaw)
        else:
            await anyio.to_thread.run_sync(signal_tree, run, signal.SIGCONT)
        self._state = "running"

    async def sleep(self) -> None:
        async with self._lock:
            run = self._run
            if run is None or self._state != "running":
                return
            if run.cgroup is not None:
                try:
                    await anyio.to_thread.run_sync(run.cgroup.freeze)
                except TimeoutError:
                    await anyio.to_thread.run_sync(run.cgroup.thaw)
                    log.warning("the computer of %r did not freeze", self._spec.agent_id)
                    return
            else:
                await anyio.to_thread.run_sync(signal_tree, run, signal.SIGSTOP)
            self._state = "sleeping"

    async def wake(self) -> None:
        await self._ready()

    async def restart(self) -> None:
        async with self._lock:
            if self._run is not None:
                await self._stop(self._run)
            await self._start()

    async def destroy(self) -> None:
        async with self._lock:
            if self._run is not None:
                await self._stop(self._run)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._release)
            self._client.close()

    def _release(self) -> None:
        if self._config.cgroups:
            with contextlib.suppress(CgroupUnavailable, OSError, TimeoutError):
                open_cgroup(self._config.cgroup_name(self._spec.agent_id)).remove()
        if self._config.quota == "loop":
            try:
                _disk.unmount(self._agent_dir)
            except _disk.DiskUnavailable as exc:
                log.warning("cannot unmount the disk of %r: %s", self._spec.agent_id, exc)

    # -- commands ----------------------------------------------------------------------------

    def _session_fields(self, run: Running, view: SandboxView) -> dict[str, Any]:
        limits = run.spec.limits
        rlimits = {"fsize": limits.file_size_mb * _MIB, "nofile": _OPEN_FILES, "core": 0}
        if run.cgroup is None and run.ids.switch:
            rlimits["nproc"] = limits.pids  # the uid is the agent's own
        return {
            "session": view.session_id,
            "writable": view.shared_writable,
            "shm_bytes": limits.tmp_mb * _MIB,
            "rlimits": rlimits,
        }

    async def exec(
        self, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> ExecResult:
        view = request.view
        cwd = parse_path(request.cwd or "/agent")
        if cwd.mount == "session" and view.session_id is None:
            raise InvalidPath(f"{str(cwd)!r} is not available here (only sessions have a /session)")
        _check_text(request)
        run = await self._ready()
        timeout = request.timeout_s or run.spec.limits.exec_timeout_s
        capture = OutputCapture(request.capture_bytes, on_output)
        started = time.monotonic()
        # cgroupfs reads are in-memory and take microseconds: read inline, not in a thread
        before = run.cgroup.stats() if run.cgroup is not None else None
        message = {
            "op": "exec",
            **self._session_fields(run, view),
            "command": request.command,
            "cwd": str(cwd),
            "env": dict(request.env),
            "timeout": timeout,
        }
        info = ExitInfo(137, signal.SIGKILL, True)
        try:
            with anyio.move_on_after(timeout + _GRACE_SECONDS):
                watch = None if before is None else partial(self._pids_exhausted, run, before)
                info = await self._client.exec(message, capture, watch)
        except DaemonGone as exc:
            raise Unavailable(
                f"the computer of {self._spec.agent_id!r} stopped during the command ({exc}); "
                "it starts again on the next one"
            ) from None
        except DaemonError as exc:
            if exc.kind == "cwd":
                raise InvalidPath(
                    f"{str(cwd)!r} is not a directory", details={"path": str(cwd)}
                ) from None
            await capture.feed("stderr", f"openbuda: cannot run the command: {exc}\n".encode())
            info = ExitInfo(126, None, False)
        await capture.flush()
        limit = await self._limit(run, info, before)
        return ExecResult(
            exit_code=info.code,
            stdout=capture.text("stdout"),
            stderr=capture.text("stderr"),
            timed_out=info.timed_out,
            duration_ms=int((time.monotonic() - started) * 1000),
            limit=limit,
            stdout_bytes=capture.total("stdout"),
            stderr_bytes=capture.total("stderr"),
        )

    async def _pids_exhausted(self, run: Running, before: CgroupStats) -> None:
        """Returns once a fork was refused in the computer (the command is then killed)."""
        assert run.cgroup is not None
        while True:
            await anyio.sleep(_WATCH_SECONDS)
            if run.cgroup.stats().pids_max_events > before.pids_max_events:
                return

    async def _limit(
        self, run: Running, info: ExitInfo, before: CgroupStats | None
    ) -> LimitName | None:
        if info.timed_out:
            return "timeout"
        if info.code == 128 + signal.SIGXFSZ:  # it, or a process it waited for, hit the limit
            return "file_size"
        if run.cgroup is not None and before is not None:
            # the computer's counters: a process killed, or a fork refused, while it ran
            after = run.cgroup.stats()
            if after.oom_kills > before.oom_kills:
                return "memory"
            if after.pids_max_events > before.pids_max_events:
                return "pids"
        failed = info.code != 0
        if failed and _room(f"/proc/{run.child_pid}/root/tmp") < _FULL_BYTES:
            return "tmp"
        if self._config.quota == "loop":
            if failed and _room(self._agent_dir) < _FULL_BYTES:
                return "disk"
        else:
            used, _count = await anyio.to_thread.run_sync(HostRoot(self._agent_dir, "/agent").usage)
            if used > run.spec.limits.disk_mb * _MIB:
                return "disk"
        return None

    async def connect_port(self, port: int) -> PortStream:
        if not 0 < port < 65536:
            raise InvalidRequest(f"{port!r} is not a TCP port")
        await self._ready()
        try:
            stream = await self._client.connect_port(port)
        except (DaemonGone, DaemonError) as exc:
            raise Unavailable(f"cannot reach port {port} in the computer: {exc}") from None
        if stream is None:
            raise Unavailable(f"nothing listens on port {port} in the computer")
        return stream

    # -- files and status --------------------------------------------------------------------

    def files(self, view: SandboxView) -> ViewFiles:
        return ViewFiles(self.roots_for, view)

    async def roots_for(self, view: SandboxView, mount: Mount) -> RootsFor:
        """The host roots of ``view`` with ``mount`` ready to use (the computer awake)."""
        if mount == "session" and view.session_id is None:
            return lambda _mount: None
        run = await self._ready()
        layout = self._config.layout
        ids = run.ids
        owner = (ids.uid, ids.gid) if ids.switch else None
        space_owner = (ids.uid, ids.space_gid or ids.gid) if ids.switch else None
        session_dir: Path | None = None
        if view.session_id is not None:
            session_dir = layout.session_files(self._spec.agent_id, view.session_id)
            if mount == "session":
                await anyio.to_thread.run_sync(_make_dir, session_dir, owner)
        if mount == "tmp":
            key = (view.session_id, view.shared_writable)
            if key not in run.views:
                try:
                    await self._client.call({"op": "session", **self._session_fields(run, view)})
                except (DaemonGone, DaemonError) as exc:
                    raise Unavailable(f"the computer cannot open this view: {exc}") from None
                run.views.add(key)
        name = view.session_id or CONSOLE_TMP
        roots: dict[Mount, HostRoot | None] = {
            "agent": HostRoot(self._agent_dir, "/agent", owner=owner),
            "space": HostRoot(
                layout.space_files(self._spec.space_id), "/space", owner=space_owner, shared=True
            ),
            "session": None
            if session_dir is None
            else HostRoot(session_dir, "/session", owner=owner),
            "tmp": SandboxTmpRoot(Path(f"/proc/{run.child_pid}/root{TMP_ROOT}/{name}"), owner),
        }
        return roots.get

    async def working_copy(self, mount: Literal["agent", "space"]) -> HostWorkingCopy:
        """The working copy with the computer running (its ``/agent`` disk mounted), owned by
        its user; pinned to the mounted filesystem under the lock that stops the computer."""
        roots = await self.roots_for(SandboxView(session_id=None), mount)
        root = roots(mount)
        assert root is not None
        async with self._lock:
            if self._run is None:
                raise Unavailable(f"the computer of {self._spec.agent_id!r} stopped")
            return await anyio.to_thread.run_sync(HostWorkingCopy.pinned, root)

    async def status(self) -> SandboxStatus:
        run = self._run
        disk, count = await anyio.to_thread.run_sync(self._disk_usage)
        if run is None or not run.alive():
            return SandboxStatus(state="stopped", disk_bytes=disk, file_count=count)
        if run.cgroup is not None:
            stats = await anyio.to_thread.run_sync(run.cgroup.stats)
            cpu, memory = stats.cpu_seconds, stats.memory_bytes
        else:
            pids = await anyio.to_thread.run_sync(descendants, run.pid)
            cpu, memory = cpu_seconds(pids), rss_bytes(pids)
        ports = await anyio.to_thread.run_sync(listening_ports, run.child_pid)
        return SandboxStatus(
            state=self._state,
            cpu_percent=run.cpu_rate.percent(cpu),
            memory_bytes=memory,
            disk_bytes=disk,
            file_count=count,
            ports=ports,
        )

    def _disk_usage(self) -> tuple[int, int]:
        if not self._agent_dir.is_dir():
            return 0, 0
        return HostRoot(self._agent_dir, "/agent").usage()


# ---------------------------------------------------------------------------------------------
# Helpers (blocking ones run in worker threads)


def _check_text(request: ExecRequest) -> None:
    if "\x00" in request.command:
        raise InvalidRequest("a command must not contain a NUL character")
    for key, value in request.env.items():
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            raise InvalidRequest(f"invalid environment variable {key!r}")


def _room(path: str | Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return _FULL_BYTES
    return st.f_bavail * st.f_frsize


def _make_dir(path: Path, owner: tuple[int, int] | None) -> None:
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, *owner)


# ---------------------------------------------------------------------------------------------
# The backend


class BwrapBackend:
    """Computers in bubblewrap sandboxes; ``BwrapUnavailable`` when they cannot run here."""

    def __init__(self, layout: ComputerLayout, settings: Settings) -> None:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise BwrapUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
        if not os.access("/usr/bin/python3", os.X_OK):
            raise BwrapUnavailable("/usr/bin/python3 is missing (the sandbox's daemon needs it)")
        root = os.geteuid() == 0
        first, count = settings.computer_uid_base, settings.computer_uid_count
        if root and not (shutil.which("unshare") and shutil.which("setpriv")):
            raise BwrapUnavailable("util-linux's unshare and setpriv are needed when root")
        failure = probe(bwrap, first if root else None)
        if failure is not None:
            raise BwrapUnavailable(f"bubblewrap cannot run sandboxes here: {failure}")
        quota = settings.computer_disk_quota
        if quota == "auto":
            quota = "loop" if root and _disk.loop_available() else "check"
        elif quota == "loop" and not (root and _disk.loop_available()):
            raise BwrapUnavailable("computer_disk_quota 'loop' needs root and loop devices")
        tag = hashlib.sha256(str(layout.base.resolve()).encode()).hexdigest()[:8]
        self._config = _Config(
            layout=layout,
            bwrap=bwrap,
            ids=IdRegistry(layout.base, first, count) if root else None,
            uid_range=(first, first + count - 1),
            quota=quota,
            cgroups=cgroups_work(tag),
            internet=shutil.which("slirp4netns") is not None,
            tag=tag,
            base_filter=build_filter(BASE_DENY),
            session_filter=build_filter(SESSION_DENY, deny_clone_namespaces=True),
            init_source=_INIT_SOURCE.read_bytes(),
        )
        if not self._config.cgroups:
            log.warning(
                "cgroups are not available: computers run WITHOUT memory, process and CPU "
                "limits (run the server as root, or on cgroup v2 with delegation)"
            )
        self._sandboxes: dict[str, BwrapSandbox] = {}

    @property
    def name(self) -> str:
        return "bwrap"

    @property
    def capabilities(self) -> SandboxCapabilities:
        return SandboxCapabilities(
            isolated=True,
            freeze=self._config.cgroups,
            internet=self._config.internet,
            disk_quota=self._config.quota == "loop",
        )

    async def connect(self, spec: SandboxSpec) -> BwrapSandbox:
        """The agent's computer, attached or started (computers start concurrently)."""
        sandbox = self._sandboxes.get(spec.agent_id)
        if sandbox is None:
            sandbox = BwrapSandbox(self._config, spec)
            self._sandboxes[spec.agent_id] = sandbox
        else:
            sandbox.respec(spec)
        await sandbox.open()
        return sandbox

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for sandbox in list(self._sandboxes.values()):
                try:
                    await sandbox.destroy()
                except Exception:
                    log.exception("cannot stop the computer of %r", sandbox.spec.agent_id)
            self._sandboxes.clear()
