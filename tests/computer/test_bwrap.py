"""The bubblewrap backend's own mechanics: the daemon, sessions, sleep, restart, re-attach.

The cross-backend behaviour is the conformance suite's (``tests/conformance/test_sandbox.py``)
and hostile commands are ``test_escape``'s; these tests check how this backend does its job:
commands through the in-sandbox daemon with live output, background processes kept between
commands, per-session PID/mount namespaces, the cgroup freezer, restart, the host uid, limits
named in results, and attaching to a sandbox a crashed server left running. Every test stops
its computers (the backend is closed by the fixture).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from openbuda.computer._bwrap_launch import descendants
from openbuda.computer._layout import ComputerLayout
from openbuda.computer.bwrap import BwrapBackend, BwrapSandbox, BwrapUnavailable
from openbuda.domain.errors import InvalidPath, InvalidRequest, Unavailable
from openbuda.domain.records import AgentLimits
from openbuda.ports import ExecRequest, ExecResult, OutputStream, SandboxSpec, SandboxView
from openbuda.settings import Settings

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

SPEC = SandboxSpec(space_id="space1", agent_id="agent1")
CONSOLE = SandboxView()
SESSION_A = SandboxView(session_id="session-a")
SESSION_B = SandboxView(session_id="session-b")
EXTERNAL = SandboxView(session_id="session-x", shared_writable=False)


def make_backend(base: Path, **settings: object) -> BwrapBackend:
    try:
        return BwrapBackend(ComputerLayout(base), Settings(home=base, **settings))  # type: ignore[arg-type]
    except BwrapUnavailable as exc:
        pytest.skip(f"the bwrap backend cannot run here: {exc}")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "computers"


@pytest.fixture
async def backend(base: Path) -> AsyncIterator[BwrapBackend]:
    backend = make_backend(base)
    try:
        yield backend
    finally:
        with anyio.CancelScope(shield=True), anyio.fail_after(60):
            await backend.aclose()


@pytest.fixture
async def computer(backend: BwrapBackend) -> BwrapSandbox:
    return await backend.connect(SPEC)


async def run(
    sandbox: BwrapSandbox,
    command: str,
    view: SandboxView = CONSOLE,
    *,
    timeout_s: float = 60,
    on_output: Callable[[OutputStream, str], Awaitable[None]] | None = None,
    cwd: str | None = None,
) -> ExecResult:
    request = ExecRequest(command=command, view=view, timeout_s=timeout_s, cwd=cwd)
    return await sandbox.exec(request, on_output)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await anyio.sleep(0.05)


def host_processes(sandbox: BwrapSandbox) -> list[int]:
    assert sandbox.init_pid is not None
    return descendants(sandbox.init_pid)


def host_pids_of(marker: str) -> list[int]:
    """Host pids whose command line is ``sleep <marker>`` (in any namespace)."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _exists(path: Path) -> bool:
    return path.exists()


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


def _uids(pid: int) -> set[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
    return {int(uid) for uid in line.split()[1:]}


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (a parent that is not us has yet to reap it)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2] == "Z"


async def wait_for_pids(marker: str, count: int) -> None:
    """Until ``count`` host processes run ``sleep <marker>`` (a shell forks them, then they
    exec ``sleep``: right after the command they may not be there yet)."""

    async def counted() -> bool:
        return len(await anyio.to_thread.run_sync(host_pids_of, marker)) == count

    await eventually(counted)


def marker() -> str:
    return f"1000.{secrets.randbelow(10**6):06d}"


# ---------------------------------------------------------------------------------------------
# Commands


async def test_exec_gives_output_exit_code_and_environment(computer: BwrapSandbox) -> None:
    result = await run(computer, "echo out; echo err >&2; echo $HOME $PWD $TMPDIR; exit 3")
    assert result.exit_code == 3
    assert result.stdout == "out\n/agent /agent /tmp\n"
    assert result.stderr == "err\n"
    assert result.limit is None and not result.timed_out
    who = await run(computer, "id -un; hostname; cat /proc/self/status | grep CapEff", cwd="/tmp")
    assert who.stdout.split("\n")[:2] == ["agent", "computer"]
    assert who.stdout.split()[-1] == "0000000000000000"  # no capability left, not even here
    signalled = await run(computer, "kill -TERM $$")
    assert signalled.exit_code == 128 + signal.SIGTERM


async def test_output_arrives_while_the_command_runs(computer: BwrapSandbox) -> None:
    chunks: list[tuple[OutputStream, str, float]] = []
    started = time.monotonic()

    async def collect(stream: OutputStream, text: str) -> None:
        chunks.append((stream, text, time.monotonic() - started))

    result = await run(
        computer, "echo first; sleep 0.6; echo second >&2; sleep 0.2", on_output=collect
    )
    assert result.stdout == "first\n" and result.stderr == "second\n"
    first = next(t for s, text, t in chunks if s == "stdout" and "first" in text)
    second = next(t for s, text, t in chunks if s == "stderr" and "second" in text)
    assert second - first > 0.4  # streamed, not delivered at the end


async def test_a_missing_working_directory_is_an_invalid_path(computer: BwrapSandbox) -> None:
    with pytest.raises(InvalidPath):
        await run(computer, "true", cwd="/agent/nowhere")
    with pytest.raises(InvalidPath):
        await run(computer, "true", cwd="/session")  # the console has no /session
    with pytest.raises(InvalidRequest):
        await run(computer, "echo \x00")


async def test_background_server_keeps_running_and_is_reachable(
    computer: BwrapSandbox,
) -> None:
    await computer.files(CONSOLE).write("/agent/hello.txt", b"hello from the computer")
    started = await run(
        computer, "python3 -m http.server 8123 --bind 127.0.0.1 >/dev/null 2>&1 & echo $!"
    )
    assert started.exit_code == 0

    async def listening() -> bool:
        return 8123 in (await computer.status()).ports

    await eventually(listening)
    fetched = await run(
        computer,
        'python3 -c "import urllib.request as u; '
        "print(u.urlopen('http://127.0.0.1:8123/hello.txt').read().decode())\"",
    )
    assert fetched.stdout == "hello from the computer\n"
    stream = await computer.connect_port(8123)
    try:
        await stream.send(b"GET /hello.txt HTTP/1.0\r\nHost: computer\r\n\r\n")
        page = b""
        while chunk := await stream.receive():
            page += chunk
    finally:
        await stream.aclose()
    assert page.startswith(b"HTTP/1.0 200") and page.endswith(b"hello from the computer")
    with pytest.raises(Unavailable):
        await computer.connect_port(8124)


async def test_output_of_background_processes_does_not_hold_the_command(
    computer: BwrapSandbox,
) -> None:
    started = time.monotonic()
    result = await run(computer, "(sleep 0.3; echo late; sleep 5) & echo now")
    assert result.stdout == "now\n"
    assert time.monotonic() - started < 2
    # the background writer got no SIGPIPE: it is still alive and its output discarded
    alive = await run(computer, "sleep 0.5; ps -eo args | grep -c '^sleep 5$'")
    assert alive.stdout.strip() == "1"


# ---------------------------------------------------------------------------------------------
# Sessions


async def test_sessions_do_not_see_each_others_processes_or_files(
    computer: BwrapSandbox,
) -> None:
    seconds = marker()
    planted = await run(
        computer,
        f"sleep {seconds} >/dev/null 2>&1 & echo secret-a > /session/a; echo tmp-a > /tmp/a; "
        "echo shm-a > /dev/shm/a; ls /proc | grep -c '^[0-9]'",
        SESSION_A,
    )
    assert planted.exit_code == 0
    await wait_for_pids(seconds, 1)
    looked = await run(
        computer,
        f"ps -eo args | grep -c '^sleep {seconds}$'; ls /proc | grep '^[0-9]' | wc -l; "
        "cat /session/a /tmp/a /dev/shm/a; ls -A /session /tmp; "
        "ls /.openbuda/sessions /.openbuda/run; echo done",
        SESSION_B,
    )
    assert "secret-a" not in looked.stdout + looked.stderr
    assert "tmp-a" not in looked.stdout and "shm-a" not in looked.stdout
    lines = looked.stdout.splitlines()
    assert lines[0] == "0"
    assert int(lines[1]) <= 5  # the session's init, the shell, ls, grep and wc
    assert lines[-1] == "done"
    again = await run(computer, "cat /session/a /tmp/a; ps -eo args | grep -c sleep", SESSION_A)
    assert again.stdout.splitlines()[:2] == ["secret-a", "tmp-a"]


async def test_console_has_no_session_directory(computer: BwrapSandbox) -> None:
    result = await run(computer, "test -e /session && echo present || echo absent")
    assert result.stdout == "absent\n"
    with pytest.raises(InvalidPath):
        await computer.files(CONSOLE).read("/session/a")


async def test_external_sessions_cannot_write_shared_files(computer: BwrapSandbox) -> None:
    result = await run(
        computer, "touch /agent/x 2>&1; touch /space/x 2>&1; touch /session/x && echo ok", EXTERNAL
    )
    assert result.stdout.count("Read-only file system") == 2
    assert result.stdout.endswith("ok\n")
    with pytest.raises(InvalidPath):
        await computer.files(EXTERNAL).write("/agent/x", b"no")
    written = await run(computer, "touch /agent/x && echo ok", SESSION_A)
    assert written.stdout == "ok\n"


async def test_files_of_a_view_are_the_files_its_commands_see(computer: BwrapSandbox) -> None:
    files = computer.files(SESSION_A)
    await files.write("/tmp/note", b"tmp note")
    await files.write("/session/note", b"session note")
    seen = await run(computer, "cat /tmp/note; echo; cat /session/note", SESSION_A)
    assert seen.stdout == "tmp note\nsession note"
    await run(computer, "echo from-command > /tmp/made", SESSION_A)
    assert await files.read("/tmp/made") == b"from-command\n"
    assert await computer.files(SESSION_B).stat("/tmp/note") is None
    assert await computer.files(CONSOLE).stat("/tmp/made") is None


# ---------------------------------------------------------------------------------------------
# Limits


async def test_timeout_kills_the_command_and_its_group(computer: BwrapSandbox) -> None:
    seconds = marker()
    started = time.monotonic()
    result = await run(computer, f"sleep {seconds} & echo started; sleep 60", timeout_s=1)
    assert result.timed_out and result.limit == "timeout" and result.exit_code == 137
    assert result.stdout == "started\n"
    assert time.monotonic() - started < 5
    assert host_pids_of(seconds) == []


async def test_limits_are_named_in_results(backend: BwrapBackend) -> None:
    limits = AgentLimits(file_size_mb=16, tmp_mb=8, memory_mb=64, pids=40)
    computer = await backend.connect(
        SandboxSpec(space_id="space1", agent_id="limited", limits=limits)
    )
    big_file = await run(computer, "head -c 20M /dev/zero > /agent/big")
    assert big_file.limit == "file_size" and big_file.exit_code == 128 + signal.SIGXFSZ
    tmp = await run(computer, "head -c 12M /dev/zero > /tmp/a")
    assert tmp.exit_code != 0 and tmp.limit == "tmp" and "No space left" in tmp.stderr
    await run(computer, "rm -f /tmp/a")
    if backend.capabilities.freeze:  # cgroups: memory and processes are limited
        memory = await run(computer, "python3 -c 'x = bytearray(300 << 20); print(len(x))'")
        assert memory.exit_code == 137 and memory.limit == "memory"
        forks = await run(computer, "for i in $(seq 60); do sleep 5 & done; wait")
        assert forks.limit == "pids"
    fine = await run(computer, "echo fine")
    assert fine.stdout == "fine\n" and fine.limit is None


async def test_disk_quota_is_a_filesystem_of_its_own(base: Path) -> None:
    backend = make_backend(base)
    try:
        if not backend.capabilities.disk_quota:
            pytest.skip("loop-mounted quotas need root and loop devices")
        spec = SandboxSpec(space_id="space1", agent_id="small", limits=AgentLimits(disk_mb=16))
        computer = await backend.connect(spec)
        result = await run(computer, "head -c 40M /dev/zero > /agent/fill")
        assert result.exit_code != 0 and result.limit == "disk"
        assert "No space left" in result.stderr
    finally:
        await backend.aclose()
    home = base / "agents" / "small"
    assert _exists(home / "disk.img") and not _mounted(home / "agent")  # kept, unmounted


async def test_check_quota_measures_agent_files(base: Path) -> None:
    backend = make_backend(base, computer_disk_quota="check")
    try:
        assert not backend.capabilities.disk_quota
        spec = SandboxSpec(space_id="space1", agent_id="checked", limits=AgentLimits(disk_mb=16))
        computer = await backend.connect(spec)
        result = await run(computer, "head -c 20M /dev/urandom > /agent/fill")
        assert result.exit_code == 0 and result.limit == "disk"
        assert (await run(computer, "rm /agent/fill")).limit is None
    finally:
        await backend.aclose()


# ---------------------------------------------------------------------------------------------
# Sleep, restart, host uid


async def test_sleep_stops_the_computer_and_exec_wakes_the_same_processes(
    computer: BwrapSandbox, base: Path
) -> None:
    """Frozen with the cgroup freezer, or stopped with SIGSTOP without cgroups: either way
    nothing runs while it sleeps, and the same processes carry on after."""
    counter = base / "agents" / "agent1" / "agent" / "count"
    loop = "i=0; while true; do i=$((i+1)); echo $i > /agent/count; sleep 0.02; done"
    started = await run(
        computer, f"({loop}) >/dev/null 2>&1 & echo $!; (while :; do :; done) >/dev/null 2>&1 &"
    )
    pid = started.stdout.strip()

    def count() -> int:
        text = counter.read_text().strip() if counter.exists() else ""
        return int(text) if text else 0

    async def cpu_percent() -> float:
        await computer.status()
        await anyio.sleep(0.5)
        return (await computer.status()).cpu_percent

    await eventually(lambda: anyio.to_thread.run_sync(lambda: count() > 3))
    assert await cpu_percent() > 30  # the busy loop
    await computer.sleep()
    assert (await computer.status()).state == "sleeping"
    frozen_at = await anyio.to_thread.run_sync(count)
    assert await cpu_percent() < 5
    assert await anyio.to_thread.run_sync(count) == frozen_at
    woken = await run(computer, f"kill -0 {pid} && echo alive")  # exec wakes it first
    assert woken.stdout == "alive\n"
    assert (await computer.status()).state == "running"
    await eventually(lambda: anyio.to_thread.run_sync(lambda: count() > frozen_at + 3))


async def test_restart_clears_tmp_keeps_agent_and_kills_everything(
    computer: BwrapSandbox,
) -> None:
    seconds = marker()
    await run(computer, f"echo keep > /agent/kept; echo gone > /tmp/gone; sleep {seconds} &")
    await run(computer, "echo s > /tmp/s", SESSION_A)
    old_init = computer.init_pid
    await wait_for_pids(seconds, 1)
    await computer.sleep()  # a sleeping computer restarts too
    await computer.restart()
    assert host_pids_of(seconds) == []
    assert computer.init_pid != old_init and (await computer.status()).state == "running"
    after = await run(computer, "cat /agent/kept; ls -A /tmp | wc -l")
    assert after.stdout == "keep\n0\n"
    assert (await run(computer, "ls -A /tmp | wc -l", SESSION_A)).stdout == "0\n"


async def test_processes_run_as_the_agents_host_uid(
    backend: BwrapBackend, computer: BwrapSandbox
) -> None:
    await run(computer, f"sleep {marker()} &", SESSION_A)
    other = await backend.connect(SandboxSpec(space_id="space1", agent_id="agent2"))
    uids: dict[str, set[int]] = {}
    for name, sandbox in (("agent1", computer), ("agent2", other)):
        found: set[int] = set()
        for pid in host_processes(sandbox):
            found |= _uids(pid)
        uids[name] = found
    assert len(host_processes(computer)) >= 4  # bwrap's init, the daemon, a session and sleep
    if os.geteuid() == 0:
        assert len(uids["agent1"]) == 1 and 0 not in uids["agent1"]
        assert uids["agent1"].isdisjoint(uids["agent2"])  # one host uid per agent
    else:
        assert uids["agent1"] == {os.getuid()}


async def test_destroy_stops_and_keeps_files(computer: BwrapSandbox) -> None:
    await run(computer, "echo kept > /agent/file")
    init = computer.init_pid
    await computer.destroy()
    status = await computer.status()
    assert status.state == "stopped"
    assert init is not None and _gone(init)
    # a later command starts it again with the files still there
    assert (await run(computer, "cat /agent/file")).stdout == "kept\n"


# ---------------------------------------------------------------------------------------------
# Surviving the server


CRASHING_SERVER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import anyio
    from openbuda.computer._layout import ComputerLayout
    from openbuda.computer.bwrap import BwrapBackend
    from openbuda.ports import ExecRequest, SandboxSpec
    from openbuda.settings import Settings

    async def main() -> None:
        base = Path(sys.argv[1])
        backend = BwrapBackend(ComputerLayout(base), Settings(home=base))
        computer = await backend.connect(SandboxSpec(space_id="space1", agent_id="agent1"))
        await computer.exec(ExecRequest(command=f"sleep {sys.argv[2]} >/dev/null 2>&1 &"))
        if sys.argv[3] == "asleep":
            await computer.sleep()
        print(json.dumps({"init": computer.init_pid}), flush=True)
        os._exit(0)  # a crash: nothing is stopped

    anyio.run(main)
    """
)


@pytest.mark.parametrize("state", ["awake", "asleep"])
async def test_a_new_backend_attaches_to_the_sandbox_a_crashed_server_left(
    base: Path, state: str
) -> None:
    seconds = marker()
    crashed = await anyio.run_process(
        [sys.executable, "-c", CRASHING_SERVER, str(base), seconds, state], check=False
    )
    backend = make_backend(base)
    try:
        computer = await backend.connect(SPEC)  # attached here, so stopped at the end
        assert crashed.returncode == 0, crashed.stderr.decode()
        init = json.loads(crashed.stdout)["init"]
        assert computer.init_pid == init  # not restarted
        frozen = state == "asleep" and backend.capabilities.freeze
        assert (await computer.status()).state == ("sleeping" if frozen else "running")
        await wait_for_pids(seconds, 1)
        seen = await run(computer, f"ps -eo args | grep -c '^sleep {seconds}$'")
        assert seen.stdout == "1\n"
    finally:
        await backend.aclose()
    assert host_pids_of(seconds) == []
    assert _gone(init)


async def test_a_changed_spec_applies_at_the_next_restart(computer: BwrapSandbox) -> None:
    before = await run(computer, "df -k /tmp | tail -1 | awk '{print $2}'")
    bigger = SandboxSpec(space_id="space1", agent_id="agent1", limits=AgentLimits(tmp_mb=64))
    computer.respec(bigger)
    assert computer.spec == bigger
    assert (await run(computer, "df -k /tmp | tail -1 | awk '{print $2}'")).stdout == before.stdout
    await computer.restart()
    after = await run(computer, "df -k /tmp | tail -1 | awk '{print $2}'")
    assert int(after.stdout) == 64 * 1024


async def test_a_sandbox_killed_behind_our_back_starts_again(computer: BwrapSandbox) -> None:
    await run(computer, "echo kept > /agent/kept")
    init = computer.init_pid
    assert init is not None
    os.kill(init, signal.SIGKILL)
    await eventually(lambda: anyio.to_thread.run_sync(lambda: _gone(init)))
    result = await run(computer, "cat /agent/kept")
    assert result.stdout == "kept\n" and computer.init_pid != init


async def test_network_none_has_only_loopback_and_internet_a_route_out(
    backend: BwrapBackend,
) -> None:
    none = await run(await backend.connect(SPEC), "tail -n +3 /proc/net/dev | cut -d: -f1")
    assert none.stdout.split() == ["lo"]
    if not backend.capabilities.internet:
        pytest.skip("slirp4netns is not installed")
    online = await backend.connect(
        SandboxSpec(space_id="space1", agent_id="online", network="internet")
    )
    route = await run(online, "cat /proc/net/route; cat /etc/resolv.conf")
    assert "tap0\t00000000" in route.stdout  # a default route
    assert "nameserver 10.0.2.3" in route.stdout


async def test_agents_of_a_space_share_space(backend: BwrapBackend) -> None:
    first = await backend.connect(SPEC)
    second = await backend.connect(SandboxSpec(space_id="space1", agent_id="agent2"))
    other_space = await backend.connect(SandboxSpec(space_id="space2", agent_id="agent3"))
    assert (await run(first, "echo one > /space/shared && mkdir /space/dir")).exit_code == 0
    both = await run(second, "echo two >> /space/shared && touch /space/dir/f && cat /space/shared")
    assert both.stdout == "one\ntwo\n", both.stderr
    alone = await run(other_space, "ls -A /space")
    assert alone.stdout == ""
    mine = await run(second, "ls /agent; touch /agent/mine && echo ok")
    assert mine.stdout == "ok\n"
    assert (await run(first, "ls /agent")).stdout == ""


async def test_space_files_written_through_the_host_are_writable_by_every_agent_of_the_space(
    backend: BwrapBackend,
) -> None:
    """What a member writes to /space through the API stays editable by the space's agents."""
    first = await backend.connect(SPEC)
    second = await backend.connect(SandboxSpec(space_id="space1", agent_id="agent2"))
    await first.files(CONSOLE).write("/space/notes/plan.md", b"one\n")
    edited = await run(second, "echo two >> /space/notes/plan.md && touch /space/notes/new")
    assert edited.exit_code == 0, edited.stderr
    assert await first.files(CONSOLE).read("/space/notes/plan.md") == b"one\ntwo\n"


async def test_computers_start_concurrently_with_their_own_uids(backend: BwrapBackend) -> None:
    computers: dict[str, BwrapSandbox] = {}

    async def start(agent_id: str) -> None:
        computers[agent_id] = await backend.connect(
            SandboxSpec(space_id="space1", agent_id=agent_id)
        )

    async with anyio.create_task_group() as group:
        for index in range(4):
            group.start_soon(start, f"agent{index}")
    owners: set[int] = set()
    for computer in computers.values():
        result = await run(computer, "echo ok")
        assert result.stdout == "ok\n"
        assert computer.init_pid is not None
        owners |= await anyio.to_thread.run_sync(_uids, computer.init_pid)
    assert len(owners) == (4 if os.geteuid() == 0 else 1)
