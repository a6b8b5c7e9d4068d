"""The conformance suite of ``openbuda.ports.Sandbox``: every backend passes it.

Parametrised over ``process`` (always) and ``bwrap`` (when it can run here; see
``sandbox_backends``). Driven only through the port: commands, their results and live output,
the file API of each view, ports, status, sleep and wake, restart and destroy. What a backend
may lack is a ``SandboxCapabilities`` flag, and the cases that need it say so. A bug fixed in
one backend gets its regression test here.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from openbuda.domain.errors import InvalidPath, Unavailable
from openbuda.domain.records import AgentLimits
from openbuda.ports import Sandbox, SandboxBackend, SandboxSpec, SandboxView

from .sandbox_backends import (
    BACKEND_NAMES,
    CONSOLE,
    Marker,
    OutputLog,
    free_port,
    http_get,
    make_backend,
    opened,
    run,
    wait_until,
)

pytestmark = pytest.mark.anyio

SPEC = SandboxSpec(space_id="space1", agent_id="agent1")
SESSION = SandboxView(session_id="session1")
OTHER_SESSION = SandboxView(session_id="session2")
EXTERNAL = SandboxView(session_id="external1", shared_writable=False)


@pytest.fixture(params=BACKEND_NAMES)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SandboxBackend]:
    async with opened(make_backend(request.param, tmp_path)) as backend:
        yield backend


@pytest.fixture
async def sandbox(backend: SandboxBackend) -> AsyncIterator[Sandbox]:
    sandbox = await backend.connect(SPEC)
    try:
        yield sandbox
    finally:
        with anyio.CancelScope(shield=True), anyio.fail_after(60):
            await sandbox.destroy()


# ---------------------------------------------------------------------------------------------
# exec


async def test_stdout_stderr_and_exit_code(sandbox: Sandbox) -> None:
    result = await run(sandbox, "echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert (result.stdout_bytes, result.stderr_bytes) == (4, 4)
    assert not result.timed_out and result.limit is None and not result.truncated
    assert result.duration_ms >= 0


@pytest.mark.parametrize(
    ("command", "code"),
    [("true", 0), ("false", 1), ("exit 255", 255), ("no-such-command-xyz", 127)],
)
async def test_exit_codes(sandbox: Sandbox, command: str, code: int) -> None:
    assert (await run(sandbox, command)).exit_code == code


@pytest.mark.parametrize(("signal_name", "code"), [("TERM", 143), ("KILL", 137), ("USR1", 138)])
async def test_a_signal_gives_128_plus_its_number(
    sandbox: Sandbox, signal_name: str, code: int
) -> None:
    result = await run(sandbox, f"echo before; kill -{signal_name} $$; echo after")
    assert result.exit_code == code
    assert result.stdout == "before\n"
    assert result.limit is None


async def test_the_default_working_directory_is_agent(sandbox: Sandbox) -> None:
    await sandbox.files(CONSOLE).write("/agent/hello.txt", b"hello from the files API")
    result = await run(sandbox, "cat hello.txt")
    assert (result.exit_code, result.stdout) == (0, "hello from the files API")


async def test_cwd_is_a_sandbox_path(sandbox: Sandbox) -> None:
    files = sandbox.files(SESSION)
    await files.write("/agent/sub/dir/a.txt", b"in agent")
    await files.write("/session/s.txt", b"in session")
    assert (await run(sandbox, "cat a.txt", cwd="/agent/sub/dir")).stdout == "in agent"
    assert (await run(sandbox, "cat a.txt", cwd="sub/dir")).stdout == "in agent"
    assert (await run(sandbox, "cat s.txt", cwd="/session", view=SESSION)).stdout == "in session"


@pytest.mark.parametrize("cwd", ["/etc", "../x", "/agent/missing-dir", "/agent/file.txt"])
async def test_a_bad_cwd_is_refused(sandbox: Sandbox, cwd: str) -> None:
    await sandbox.files(CONSOLE).write("file.txt", b"x")
    with pytest.raises(InvalidPath):
        await run(sandbox, "true", cwd=cwd)


async def test_the_console_has_no_session_cwd(sandbox: Sandbox) -> None:
    with pytest.raises(InvalidPath):
        await run(sandbox, "true", cwd="/session")


async def test_env_reaches_the_command(sandbox: Sandbox) -> None:
    result = await run(sandbox, 'echo "$GREETING $OTHER"', env={"GREETING": "hi", "OTHER": "x y"})
    assert result.stdout == "hi x y\n"


@pytest.fixture
def server_stdin_open() -> Iterator[None]:
    """The server's standard input is a pipe that never ends (a terminal, a supervisor)."""
    reader, writer = os.pipe()
    saved = os.dup(0)
    os.dup2(reader, 0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        for fd in (saved, reader, writer):
            os.close(fd)


@pytest.mark.usefixtures("server_stdin_open")
async def test_stdin_is_empty(sandbox: Sandbox) -> None:
    """A command that reads its input gets end-of-file at once (never the server's stdin)."""
    result = await run(sandbox, "cat; read -r line; echo done $?", timeout_s=5)
    assert (result.stdout, result.timed_out) == ("done 1\n", False)


async def test_output_arrives_live_and_in_order(sandbox: Sandbox) -> None:
    log = OutputLog()
    result = await run(
        sandbox,
        "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three; sleep 1",
        on_output=log,
    )
    assert log.merged() == [("stdout", "one\n"), ("stderr", "two\n"), ("stdout", "three\n")]
    first_at = log.chunks[0][2]
    assert first_at < 1.0, f"the first line arrived only after {first_at:.2f}s"
    assert result.duration_ms >= 1500
    assert (result.stdout, result.stderr) == ("one\nthree\n", "two\n")


async def test_capture_is_capped_and_counted_in_full(sandbox: Sandbox) -> None:
    log = OutputLog()
    result = await run(
        sandbox,
        "head -c 100000 /dev/zero | tr '\\0' x; head -c 5000 /dev/zero | tr '\\0' y >&2",
        capture_bytes=1000,
        on_output=log,
    )
    assert result.stdout == "x" * 1000
    assert result.stderr == "y" * 1000
    assert (result.stdout_bytes, result.stderr_bytes) == (100_000, 5000)
    assert result.truncated
    assert log.text("stdout") == "x" * 100_000  # the live output is never capped
    assert log.text("stderr") == "y" * 5000


async def test_output_within_the_cap_is_not_truncated(sandbox: Sandbox) -> None:
    result = await run(sandbox, "head -c 999 /dev/zero | tr '\\0' x", capture_bytes=1000)
    assert (len(result.stdout), result.stdout_bytes, result.truncated) == (999, 999, False)


async def test_non_utf8_output_is_replaced_not_fatal(sandbox: Sandbox) -> None:
    result = await run(sandbox, "printf 'a\\377b\\n'")
    assert result.stdout == "a\ufffdb\n"
    assert result.stdout_bytes == 4


async def test_a_timeout_kills_the_command(sandbox: Sandbox) -> None:
    marker = Marker()
    started = time.monotonic()
    result = await run(sandbox, f"echo started; {marker.command}", timeout_s=1)
    assert time.monotonic() - started < 15
    assert (result.timed_out, result.limit, result.exit_code) == (True, "timeout", 137)
    assert result.stdout == "started\n"
    assert marker.host_pids() == []
    assert (await run(sandbox, "echo next")).stdout == "next\n"


async def test_the_default_timeout_is_the_agents_limit(backend: SandboxBackend) -> None:
    sandbox = await backend.connect(
        SandboxSpec(space_id="space1", agent_id="quick", limits=AgentLimits(exec_timeout_s=1))
    )
    result = await run(sandbox, "sleep 30", timeout_s=None)
    assert (result.timed_out, result.limit, result.exit_code) == (True, "timeout", 137)
    assert result.duration_ms < 15_000


async def test_commands_run_concurrently(sandbox: Sandbox) -> None:
    results: list[str] = []

    async def one(text: str) -> None:
        results.append((await run(sandbox, f"sleep 1; echo {text}")).stdout)

    started = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(one, "a")
        group.start_soon(one, "b")
    assert sorted(results) == ["a\n", "b\n"]
    assert time.monotonic() - started < 1.9


# ---------------------------------------------------------------------------------------------
# files


async def test_files_round_trip(sandbox: Sandbox) -> None:
    files = sandbox.files(CONSOLE)
    entry = await files.write("notes/deep/a.txt", b"alpha")
    assert (entry.path, entry.kind, entry.size) == ("/agent/notes/deep/a.txt", "file", 5)
    assert await files.read("/agent/notes/deep/a.txt") == b"alpha"
    stat = await files.stat("notes/deep/a.txt")
    assert stat is not None and (stat.kind, stat.size) == ("file", 5)
    assert [(e.path, e.kind) for e in await files.list("/agent/notes")] == [
        ("/agent/notes/deep", "dir")
    ]
    await files.write("notes/deep/a.txt", b"beta")
    assert await files.read("notes/deep/a.txt") == b"beta"
    assert await files.remove("notes/deep/a.txt") is True
    assert await files.stat("notes/deep/a.txt") is None
    assert await files.remove("notes/deep/a.txt") is False
    assert await files.list("notes/deep") == []


async def test_files_and_commands_see_the_same_files(sandbox: Sandbox) -> None:
    files = sandbox.files(CONSOLE)
    await files.write("api/written.txt", b"from the api\n")
    result = await run(sandbox, "cat api/written.txt && echo more >> api/written.txt")
    assert (result.exit_code, result.stdout) == (0, "from the api\n")
    assert await files.read("api/written.txt") == b"from the api\nmore\n"
    assert (await run(sandbox, "mkdir -p api/new && echo made > api/new/made.txt")).exit_code == 0
    assert await files.read("api/new/made.txt") == b"made\n"
    await files.remove("api/new/made.txt")
    assert (await run(sandbox, "test -e api/new/made.txt || echo gone")).stdout == "gone\n"


async def test_the_agent_can_change_what_the_api_wrote(sandbox: Sandbox) -> None:
    """Files and directories the host creates belong to the agent's sandbox user."""
    await sandbox.files(CONSOLE).write("owned/sub/file.txt", b"x")
    result = await run(
        sandbox, "touch owned/sub/new.txt && rm owned/sub/*.txt && rmdir owned/sub && echo ok"
    )
    assert (result.exit_code, result.stdout) == (0, "ok\n"), result.stderr


async def test_files_tmp_is_the_commands_tmp(sandbox: Sandbox) -> None:
    await run(sandbox, 'echo scratch > "${TMPDIR:-/tmp}/t.txt"', view=SESSION)
    assert await sandbox.files(SESSION).read("/tmp/t.txt") == b"scratch\n"


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../outside", "a\x00b", "a\\b", "/agent/../etc", "/proc/1/root"]
)
async def test_bad_paths_are_invalid(sandbox: Sandbox, path: str) -> None:
    files = sandbox.files(CONSOLE)
    with pytest.raises(InvalidPath):
        await files.read(path)
    with pytest.raises(InvalidPath):
        await files.write(path, b"x")
    with pytest.raises(InvalidPath):
        await files.stat(path)


async def test_agents_do_not_share_agent_files(backend: SandboxBackend, sandbox: Sandbox) -> None:
    other = await backend.connect(SandboxSpec(space_id="space1", agent_id="agent2"))
    await sandbox.files(CONSOLE).write("mine.txt", b"agent1 only")
    assert await other.files(CONSOLE).stat("mine.txt") is None
    assert (await run(other, "test -e mine.txt || echo absent")).stdout == "absent\n"
    await other.files(CONSOLE).write("/space/shared.txt", b"same space")
    assert await sandbox.files(CONSOLE).read("/space/shared.txt") == b"same space"


# ---------------------------------------------------------------------------------------------
# working copies (Drive's view of /agent and /space)


async def test_the_working_copy_scans_what_a_command_wrote(sandbox: Sandbox) -> None:
    result = await run(
        sandbox,
        "mkdir -p notes/deep && printf alpha > notes/deep/a.txt && printf b > b.txt "
        "&& mkfifo pipe && ln b.txt hard.txt",
    )
    assert result.exit_code == 0, result.stderr
    copy = await sandbox.working_copy("agent")
    scanned = await anyio.to_thread.run_sync(copy.scan)
    assert sorted(scanned) == ["b.txt", "hard.txt", "notes/deep/a.txt"]
    assert scanned["notes/deep/a.txt"].size == 5
    assert scanned["b.txt"].inode == scanned["hard.txt"].inode
    assert (
        await anyio.to_thread.run_sync(copy.stat, "notes/deep/a.txt") == scanned["notes/deep/a.txt"]
    )
    assert await anyio.to_thread.run_sync(copy.stat, "pipe") is None
    assert await anyio.to_thread.run_sync(copy.stat, "notes") is None

    def read(path: str) -> bytes:
        with copy.open_read(path) as handle:
            return handle.read()

    assert await anyio.to_thread.run_sync(read, "notes/deep/a.txt") == b"alpha"
    for path in ("pipe", "notes", "missing.txt"):
        with pytest.raises(FileNotFoundError):
            await anyio.to_thread.run_sync(read, path)


async def test_the_working_copy_never_follows_a_link(sandbox: Sandbox, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    result = await run(
        sandbox,
        f"ln -s /etc/passwd passwd && ln -s / root && ln -s {outside} out "
        f"&& ln -s {outside}/secret.txt secret.txt && mkdir real && ln -s ../real real/loop",
    )
    assert result.exit_code == 0, result.stderr
    copy = await sandbox.working_copy("agent")
    assert await anyio.to_thread.run_sync(copy.scan) == {}
    for path in ("passwd", "secret.txt", "out/secret.txt", "root/etc/passwd"):
        assert await anyio.to_thread.run_sync(copy.stat, path) is None
        with pytest.raises(FileNotFoundError):
            await anyio.to_thread.run_sync(copy.open_read, path)
    for path in ("root/etc/evil", "out/evil.txt", "secret.txt", "passwd", "real/loop/x"):
        with pytest.raises(InvalidPath):
            await anyio.to_thread.run_sync(copy.replace, path, [b"evil"])
    assert await anyio.to_thread.run_sync(os.listdir, outside) == ["secret.txt"]
    assert not await anyio.to_thread.run_sync(os.path.lexists, "/etc/evil")
    assert await anyio.to_thread.run_sync(copy.remove, "secret.txt") is True  # the link only
    assert await anyio.to_thread.run_sync((outside / "secret.txt").read_text) == "host secret"


async def test_the_working_copy_replaces_files_the_sandbox_can_change(
    backend: SandboxBackend, sandbox: Sandbox
) -> None:
    copy = await sandbox.working_copy("agent")
    written = await anyio.to_thread.run_sync(
        copy.replace, "made/by/host.txt", [b"from ", b"", b"the host\n"]
    )
    assert written.size == len(b"from the host\n")
    assert await anyio.to_thread.run_sync(copy.stat, "made/by/host.txt") == written
    result = await run(
        sandbox,
        "cat made/by/host.txt && echo more >> made/by/host.txt && touch made/by/new.txt "
        "&& rm made/by/host.txt made/by/new.txt && rmdir made/by && echo ok",
    )
    assert (result.exit_code, result.stdout) == (0, "from the host\nok\n"), result.stderr

    space = await sandbox.working_copy("space")
    await anyio.to_thread.run_sync(space.replace, "shared/s.txt", [b"for the space\n"])
    other = await backend.connect(SandboxSpec(space_id="space1", agent_id="agent2"))
    result = await run(
        other,
        "cat shared/s.txt && echo more >> shared/s.txt && touch shared/new.txt && echo ok",
        cwd="/space",
    )
    assert (result.exit_code, result.stdout) == (0, "for the space\nok\n"), result.stderr


async def test_the_working_copy_replace_is_atomic(sandbox: Sandbox) -> None:
    """A writer that fails half-way leaves the previous file as it was (and no temp file)."""
    copy = await sandbox.working_copy("agent")
    await anyio.to_thread.run_sync(copy.replace, "kept.txt", [b"previous"])

    def failing() -> Iterator[bytes]:
        yield b"half of the new"
        raise RuntimeError("the source failed")

    with pytest.raises(RuntimeError):
        await anyio.to_thread.run_sync(copy.replace, "kept.txt", failing())
    assert (await run(sandbox, "cat kept.txt; ls -A | wc -l")).stdout == "previous1\n"


async def test_the_working_copy_removes_files(sandbox: Sandbox) -> None:
    await run(sandbox, "mkdir -p dir && echo x > dir/x.txt && echo y > y.txt")
    copy = await sandbox.working_copy("agent")
    assert await anyio.to_thread.run_sync(copy.remove, "dir/x.txt") is True
    assert await anyio.to_thread.run_sync(copy.remove, "dir/x.txt") is False
    assert await anyio.to_thread.run_sync(copy.remove, "dir") is False  # never a folder
    assert (await run(sandbox, "ls -A; ls -A dir")).stdout == "dir\ny.txt\n"
    assert sorted(await anyio.to_thread.run_sync(copy.scan)) == ["y.txt"]


async def test_the_working_copy_skips_names_drive_cannot_hold(sandbox: Sandbox) -> None:
    result = await run(
        sandbox,
        "touch ok.txt \"$(printf 'bad\\001')\" \"$(printf 'latin\\351.txt')\" "
        "\"$(printf 'e\\314\\201.txt')\" \"$(printf '\\303\\251t\\303\\251.txt')\" "
        "&& mkdir \"$(printf 'dir\\002')\" && touch \"$(printf 'dir\\002')/inside.txt\"",
    )
    assert result.exit_code == 0, result.stderr
    copy = await sandbox.working_copy("agent")
    assert sorted(await anyio.to_thread.run_sync(copy.scan)) == ["ok.txt", "\u00e9t\u00e9.txt"]


async def test_a_sleeping_computer_has_a_working_copy(sandbox: Sandbox) -> None:
    await run(sandbox, "echo x > x.txt")
    await sandbox.sleep()
    copy = await sandbox.working_copy("agent")
    assert (await sandbox.status()).state == "running"
    assert sorted(await anyio.to_thread.run_sync(copy.scan)) == ["x.txt"]


# ---------------------------------------------------------------------------------------------
# views


async def test_the_console_view_has_no_session(sandbox: Sandbox) -> None:
    console = sandbox.files(CONSOLE)
    for call in (console.read, console.stat, console.list):
        with pytest.raises(InvalidPath):
            await call("/session/x")
    with pytest.raises(InvalidPath):
        await console.write("/session/x", b"x")


async def test_sessions_have_their_own_session_and_tmp(sandbox: Sandbox) -> None:
    mine, theirs = sandbox.files(SESSION), sandbox.files(OTHER_SESSION)
    await mine.write("/session/private.txt", b"mine")
    await mine.write("/tmp/private.txt", b"mine")
    assert await theirs.stat("/session/private.txt") is None
    assert await theirs.stat("/tmp/private.txt") is None
    assert await mine.read("/session/private.txt") == b"mine"
    await theirs.write("/agent/shared.txt", b"both see it")
    assert await mine.read("/agent/shared.txt") == b"both see it"


async def test_a_read_only_view_refuses_shared_writes(sandbox: Sandbox) -> None:
    await sandbox.files(CONSOLE).write("/agent/kept.txt", b"kept")
    external = sandbox.files(EXTERNAL)
    for path in ("/agent/x.txt", "x.txt", "/space/x.txt", "kept.txt"):
        with pytest.raises(InvalidPath):
            await external.write(path, b"x")
    with pytest.raises(InvalidPath):
        await external.remove("kept.txt")
    assert await external.read("kept.txt") == b"kept"
    await external.write("/session/mine.txt", b"own scratch")
    assert await external.read("/session/mine.txt") == b"own scratch"


async def test_a_read_only_view_cannot_write_shared_files_by_command(
    backend: SandboxBackend, sandbox: Sandbox
) -> None:
    if not backend.capabilities.isolated:
        pytest.skip(f"{backend.name!r} runs commands unisolated: no read-only mounts")
    await sandbox.files(CONSOLE).write("/agent/kept.txt", b"kept")
    for target in ("/agent/new.txt", "/agent/kept.txt", "/space/new.txt"):
        result = await run(sandbox, f"echo x > {target}", view=EXTERNAL)
        assert result.exit_code != 0, target
    assert await sandbox.files(CONSOLE).read("kept.txt") == b"kept"
    assert await sandbox.files(CONSOLE).stat("new.txt") is None
    result = await run(sandbox, "echo ok > /session/ok.txt && cat /session/ok.txt", view=EXTERNAL)
    assert result.stdout == "ok\n"


# ---------------------------------------------------------------------------------------------
# background processes and ports


async def _start_server(sandbox: Sandbox, port: int) -> str:
    """An HTTP server on ``port`` serving ``/agent``, in the background; its pid."""
    result = await run(
        sandbox,
        f"python3 -m http.server {port} --bind 127.0.0.1 </dev/null >/dev/null 2>&1 & echo $!",
    )
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


async def _listed(sandbox: Sandbox, port: int, *, listed: bool = True) -> bool:
    return (port in (await sandbox.status()).ports) == listed


async def test_a_background_server_keeps_running_and_serves(sandbox: Sandbox) -> None:
    await sandbox.files(CONSOLE).write("page.txt", b"canary-7f3a served from the computer")
    port = free_port()
    pid = await _start_server(sandbox, port)
    await wait_until(lambda: _listed(sandbox, port))
    assert (await run(sandbox, f"kill -0 {pid} && echo alive")).stdout == "alive\n"
    response = await http_get(await sandbox.connect_port(port), "/page.txt")
    assert response.startswith(b"HTTP/1.0 200")
    assert response.endswith(b"canary-7f3a served from the computer")
    await run(sandbox, f"kill {pid}")
    await wait_until(lambda: _listed(sandbox, port, listed=False))
    with pytest.raises(Unavailable):
        await sandbox.connect_port(port)


async def test_connect_port_to_a_closed_port_is_unavailable(sandbox: Sandbox) -> None:
    with pytest.raises(Unavailable):
        await sandbox.connect_port(free_port())


async def test_status_reports_the_computer(sandbox: Sandbox) -> None:
    files = sandbox.files(CONSOLE)
    for index in range(3):
        await files.write(f"status/{index}.bin", b"x" * 10_000)
    marker = Marker()
    await run(sandbox, marker.background)
    status = await sandbox.status()
    assert status.state == "running"
    assert status.file_count >= 3
    assert status.disk_bytes >= 30_000
    assert status.memory_bytes > 0
    assert status.ports == ()


# ---------------------------------------------------------------------------------------------
# sleep, wake, restart, destroy


async def test_sleep_and_wake_keep_the_same_processes(sandbox: Sandbox) -> None:
    marker = Marker()
    pid = (await run(sandbox, marker.background)).stdout.strip()
    host_pids = marker.host_pids()
    assert len(host_pids) == 1
    await sandbox.sleep()
    assert (await sandbox.status()).state == "sleeping"
    result = await run(sandbox, f"kill -0 {pid} && cat /proc/{pid}/cmdline | tr '\\0' ' '")
    assert result.stdout == f"{marker.command} "
    assert (await sandbox.status()).state == "running"
    assert marker.host_pids() == host_pids


async def test_sleep_stops_cpu_use_and_wake_resumes_it(sandbox: Sandbox) -> None:
    await run(sandbox, "(while :; do :; done) </dev/null >/dev/null 2>&1 &")

    async def cpu_over(seconds: float) -> float:
        await sandbox.status()
        await anyio.sleep(seconds)
        return (await sandbox.status()).cpu_percent

    assert await cpu_over(1.0) > 30
    await sandbox.sleep()
    assert await cpu_over(1.0) < 5
    await sandbox.wake()
    assert (await sandbox.status()).state == "running"
    assert await cpu_over(1.0) > 30


@pytest.mark.parametrize("call", ["read", "write", "connect_port", "wake"])
async def test_any_call_but_status_wakes_the_computer(sandbox: Sandbox, call: str) -> None:
    await sandbox.files(CONSOLE).write("x.txt", b"x")
    port = free_port()
    if call == "connect_port":
        await _start_server(sandbox, port)
        await wait_until(lambda: _listed(sandbox, port))
    await sandbox.sleep()
    await sandbox.sleep()  # twice is fine
    assert (await sandbox.status()).state == "sleeping"
    if call == "read":
        await sandbox.files(CONSOLE).read("x.txt")
    elif call == "write":
        await sandbox.files(CONSOLE).write("y.txt", b"y")
    elif call == "connect_port":
        assert (await http_get(await sandbox.connect_port(port), "/x.txt")).endswith(b"\r\n\r\nx")
    else:
        await sandbox.wake()
    assert (await sandbox.status()).state == "running"


async def test_restart_clears_tmp_keeps_agent_and_kills_processes(sandbox: Sandbox) -> None:
    files = sandbox.files(SESSION)
    await files.write("/agent/keep.txt", b"kept")
    await files.write("/tmp/scratch.txt", b"gone after restart")
    await run(sandbox, 'echo by-command > "${TMPDIR:-/tmp}/cmd.txt"', view=SESSION)
    marker = Marker()
    await run(sandbox, marker.background, view=SESSION)
    port = free_port()
    await _start_server(sandbox, port)
    await wait_until(lambda: _listed(sandbox, port))
    assert len(marker.host_pids()) == 1

    await sandbox.restart()

    assert marker.host_pids() == []
    assert (await sandbox.status()).state == "running"
    assert await files.read("/agent/keep.txt") == b"kept"
    assert await files.stat("/tmp/scratch.txt") is None
    assert await files.stat("/tmp/cmd.txt") is None
    assert port not in (await sandbox.status()).ports
    with pytest.raises(Unavailable):
        await sandbox.connect_port(port)
    assert (await run(sandbox, marker.count_inside, view=SESSION)).stdout.strip() == "0"
    assert (await run(sandbox, "cat keep.txt", view=SESSION)).stdout == "kept"


async def test_destroy_stops_the_computer_and_keeps_agent_files(
    backend: SandboxBackend, sandbox: Sandbox
) -> None:
    await sandbox.files(CONSOLE).write("keep.txt", b"kept")
    marker = Marker()
    await run(sandbox, marker.background)
    await sandbox.destroy()
    assert (await sandbox.status()).state == "stopped"
    assert marker.host_pids() == []
    again = await backend.connect(SPEC)
    assert await again.files(CONSOLE).read("keep.txt") == b"kept"
    assert (await run(again, "cat keep.txt")).stdout == "kept"


async def test_closing_the_backend_stops_its_computers(backend: SandboxBackend) -> None:
    markers = [Marker(), Marker()]
    for agent_id, marker in zip(("agent1", "agent2"), markers, strict=True):
        sandbox = await backend.connect(SandboxSpec(space_id="space1", agent_id=agent_id))
        await run(sandbox, marker.background)
        assert len(marker.host_pids()) == 1
    await backend.aclose()
    assert [marker.host_pids() for marker in markers] == [[], []]


async def test_capabilities_match_the_backend(backend: SandboxBackend) -> None:
    capabilities = backend.capabilities
    if backend.name == "process":
        assert not capabilities.isolated
    else:
        assert backend.name == "bwrap"
        assert capabilities.isolated and capabilities.freeze
