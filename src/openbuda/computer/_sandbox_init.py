"""The daemon inside an agent's bubblewrap sandbox: runs commands in per-session namespaces.

This file runs *inside* the sandbox as ``/usr/bin/python3 -I /.openbuda/init.py`` (bubblewrap
copies it in), with the standard library only: it cannot import openbuda. It is the sandbox's
PID 2 (bubblewrap's reaper is PID 1), uid 0 of the sandbox's own user namespace with every
capability *in that namespace* (never on the host), and lives as long as the sandbox.

Sessions. For each view (``session`` id or ``None`` for the members' console, and whether
``/agent`` and ``/space`` are ``writable``) the daemon starts a **session init**: a helper it
forks takes a new PID namespace and forks the init as that namespace's PID 1, then exits (a
process may ``unshare(CLONE_NEWPID)`` only once; the daemon is a child subreaper, so the init
becomes its child). The init takes a new mount and IPC namespace and builds its view:

- a fresh ``/proc`` (only the session's own processes exist in it);
- its own ``/tmp``: the directory ``/tmp/.s/<name>`` of the sandbox's tmpfs bound over
  ``/tmp`` (sessions share the tmpfs size limit, not files), and its own ``/dev/shm``;
  ``/dev`` itself becomes read-only;
- ``/session`` is a symlink to ``/.openbuda/view/session``: a session binds its own directory
  there, the console binds nothing, so for it ``/session`` does not exist;
- the hidden directories holding every session's files (``/.openbuda/sessions``) and the
  daemon's socket (``/.openbuda/run``) are covered by empty read-only filesystems (they cannot
  be unmounted: the mounts are locked, having come from the sandbox's namespace);
- ``/agent`` and ``/space`` are remounted read-only unless the view is writable.

Then the init gives up its own privileges for good, before any command exists: the session's
rlimits (file size, open files, core, processes), every capability (bounding, ambient,
effective, permitted, inheritable; securebits locked so that ``execve`` as uid 0 grants
nothing), ``no_new_privs``, the session seccomp filter (read once from
``/.openbuda/run/session.bpf``, written there by the host) and non-dumpable (nothing can
ptrace it or read its ``/proc`` entries). Its commands inherit all that: it starts each with
``subprocess`` (``vfork`` + ``exec``: fast) as ``/bin/bash -c`` in a process group of its own,
with default signal dispositions and umask 002. Background processes stay in the session's
namespaces between commands (the init reaps them).

Protocol (host ↔ daemon): the host connects to the unix socket ``/.openbuda/run/d.sock`` once per
request and sends one JSON line; the daemon answers with JSON lines. Requests naming a view
carry ``"session": ID|null, "writable": B, "shm_bytes": N, "rlimits": {NAME: N}`` (``fsize``,
``nofile``, ``core``, ``nproc``, ``as``), used when that view's init is created.

- ``{"op": "ping"}`` → ``{"ok": true, "pid": N, "sessions": N}``
- ``{"op": "session", VIEW}`` → ``{"ok": true}`` once the view's namespaces (and its ``/tmp``
  directory) exist.
- ``{"op": "exec", VIEW, "command": STR, "cwd": PATH, "env": {..}, "timeout": SECONDS}`` →
  output frames ``{"t": "o", "s": 1|2, "n": N}`` each followed by exactly N raw bytes of
  stdout (1) or stderr (2), then ``{"t": "exit", "code": C, "signal": S|null, "timed_out": B}``.
  Past ``timeout`` the command's process group is killed (code 137, ``timed_out``). While it
  runs the host may send ``{"op": "kill"}`` lines (a limit was hit: the group is killed, the
  exit follows); if the host closes the connection before the exit the group is killed too.
  After the main process exits the pipes are drained for ``DRAIN_SECONDS``; output of
  background processes still holding them afterwards is read and discarded (so they never die
  of ``SIGPIPE``).
- ``{"op": "connect", "port": N}`` → ``{"ok": true}`` then the connection is a raw byte stream
  to ``127.0.0.1:N`` (or ``[::1]:N``) in the sandbox's network namespace, both ways.

Errors answer ``{"t": "error", "kind": K, "message": M}`` (``"ok": false`` for connect);
``kind`` is ``cwd`` (not a directory), ``session`` (the namespaces could not be built or the
command could not be started) or ``request``.

Between the daemon and a session init: a ``SOCK_SEQPACKET`` socketpair; the daemon sends
``{"op": "spawn", "id", ...}`` with the command's stdout and stderr pipe ends attached
(``SCM_RIGHTS``) and ``{"op": "kill", "id"}``; the init answers ``{"t": "ready"}`` once set up
and ``{"t": "exit", "id", "status"}`` (a raw wait status) or ``{"t": "exit", "id", "error"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final, NoReturn

RUN_DIR: Final = "/.openbuda/run"
SOCKET_PATH: Final = RUN_DIR + "/d.sock"
FILTER_PATH: Final = RUN_DIR + "/session.bpf"
SESSIONS_DIR: Final = "/.openbuda/sessions"
VIEW_DIR: Final = "/.openbuda/view"
TMP_ROOT: Final = "/tmp/.s"
CONSOLE_TMP: Final = "~console"
"""The console's ``/tmp`` directory name (``~`` never appears in a session id)."""
DRAIN_SECONDS: Final = 0.05
CHUNK: Final = 65536
MAX_LINE: Final = 4 << 20
MAX_MESSAGE: Final = 4 << 20
BASE_ENV: Final = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/agent",
    "USER": "agent",
    "LOGNAME": "agent",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "TERM": "dumb",
}
RLIMITS: Final = {
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
    "nproc": resource.RLIMIT_NPROC,
    "as": resource.RLIMIT_AS,
}

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWPID: Final = 0x20000000
MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_REMOUNT: Final = 32
MS_NOATIME: Final = 1024
MS_NODIRATIME: Final = 2048
MS_BIND: Final = 4096
MS_REC: Final = 16384
MS_PRIVATE: Final = 1 << 18
MS_RELATIME: Final = 1 << 21
_LOCKED_FLAGS: Final = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
PR_SET_DUMPABLE: Final = 4
PR_SET_CHILD_SUBREAPER: Final = 36
PR_SET_SECCOMP: Final = 22
PR_CAPBSET_DROP: Final = 24
PR_SET_SECUREBITS: Final = 28
PR_SET_NO_NEW_PRIVS: Final = 38
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
SECCOMP_MODE_FILTER: Final = 2
SECUREBITS_LOCKED_NOROOT: Final = 0xEF
"""NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE, each locked, and KEEP_CAPS locked off."""
LINUX_CAPABILITY_VERSION_3: Final = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


def log(message: str) -> None:
    print(f"openbuda-init[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# System calls


def _checked(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _c(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    result = _libc.mount(_c(source), _c(target), _c(fstype), ctypes.c_ulong(flags), _c(data))
    _checked(result, f"mount {target}")


def unshare(flags: int) -> None:
    _checked(_libc.unshare(ctypes.c_int(flags)), "unshare")


def prctl(option: int, arg2: int = 0, arg3: Any = 0) -> None:
    _checked(_libc.prctl(option, ctypes.c_ulong(arg2), arg3, 0, 0), f"prctl({option})")


def remount_readonly(path: str) -> None:
    """Make the mount at ``path`` read-only, keeping the flags the kernel locked on it."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    current = os.statvfs(path).f_flag
    for statvfs_flag, mount_flag in _LOCKED_FLAGS:
        if current & statvfs_flag:
            flags |= mount_flag
    mount(None, path, None, flags)


def cover(path: str) -> None:
    """Hide what is mounted at ``path`` under an empty read-only filesystem."""
    mount("none", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0")


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def drop_privileges(filter_bytes: bytes, last_cap: int) -> None:
    """Give up every capability for good, then apply the session seccomp filter."""
    prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_NOROOT)
    for cap in range(last_cap + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _checked(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    buffer = ctypes.create_string_buffer(filter_bytes, len(filter_bytes))
    program = _SockFprog(len(filter_bytes) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program))
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("CapEff", "CapPrm", "CapBnd", "CapAmb") and int(value, 16) != 0:
                raise OSError(f"capabilities remain after dropping them: {line.strip()}")


def describe_status(status: int) -> tuple[int, int | None]:
    """``(exit code, signal)`` of a wait status; a signal N gives code ``128 + N``."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return 128 + number, number
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return 128, None


def tmp_name(session: str | None) -> str:
    return CONSOLE_TMP if session is None else session


def valid_session(session: object) -> str | None:
    if session is None:
        return None
    if (
        not isinstance(session, str)
        or not 0 < len(session) <= 64
        or not all(c.isascii() and (c.isalnum() or c in "_-") for c in session)
    ):
        raise ValueError(f"invalid session id {session!r}")
    return session


# ---------------------------------------------------------------------------------------------
# The session init (PID 1 of a session's namespaces; blocking code, no event loop)


def setup_session(session: str | None, writable: bool, shm_bytes: int) -> None:
    unshare(CLONE_NEWNS | CLONE_NEWIPC)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    tmp = f"{TMP_ROOT}/{tmp_name(session)}"
    os.makedirs(TMP_ROOT, mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(tmp, 0o1777)
        os.chmod(tmp, 0o1777)
    mount(tmp, "/tmp", None, MS_BIND)
    view_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("none", VIEW_DIR, "tmpfs", view_flags, "size=16k,mode=755")
    if session is not None:
        source = f"{SESSIONS_DIR}/{session}"
        with contextlib.suppress(FileExistsError):
            os.mkdir(source, 0o755)
        os.mkdir(f"{VIEW_DIR}/session", 0o755)
        mount(source, f"{VIEW_DIR}/session", None, MS_BIND)
    mount(None, VIEW_DIR, None, MS_REMOUNT | MS_RDONLY | view_flags, "size=16k,mode=755")
    cover(SESSIONS_DIR)
    cover(RUN_DIR)
    mount("none", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={shm_bytes},mode=1777")
    remount_readonly("/dev")
    if not writable:
        remount_readonly("/agent")
        remount_readonly("/space")
    os.chdir("/")


def send_message(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def _ignore(_number: int, _frame: object) -> None:
    """A handler, not ``SIG_IGN``: the PID 1 ignores the signal, its commands do not inherit."""


def session_main(control: socket.socket, request: dict[str, Any], filter_bytes: bytes) -> NoReturn:
    """The session init's life: set up, give up privileges, then spawn, kill and reap commands
    until the daemon goes away."""
    try:
        setup_session(
            valid_session(request.get("session")),
            bool(request.get("writable", True)),
            int(request.get("shm_bytes", 64 << 20)),
        )
        for name, value in dict(request.get("rlimits") or {}).items():
            resource.setrlimit(RLIMITS[name], (int(value), int(value)))
        prctl(PR_SET_DUMPABLE, 0)
        with open("/proc/sys/kernel/cap_last_cap") as last_cap:
            drop_privileges(filter_bytes, int(last_cap.read()))
    except (OSError, ValueError, KeyError) as exc:
        send_message(control, {"t": "ready", "error": str(exc)})
        os._exit(1)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, _ignore)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, _ignore)
    send_message(control, {"t": "ready"})
    commands: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            command = commands.pop(pid, None)
            if command is not None:
                command[1].returncode = status  # reaped here, not by subprocess
                send_message(control, {"t": "exit", "id": command[0], "status": status})

    while True:
        readable, _, _ = select.select([control, wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        if control in readable:
            data, fds, _flags, _addr = socket.recv_fds(control, MAX_MESSAGE, 4)
            if not data:
                os._exit(0)  # the daemon is gone: the session ends with its PID 1
            message = json.loads(data)
            if message.get("op") == "spawn":
                spawn(control, message, fds, commands)
            else:
                for fd in fds:
                    os.close(fd)
            if message.get("op") == "kill":
                for pid, (command_id, _popen) in commands.items():
                    if command_id == message.get("id"):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)
        reap()


def spawn(
    control: socket.socket,
    message: dict[str, Any],
    fds: list[int],
    commands: dict[int, tuple[int, subprocess.Popen[bytes]]],
) -> None:
    """Start one command: its own process group, default signals, umask 002, ``bash -c``."""
    command_id = int(message["id"])
    try:
        if len(fds) != 2:
            raise ValueError("a spawn needs the stdout and stderr pipes")
        cwd = str(message["cwd"])
        if not os.path.isdir(cwd):
            send_message(control, {"t": "exit", "id": command_id, "error": "cwd"})
            return
        env = {**BASE_ENV, **{str(k): str(v) for k, v in dict(message.get("env") or {}).items()}}
        popen = subprocess.Popen(
            ["bash", "-c", str(message["command"])],
            executable="/bin/bash",
            stdin=subprocess.DEVNULL,
            stdout=fds[0],
            stderr=fds[1],
            cwd=cwd,
            env=env,
            umask=0o002,
            start_new_session=True,
            close_fds=True,
            restore_signals=True,
        )
        commands[popen.pid] = (command_id, popen)
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        send_message(control, {"t": "exit", "id": command_id, "error": f"spawn: {exc}"})
    finally:
        for fd in fds:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# The daemon (asyncio; no threads, so forking session inits is safe)


class SessionError(Exception):
    pass


class Session:
    """The daemon's end of one session init."""

    def __init__(self, control: socket.socket, on_close: Callable[[Session], None]):
        self.control = control
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._on_close = on_close
        asyncio.get_running_loop().add_reader(control.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = self.control.recv(MAX_MESSAGE)
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        message = json.loads(data)
        if message.get("t") == "ready":
            if not self.ready.done():
                if message.get("error"):
                    self.ready.set_exception(SessionError(message["error"]))
                else:
                    self.ready.set_result(None)
        elif message.get("t") == "exit":
            future = self.waiting.pop(int(message["id"]), None)
            if future is not None and not future.done():
                future.set_result(message)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.control.fileno())
        self.control.close()
        if not self.ready.done():
            self.ready.set_exception(SessionError("the session init exited"))
        for future in self.waiting.values():
            if not future.done():
                future.set_result({"t": "exit", "error": "the session init exited"})
        self.waiting.clear()
        self._on_close(self)

    def spawn(
        self, command_id: int, request: dict[str, Any], fds: list[int]
    ) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            send_message(self.control, {**request, "op": "spawn", "id": command_id}, fds)
        except OSError as exc:
            self.close()
            raise SessionError(f"the session init is gone: {exc}") from None
        self.waiting[command_id] = future
        return future

    def kill(self, command_id: int) -> None:
        with contextlib.suppress(OSError):
            send_message(self.control, {"op": "kill", "id": command_id})


class Daemon:
    def __init__(self, filter_bytes: bytes, tasks: asyncio.TaskGroup) -> None:
        self.filter_bytes = filter_bytes
        self.tasks = tasks
        self.sessions: dict[tuple[str | None, bool], Session] = {}
        self.next_id = 0

    def background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[None]:
        """Run ``work`` in the daemon's task group; its failure is logged, never fatal."""

        async def guarded() -> None:
            try:
                await work
            except Exception as exc:  # one connection's failure stays its own
                log(f"background work failed: {exc!r}")

        return self.tasks.create_task(guarded())

    # -- sessions ------------------------------------------------------------------------------

    async def session(self, request: dict[str, Any]) -> Session:
        key = (valid_session(request.get("session")), bool(request.get("writable", True)))
        session = self.sessions.get(key)
        if session is None:
            session = self._fork_session(key, request)
            self.sessions[key] = session
        await session.ready
        return session

    def _fork_session(self, key: tuple[str | None, bool], request: dict[str, Any]) -> Session:
        """Fork a helper that takes a new PID namespace and forks the session init into it,
        then exits: the init is re-parented to the daemon (a child subreaper), which reaps it.
        (A process may ``unshare(CLONE_NEWPID)`` only once, so the daemon cannot do it.)"""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                signal.set_wakeup_fd(-1)
                for number in (signal.SIGCHLD, signal.SIGTERM):
                    signal.signal(number, signal.SIG_DFL)
                keep = theirs.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, 1 << 20)
                unshare(CLONE_NEWPID)
                if os.fork() == 0:
                    session_main(theirs, request, self.filter_bytes)
                os._exit(0)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    send_message(theirs, {"t": "ready", "error": f"no session namespace: {exc}"})
            finally:
                os._exit(1)
        theirs.close()
        return Session(ours, lambda gone: self._forget(key, gone))

    def _forget(self, key: tuple[str | None, bool], gone: Session) -> None:
        if self.sessions.get(key) is gone:
            del self.sessions[key]

    def reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # -- connections ---------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readuntil(b"\n")
            request = json.loads(line)
            op = request.get("op")
            if op == "ping":
                await reply(
                    writer, {"ok": True, "pid": os.getpid(), "sessions": len(self.sessions)}
                )
            elif op == "session":
                await self.session(request)
                await reply(writer, {"ok": True})
            elif op == "exec":
                await self.exec(request, reader, writer)
            elif op == "connect":
                await self.connect(request, reader, writer)
            else:
                await reply(writer, error("request", f"unknown op {op!r}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the host went away
        except SessionError as exc:
            await reply(writer, error("session", str(exc)))
        except (ValueError, KeyError, TypeError, asyncio.LimitOverrunError) as exc:
            await reply(writer, error("request", str(exc)))
        except OSError as exc:  # out of descriptors or processes, most likely
            await reply(writer, error("session", str(exc)))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def exec(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session = await self.session(request)
        loop = asyncio.get_running_loop()
        self.next_id += 1
        command_id = self.next_id
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        spec = {
            "command": str(request["command"]),
            "cwd": str(request.get("cwd") or "/agent"),
            "env": dict(request.get("env") or {}),
        }
        try:
            exited = session.spawn(command_id, spec, [out_w, err_w])
        except SessionError:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        forward = [True]
        eofs = [loop.create_future(), loop.create_future()]
        for index, fd in enumerate((out_r, err_r)):
            self.background(pump(fd, index + 1, writer, forward, eofs[index]))
        gone: asyncio.Future[None] = loop.create_future()
        control = self.background(listen(reader, lambda: session.kill(command_id), gone))
        timed_out = False
        try:
            done, _ = await asyncio.wait(
                {exited, gone},
                timeout=float(request.get("timeout") or 120),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exited not in done:
                session.kill(command_id)
                timed_out = gone not in done
            result = await exited
            if "error" not in result:
                await asyncio.wait(eofs, timeout=DRAIN_SECONDS)
        finally:
            forward[0] = False
            control.cancel()
        if result.get("error") == "cwd":
            await reply(writer, error("cwd", f"{spec['cwd']!r} is not a directory"))
            return
        if "error" in result:
            await reply(writer, error("session", str(result["error"])))
            return
        code, number = describe_status(int(result["status"]))
        if timed_out:
            code = 137
        await reply(writer, {"t": "exit", "code": code, "signal": number, "timed_out": timed_out})

    async def connect(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        port = int(request["port"])
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port}")
        loop = asyncio.get_running_loop()
        target: socket.socket | None = None
        for family, address in (
            (socket.AF_INET, ("127.0.0.1", port)),
            (socket.AF_INET6, ("::1", port, 0, 0)),
        ):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except OSError:
                sock.close()
                continue
            target = sock
            break
        if target is None:
            await reply(writer, {"ok": False, "error": f"nothing listens on port {port}"})
            return
        await reply(writer, {"ok": True})
        port_reader, port_writer = await asyncio.open_connection(sock=target)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(splice(reader, port_writer))
                group.create_task(splice(port_reader, writer))
        finally:
            port_writer.close()

    async def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_PATH)
        old = os.umask(0o077)
        try:
            server = await asyncio.start_unix_server(self.handle, SOCKET_PATH, limit=MAX_LINE)
        finally:
            os.umask(old)
        log(f"listening on {SOCKET_PATH}")
        async with server:
            await server.serve_forever()


def error(kind: str, message: str) -> dict[str, Any]:
    return {"t": "error", "ok": False, "kind": kind, "message": message}


async def reply(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    if writer.is_closing():
        return
    writer.write(json.dumps(message).encode() + b"\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def pump(
    fd: int,
    stream: int,
    writer: asyncio.StreamWriter,
    forward: list[bool],
    eof: asyncio.Future[None],
) -> None:
    """Frames of one output pipe to the host while ``forward[0]``; afterwards read and drop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        while chunk := await reader.read(CHUNK):
            if forward[0] and not writer.is_closing():
                header = json.dumps({"t": "o", "s": stream, "n": len(chunk)}).encode()
                writer.write(header + b"\n" + chunk)
                try:
                    await writer.drain()
                except ConnectionError:
                    forward[0] = False
    finally:
        transport.close()
        if not eof.done():
            eof.set_result(None)


async def listen(
    reader: asyncio.StreamReader, kill: Callable[[], None], gone: asyncio.Future[None]
) -> None:
    """The host's side of a running exec: ``{"op": "kill"}`` lines kill the command (a limit
    it hit), the end of the connection kills it too (the host gave up on it)."""
    try:
        while line := await reader.readline():
            if json.loads(line).get("op") == "kill":
                kill()
    finally:
        kill_on_exit = not gone.done()
        if kill_on_exit:
            gone.set_result(None)


async def splice(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(CHUNK):
            target.write(chunk)
            await target.drain()
        if target.can_write_eof():
            target.write_eof()
    except (ConnectionError, OSError):
        target.close()


def load_filter() -> bytes:
    try:
        with open(FILTER_PATH, "rb") as file:
            filter_bytes = file.read()
    except OSError as exc:
        log(f"cannot read the session seccomp filter: {exc}")
        raise SystemExit(2) from None
    if not filter_bytes or len(filter_bytes) % 8:
        log("the session seccomp filter is malformed")
        raise SystemExit(2)
    return filter_bytes


async def main(filter_bytes: bytes) -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tasks:
        daemon = Daemon(filter_bytes, tasks)
        loop.add_signal_handler(signal.SIGCHLD, daemon.reap)
        await daemon.serve()


if __name__ == "__main__":
    os.closerange(3, 1 << 20)  # the seccomp and info descriptors bubblewrap passed along
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(load_filter()))
