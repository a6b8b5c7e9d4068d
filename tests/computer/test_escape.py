"""Escape and abuse attempts against the bubblewrap computer: every one must be contained.

Each test runs what a hostile agent (or a prompt-injected one) would run, as commands inside
its computer, usually in a session's view, and then checks containment concretely: the host
file still unread and unchanged, the canary absent from every output, the host process still
alive, the limit named in the result, the computer still usable afterwards. The list is issue
4's: host files (/etc/shadow, /root), another agent's ``/agent``, another session's
``/session``, ``/tmp``, processes and environment; host root; writes to /usr, /proc/kcore and
/proc/sys; nested user namespaces, mount, ptrace, bpf; signals to host processes; the host's
environment; the host's loopback and its own address (also with ``network: internet``);
fork bomb, memory, disk, file size and time limits; a daemon surviving a restart; symlink,
hard link and FIFO tricks against the host file API.

The module needs the bubblewrap backend: every test is skipped with the reason when
``BwrapBackend`` cannot be built here (the CI machine and the development machine run it).
Never point it at an unisolated backend: run as root on the host, ``kill -9 -1`` kills every
process of the machine. The fixtures refuse a backend without ``capabilities.isolated``, and
the destructive attempts (``kill -9 -1``, the fork bomb) first prove from the host that the
sandbox's processes are not host root, have their own PID namespace and a pids limit.
"""

from __future__ import annotations

import os
import platform
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from openbuda.computer._layout import ComputerLayout
from openbuda.domain.errors import InvalidPath, Unavailable
from openbuda.domain.records import AgentLimits
from openbuda.ports import ExecResult, Sandbox, SandboxBackend, SandboxSpec, SandboxView
from tests.conformance.sandbox_backends import (
    CONSOLE,
    Marker,
    bwrap_backend,
    free_port,
    opened,
    run,
    wait_until,
)

pytestmark = pytest.mark.anyio

SPEC = SandboxSpec(space_id="space1", agent_id="agent1")
SESSION_A = SandboxView(session_id="session-a")
SESSION_B = SandboxView(session_id="session-b")


def _canary(what: str) -> str:
    return f"canary-{what}-{secrets.token_hex(8)}"


def _py(code: str) -> str:
    """A shell command running ``code`` with the sandbox's python3."""
    return f"python3 - <<'PYEOF'\n{code}\nPYEOF"


def _host_text(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _host_exists(*paths: str) -> bool:
    return any(os.path.lexists(path) for path in paths)


def _host_state(path: str) -> tuple[bytes, int, int]:
    """A host file's bytes, modification time and link count."""
    with open(path, "rb") as handle:
        st = os.fstat(handle.fileno())
        return handle.read(), st.st_mtime_ns, st.st_nlink


def _everything(result: ExecResult) -> str:
    return result.stdout + result.stderr


@pytest.fixture
def layout(tmp_path: Path) -> ComputerLayout:
    return ComputerLayout(tmp_path / "computers")


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SandboxBackend]:
    async with opened(bwrap_backend(tmp_path)) as backend:
        assert backend.capabilities.isolated, "the escape suite must never run unisolated"
        yield backend


@pytest.fixture
async def computer(backend: SandboxBackend) -> Sandbox:
    """Agent 1's computer (stopped with the backend at the end of the test)."""
    return await backend.connect(SPEC)


async def _limited(backend: SandboxBackend, agent_id: str, **limits: int) -> Sandbox:
    return await backend.connect(
        SandboxSpec(space_id="space1", agent_id=agent_id, limits=AgentLimits(**limits))
    )


def _status_ids(pid: int) -> dict[str, list[int]]:
    fields: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(part) for part in value.split()]
    return fields


def _host_pids_limit(pid: int) -> str | None:
    """``pids.max`` of the cgroup ``pid`` is in (v1 or v2), ``None`` when none is found."""
    for line in _host_text(f"/proc/{pid}/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            candidates = [f"/sys/fs/cgroup/pids{path}/pids.max"]
        elif controllers == "":
            candidates = [
                f"/sys/fs/cgroup{path}/pids.max",
                f"/sys/fs/cgroup/unified{path}/pids.max",
            ]
        else:
            continue
        for candidate in candidates:
            if _host_exists(candidate):
                return _host_text(candidate).strip()
    return None


async def _guard_destructive(computer: Sandbox, *, needs_pids_limit: bool = False) -> None:
    """Before ``kill -9 -1`` or a fork bomb: prove from the host that the sandbox's processes
    are not host root and have a PID namespace (and a pids limit) of their own. Otherwise the
    attempt would hit the host itself, so the test fails without making it."""
    marker = Marker()
    inside_pid = (await run(computer, marker.background, view=SESSION_A)).stdout.strip()
    pids = marker.host_pids()
    assert len(pids) == 1, "the sandbox's processes are not visible from the host"
    pid = pids[0]
    try:
        if 0 in _status_ids(pid)["Uid"]:
            pytest.fail("refusing a destructive attempt: the sandbox runs as host root")
        if os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid"):
            pytest.fail("refusing a destructive attempt: the sandbox shares the host's PIDs")
        if needs_pids_limit and _host_pids_limit(pid) in (None, "max"):
            pytest.fail("refusing a fork bomb: the sandbox has no pids limit")
    finally:
        await run(computer, f"kill {inside_pid}", view=SESSION_A)


# ---------------------------------------------------------------------------------------------
# Host files


async def test_etc_shadow_is_out_of_reach(computer: Sandbox) -> None:
    """Threat: reading the host's password hashes."""
    host_shadow = _host_text("/etc/shadow").splitlines()
    result = await run(
        computer,
        "cat /etc/shadow; cat /proc/1/root/etc/shadow; cat /proc/self/root/etc/shadow; "
        "cat /../../etc/shadow; cp /etc/shadow /tmp/s 2>&1 && cat /tmp/s; "
        "grep -r root: /etc/shadow- /etc/gshadow 2>&1",
        view=SESSION_A,
    )
    for line in host_shadow:
        if ":" in line and line.split(":")[1] not in ("", "*", "!", "!*"):
            assert line not in _everything(result)
    assert "root:" not in result.stdout


async def test_host_root_home_is_out_of_reach(computer: Sandbox) -> None:
    """Threat: reading a file in the host's /root (credentials, keys)."""
    if os.geteuid() != 0:
        pytest.skip("planting a canary in /root needs root")
    canary = _canary("root-home")
    planted = Path("/root") / f".openbuda-escape-{secrets.token_hex(4)}"
    planted.write_text(canary)
    try:
        result = await run(
            computer,
            f"ls -la /root; cat /root/{planted.name}; cat /proc/1/root/root/{planted.name}; "
            f"cat /proc/self/root/root/{planted.name}; cat /agent/../root/{planted.name}; "
            f"for p in /proc/[0-9]*/root/root/{planted.name}; do cat $p; done; "
            f"find / -xdev -name '{planted.name}' 2>/dev/null",
            view=SESSION_A,
        )
        assert canary not in _everything(result)
        assert planted.name not in result.stdout
    finally:
        planted.unlink()


async def test_writes_to_usr_and_proc_are_refused(computer: Sandbox) -> None:
    """Threat: planting a binary in /usr, touching kernel memory or kernel settings (a piped
    ``core_pattern`` runs a program of the agent's as host root)."""
    name = f"openbuda-escape-{secrets.token_hex(4)}"
    watched = ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/overcommit_memory")
    before = [_host_text(path) for path in watched]
    checks = {
        "usr": f"touch /usr/{name}",
        "usr_bin": f"echo evil > /usr/bin/{name}",
        "usr_existing": "echo evil >> /usr/bin/bash",
        "etc": f"touch /etc/{name}",
        "kcore_write": "echo x > /proc/kcore",
        "kcore_read": "head -c 64 /proc/kcore > /dev/null",
        "core_pattern": "echo '|/agent/evil %p' > /proc/sys/kernel/core_pattern",
        "overcommit": "echo 1 > /proc/sys/vm/overcommit_memory",
        "drop_caches": "echo 3 > /proc/sys/vm/drop_caches",
        "sysrq_trigger": "echo h > /proc/sysrq-trigger",
        "cgroup": "echo $$ > /sys/fs/cgroup/memory/cgroup.procs",
    }
    for label, command in checks.items():
        result = await run(computer, command, view=SESSION_A)
        assert result.exit_code != 0, f"{label}: {command!r} succeeded"
    assert not _host_exists(f"/usr/{name}", f"/usr/bin/{name}", f"/etc/{name}")
    assert [_host_text(path) for path in watched] == before


# ---------------------------------------------------------------------------------------------
# Another agent, another session


async def test_another_agents_files_are_out_of_reach(
    backend: SandboxBackend, computer: Sandbox, layout: ComputerLayout
) -> None:
    """Threat: reading another agent's ``/agent`` (its long-term knowledge) from this one."""
    other = await backend.connect(SandboxSpec(space_id="space2", agent_id="agent2"))
    canary = _canary("agent2")
    await other.files(CONSOLE).write("/agent/canary.txt", canary.encode())
    assert (await run(other, "cat /agent/canary.txt")).stdout == canary  # it is there to find
    marker = Marker()
    await run(other, marker.background)  # a live process whose /proc/PID/root leads there
    other_host_pids = marker.host_pids()
    assert len(other_host_pids) == 1
    host_dir = layout.agent_files("agent2")
    attempts = [
        "cat /agent/../agents/agent2/agent/canary.txt",
        f"cat {host_dir}/canary.txt",
        f"cat /proc/1/root{host_dir}/canary.txt",
        f"cat /proc/{other_host_pids[0]}/root/agent/canary.txt",
        "for p in /proc/[0-9]*/root; do cat $p/agent/canary.txt; done",
        "for p in /proc/[0-9]*/cwd; do cat $p/canary.txt; done",
        "ls -la / /agent /space /proc",
        "find / -xdev -name canary.txt 2>/dev/null | xargs cat",
        "grep -rs canary- /agent /space /tmp /session",
    ]
    for attempt in attempts:
        for view in (SESSION_A, CONSOLE):
            result = await run(computer, attempt, view=view)
            assert canary not in _everything(result), attempt
    assert (await run(computer, marker.count_inside)).stdout.strip() == "0"


@pytest.fixture
async def session_b(computer: Sandbox, layout: ComputerLayout) -> dict[str, str]:
    """Session B's secrets: a file in its ``/session`` and ``/tmp``, a process with a canary
    in its environment; what session A is then set loose on."""
    canary = _canary("session-b")
    marker = Marker()
    result = await run(
        computer,
        f"echo {canary} > /session/secret.txt; echo {canary} > /tmp/secret.txt; "
        f"SESSION_SECRET={canary} {marker.background}",
        view=SESSION_B,
    )
    assert result.exit_code == 0, result.stderr
    own = await run(
        computer,
        f"cat /session/secret.txt /tmp/secret.txt /proc/{result.stdout.strip()}/environ",
        view=SESSION_B,
    )
    assert own.stdout.count(canary) == 3, own  # there to find, for session B itself
    return {
        "canary": canary,
        "pid_in_b": result.stdout.strip(),
        "marker": marker.seconds,
        "host_dir": str(layout.session_files(SPEC.agent_id, "session-b")),
    }


async def test_another_sessions_files_are_out_of_reach(
    computer: Sandbox, session_b: dict[str, str]
) -> None:
    """Threat: one session (a customer's) reading another session's ``/session`` or ``/tmp``."""
    pid, host_dir = session_b["pid_in_b"], session_b["host_dir"]
    attempts = [
        "cat /session/secret.txt /tmp/secret.txt",
        "ls -la /session /tmp /",
        f"cat /proc/{pid}/root/session/secret.txt /proc/{pid}/root/tmp/secret.txt",
        "for p in /proc/[0-9]*/root; do cat $p/session/secret.txt $p/tmp/secret.txt; done",
        f"cat {host_dir}/secret.txt",
        "cat /session/../sessions/session-b/secret.txt",
        "grep -rs canary- / --include=secret.txt 2>/dev/null | head",
    ]
    for attempt in attempts:
        result = await run(computer, attempt, view=SESSION_A)
        assert session_b["canary"] not in _everything(result), attempt
    for mount in ("/session/secret.txt", "/tmp/secret.txt"):
        assert await computer.files(SESSION_A).stat(mount) is None


async def test_another_sessions_processes_are_out_of_reach(
    computer: Sandbox, session_b: dict[str, str]
) -> None:
    """Threat: one session seeing, reading the environment of, or killing another's processes."""
    marker = Marker()
    marker.seconds = session_b["marker"]
    host_pids = marker.host_pids()
    assert len(host_pids) == 1
    pid = session_b["pid_in_b"]
    listing = await run(computer, "ps -eo pid,args", view=SESSION_A)
    assert listing.exit_code == 0 and "ps -eo pid,args" in listing.stdout
    assert marker.command not in listing.stdout
    assert (await run(computer, marker.count_inside, view=SESSION_A)).stdout.strip() == "0"
    looks = await run(
        computer,
        f"cat /proc/{pid}/environ; cat /proc/{pid}/cmdline; "
        f"cat /proc/[0-9]*/environ; cat /proc/{host_pids[0]}/environ",
        view=SESSION_A,
    )
    assert session_b["canary"] not in _everything(looks)
    assert marker.seconds not in looks.stdout
    await _guard_destructive(computer)
    for view in (SESSION_A, CONSOLE):
        await run(computer, f"kill -9 {pid} {host_pids[0]}; kill -9 -1", view=view)
    assert marker.host_pids() == host_pids, "session B's process was killed from outside it"
    still = await run(computer, marker.count_inside, view=SESSION_B)
    assert still.stdout.strip() == "1"


# ---------------------------------------------------------------------------------------------
# Host identity, privileges and kernel surface


async def test_the_sandbox_never_runs_as_host_root(computer: Sandbox) -> None:
    """Threat: a sandbox process that is host uid 0 (bubblewrap run by root leaves it so)."""
    marker = Marker()
    inside = await run(computer, f"id -u; {marker.background}", view=SESSION_A)
    assert inside.exit_code == 0
    (pid,) = marker.host_pids()
    ids = _status_ids(pid)
    assert 0 not in ids["Uid"], ids
    assert 0 not in ids["Gid"], ids
    assert 0 not in ids["Groups"], ids
    parent = int(
        next(
            line.split()[1]
            for line in _host_text(f"/proc/{pid}/status").splitlines()
            if line.startswith("PPid:")
        )
    )
    assert 0 not in _status_ids(parent)["Uid"], "the sandbox's init runs as host root"


async def test_no_nested_user_namespace(computer: Sandbox) -> None:
    """Threat: a fresh user namespace, the usual first step of a kernel exploit."""
    result = await run(computer, "unshare -U true && echo UNSHARED; unshare -Ur id", view=SESSION_A)
    assert "UNSHARED" not in result.stdout
    assert "uid=0" not in result.stdout
    ctypes_result = await run(
        computer,
        _py(
            "import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print('unshare', libc.unshare(0x10000000), ctypes.get_errno())"
        ),
        view=SESSION_A,
    )
    assert ctypes_result.stdout.startswith("unshare -1 "), _everything(ctypes_result)


async def test_no_mount(computer: Sandbox) -> None:
    """Threat: mounting over the sandbox's view (or a filesystem with a kernel bug)."""
    result = await run(
        computer, "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && echo MOUNTED", view=SESSION_A
    )
    assert "MOUNTED" not in result.stdout
    ctypes_result = await run(
        computer,
        _py(
            "import ctypes, os\n"
            "os.makedirs('/tmp/m2', exist_ok=True)\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.mount(b'none', b'/tmp/m2', b'tmpfs', 0, None)\n"
            "print('mount', rc, ctypes.get_errno())\n"
            "print('bind', libc.mount(b'/agent', b'/tmp/m2', None, 4096, None))"
        ),
        view=SESSION_A,
    )
    lines = ctypes_result.stdout.splitlines()
    assert lines[0].startswith("mount -1 "), _everything(ctypes_result)
    assert lines[1] == "bind -1"


async def test_no_ptrace(computer: Sandbox) -> None:
    """Threat: tracing processes (reading their memory, injecting code)."""
    marker = Marker()
    pid = (await run(computer, marker.background, view=SESSION_A)).stdout.strip()
    result = await run(
        computer,
        _py(
            "import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.ptrace.restype = ctypes.c_long\n"
            "libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]\n"
            f"print('attach', libc.ptrace(16, {pid}, None, None), ctypes.get_errno())\n"
            "print('traceme', libc.ptrace(0, 0, None, None), ctypes.get_errno())"
        ),
        view=SESSION_A,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("attach -1 "), _everything(result)
    assert lines[1].startswith("traceme -1 "), _everything(result)
    strace = await run(computer, "strace -f true 2>&1 && echo TRACED", view=SESSION_A)
    assert "TRACED" not in strace.stdout


async def test_no_bpf(computer: Sandbox) -> None:
    """Threat: loading BPF programs (a frequent kernel attack surface)."""
    number = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
    if number is None:
        pytest.skip(f"bpf syscall number unknown on {platform.machine()}")
    result = await run(
        computer,
        _py(
            "import ctypes, errno\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"rc = libc.syscall({number}, 0, None, 0)\n"
            "print(rc, errno.errorcode.get(ctypes.get_errno()))"
        ),
        view=SESSION_A,
    )
    rc, code = result.stdout.split()
    # EFAULT or EINVAL would mean the kernel got as far as reading the (NULL) attributes.
    assert (rc, code in ("EPERM", "ENOSYS", "EACCES")) == ("-1", True), result.stdout


@pytest.fixture
def host_sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


async def test_host_processes_cannot_be_signalled(
    computer: Sandbox, host_sleeper: subprocess.Popen[bytes]
) -> None:
    """Threat: killing the server, the host's init or any other host process."""
    await _guard_destructive(computer)
    targets = f"{os.getpid()} 1 {host_sleeper.pid}"
    for view in (SESSION_A, CONSOLE):
        await run(computer, f"kill -9 {targets}; kill -STOP {targets}; kill -9 -1", view=view)
    assert host_sleeper.poll() is None
    os.kill(1, 0)
    state = _host_text(f"/proc/{host_sleeper.pid}/stat").rsplit(")", 1)[1].split()[0]
    assert state != "T", "a host process was stopped from the sandbox"
    assert (await run(computer, "echo still working", view=SESSION_A)).stdout == "still working\n"


async def test_the_hosts_environment_is_invisible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threat: reading the server's secrets (API keys, database URL) from its environment."""
    canary = _canary("env")
    monkeypatch.setenv("OPENBUDA_ESCAPE_CANARY", canary)
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    async with opened(bwrap_backend(tmp_path)) as backend:
        assert backend.capabilities.isolated
        computer = await backend.connect(SPEC)
        result = await run(
            computer,
            "env; cat /proc/1/environ /proc/self/environ; "
            "for p in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $p; done",
            view=SESSION_A,
        )
        assert result.exit_code == 0
        assert "PATH=" in result.stdout  # the command has an environment, just not the host's
        assert canary not in _everything(result)
        console = await run(computer, "env", view=CONSOLE)
        assert canary not in _everything(console)


# ---------------------------------------------------------------------------------------------
# Network


def _host_address() -> str | None:
    """The host's own address on its outward interface (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.fixture
def host_listener() -> Iterator[socket.socket]:
    """A TCP port on every host address: the database, the API, anything on the host."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", free_port()))
    listener.listen(16)
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


_CONNECT = """
import socket, struct
port = {port}
targets = ["127.0.0.1", "10.0.2.2", "169.254.1.2"] + [t for t in {extra!r} if t]
try:
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            targets.append(socket.inet_ntoa(struct.pack("<I", int(fields[2], 16))))
except OSError:
    pass
for target in targets:
    try:
        socket.create_connection((target, port), timeout=3).close()
        print("CONNECTED", target)
    except OSError as exc:
        print("refused", target, exc)
"""


async def _assert_host_unreachable(
    computer: Sandbox, listener: socket.socket, host_address: str | None
) -> None:
    port = listener.getsockname()[1]
    result = await run(
        computer, _py(_CONNECT.format(port=port, extra=[host_address])), view=SESSION_A
    )
    assert result.exit_code == 0, result.stderr
    assert "CONNECTED" not in result.stdout, result.stdout
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever reached the host's port


async def test_the_hosts_ports_are_unreachable(
    computer: Sandbox, host_listener: socket.socket
) -> None:
    """Threat: reaching the database or the API on the host's loopback or its own address."""
    await _assert_host_unreachable(computer, host_listener, _host_address())
    interfaces = await run(computer, "cat /proc/net/dev", view=SESSION_A)
    names = {line.split(":")[0].strip() for line in interfaces.stdout.splitlines() if ":" in line}
    assert names <= {"lo"}, f"network 'none' shows interfaces {names}"


async def test_the_hosts_ports_are_unreachable_with_internet(
    backend: SandboxBackend, host_listener: socket.socket
) -> None:
    """Threat: the same through the user-mode network stack of ``network: internet``."""
    if not backend.capabilities.internet:
        pytest.skip("network 'internet' is not available with this backend here")
    computer = await backend.connect(
        SandboxSpec(space_id="space1", agent_id="online", network="internet")
    )
    routes = await run(computer, "cat /proc/net/route", view=SESSION_A)
    assert any(line.split()[1] == "00000000" for line in routes.stdout.splitlines()[1:]), (
        f"network 'internet' is not up (no default route): {routes.stdout!r}"
    )
    await _assert_host_unreachable(computer, host_listener, _host_address())


# ---------------------------------------------------------------------------------------------
# Limits


async def test_a_fork_bomb_hits_the_pids_limit(backend: SandboxBackend) -> None:
    """Threat: exhausting the host's process table."""
    computer = await _limited(backend, "bomb", pids=64)
    await _guard_destructive(computer, needs_pids_limit=True)
    host_ok: list[float] = []

    async def host_still_forks() -> None:
        await anyio.sleep(2)
        started = time.monotonic()
        await anyio.run_process(["true"])
        host_ok.append(time.monotonic() - started)

    results: list[ExecResult] = []
    async with anyio.create_task_group() as group:
        group.start_soon(host_still_forks)
        results.append(await run(computer, ":(){ :|:& };:; sleep 20", view=SESSION_A, timeout_s=60))
    (result,) = results
    assert result.limit == "pids", result
    assert host_ok and host_ok[0] < 2.0
    after = await run(computer, "ls -d /proc/[0-9]* | wc -l", view=SESSION_A)
    assert after.exit_code == 0
    assert int(after.stdout) < 16, "the bomb's processes are still there"


async def test_a_2gib_allocation_hits_the_memory_limit(backend: SandboxBackend) -> None:
    """Threat: exhausting the host's memory."""
    computer = await _limited(backend, "hungry", memory_mb=256)
    result = await run(
        computer,
        _py("data = b'x' * (2 << 30)\nprint('ALLOCATED', len(data))"),
        view=SESSION_A,
        timeout_s=60,
    )
    assert "ALLOCATED" not in result.stdout
    assert (result.limit, result.exit_code) == ("memory", 137), result
    assert (await run(computer, "echo fine", view=SESSION_A)).stdout == "fine\n"


async def test_filling_the_disk_hits_the_disk_limit(backend: SandboxBackend) -> None:
    """Threat: filling the host's disk through ``/agent``."""
    computer = await _limited(backend, "filler", disk_mb=64)
    result = await run(
        computer,
        "for i in 1 2 3 4 5; do head -c 30M /dev/zero > /agent/fill$i || exit 1; done",
        view=SESSION_A,
        timeout_s=60,
    )
    assert result.exit_code != 0
    assert result.limit == "disk", result
    assert (await computer.status()).disk_bytes <= 80 * 1024 * 1024
    for index in range(1, 6):
        await computer.files(CONSOLE).remove(f"fill{index}")
    assert (await run(computer, "echo x > after.txt && cat after.txt")).stdout == "x\n"


async def test_a_300mb_file_hits_the_file_size_limit(computer: Sandbox) -> None:
    """Threat: one huge file (the default limit is 100 MiB)."""
    for target in ("/agent/big.bin", "/tmp/big.bin"):
        result = await run(computer, f"head -c 300M /dev/zero > {target}", view=SESSION_A)
        assert (result.limit, result.exit_code) == ("file_size", 153), (target, result)
        size = int((await run(computer, f"stat -c %s {target}", view=SESSION_A)).stdout)
        assert size <= 100 * 1024 * 1024
        await run(computer, f"rm -f {target}", view=SESSION_A)


async def test_an_exec_past_its_timeout_is_killed(computer: Sandbox) -> None:
    """Threat: a command that never ends (and ignores polite signals)."""
    marker = Marker()
    started = time.monotonic()
    result = await run(
        computer,
        f"trap '' TERM INT HUP; {marker.command} & wait; wait",
        view=SESSION_A,
        timeout_s=2,
    )
    assert (result.timed_out, result.limit, result.exit_code) == (True, "timeout", 137)
    assert time.monotonic() - started < 15
    assert marker.host_pids() == []


async def test_a_daemon_does_not_survive_a_restart(computer: Sandbox) -> None:
    """Threat: a process that outlives the restart meant to clean the computer up."""
    markers = [Marker(), Marker(), Marker()]
    port = free_port()
    await run(
        computer,
        f"setsid nohup {markers[0].command} </dev/null >/dev/null 2>&1 & "
        f"( ( trap '' TERM HUP; {markers[1].command} </dev/null >/dev/null 2>&1 & ) & ); "
        f"nohup python3 -m http.server {port} --bind 127.0.0.1 </dev/null >/dev/null 2>&1 &",
        view=SESSION_A,
    )
    await run(computer, f"{markers[2].background}", view=CONSOLE)

    async def listening() -> bool:
        return port in (await computer.status()).ports

    await wait_until(listening)
    assert all(len(marker.host_pids()) == 1 for marker in markers)
    await computer.restart()
    assert [marker.host_pids() for marker in markers] == [[], [], []]
    assert port not in (await computer.status()).ports
    with pytest.raises(Unavailable):
        await computer.connect_port(port)


# ---------------------------------------------------------------------------------------------
# The host file API against links and FIFOs the agent made


async def test_the_host_file_api_does_not_follow_the_agents_tricks(computer: Sandbox) -> None:
    """Threat: the agent plants links and FIFOs so the host (root) reads or writes for it."""
    before = _host_state("/etc/shadow"), _host_state("/etc/passwd")
    setup = await run(
        computer,
        "cd /agent && ln -s /etc/shadow link && ln -s /proc/1/root/etc/shadow link2 "
        "&& ln -s / rootlink && ln -s ../../../../etc relative && mkfifo fifo "
        "&& echo original > seen.txt && ln seen.txt hard "
        "&& ln -s /etc/shadow /session/link && ln -s /etc/shadow /tmp/link; "
        "ln /etc/passwd /agent/hardpasswd 2>/dev/null; true",
        view=SESSION_A,
    )
    assert setup.exit_code == 0, setup.stderr
    files = computer.files(SESSION_A)
    for path in (
        "link",
        "link2",
        "rootlink/etc/shadow",
        "relative/shadow",
        "/session/link",
        "/tmp/link",
        "fifo",
    ):
        with anyio.fail_after(10), pytest.raises(InvalidPath):
            await files.read(path)
    for path in ("link", "link2", "rootlink/etc/shadow", "/session/link", "/tmp/link"):
        with pytest.raises(InvalidPath):
            await files.write(path, b"root::0:0:::::\n")
    for path in ("rootlink", "rootlink/etc", "relative"):
        with pytest.raises(InvalidPath):
            await files.list(path)
    with anyio.fail_after(10):
        await files.write("hard", b"replaced")
    assert await files.read("seen.txt") == b"original\n"
    assert await files.read("hard") == b"replaced"
    assert await files.remove("link") is True
    assert await files.remove("rootlink") is True
    assert (_host_state("/etc/shadow"), _host_state("/etc/passwd")) == before
