"""The working-copy sync (``drive.sync.DriveSync``) over a real store, local blobs and a real
computer: what commands change becomes versions, API writes reach the computer before the next
tool call, conflicts keep both sides, links are never followed, a killed writer loses nothing,
and computers that are not running are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

import anyio
import pytest

import openbuda.drive.sync as sync_module
from openbuda.computer._working import HostWorkingCopy
from openbuda.domain.drive import Actor
from openbuda.drive.sync import DriveSync
from openbuda.ports import Sandbox, WorkingCopy, WorkingFile
from openbuda.service.drive import DriveLimits

from .conftest import SyncWorld

pytestmark = pytest.mark.anyio

OLD = 1_600_000_000
"""A file time long past (files set to it are never *racy*)."""


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the sync hashes, in order."""
    seen: list[str] = []
    real = sync_module.hash_file

    def counting(copy: WorkingCopy, path: str) -> tuple[str, WorkingFile] | None:
        seen.append(path)
        return real(copy, path)

    monkeypatch.setattr(sync_module, "hash_file", counting)
    return seen


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The roots the sync scanned."""
    seen: list[str] = []
    real = HostWorkingCopy.scan

    def counting(self: HostWorkingCopy) -> dict[str, WorkingFile]:
        seen.append(self.root.display)
        return real(self)

    monkeypatch.setattr(HostWorkingCopy, "scan", counting)
    return seen


# ---------------------------------------------------------------------------------------------
# push


async def test_what_a_command_changes_becomes_versions_by_the_task(world: SyncWorld) -> None:
    changed = await world.tool_call(
        "mkdir -p notes && echo one > notes/a.txt && echo b > b.txt", "tsk_1"
    )
    assert sorted(changed.paths) == ["/agent/b.txt", "/agent/notes/a.txt"]
    assert sorted(changed.written) == sorted(changed.paths)
    assert changed.note is None
    actor = Actor(agent_id=world.agent.id, task_id="tsk_1", session_id=world.session.id)
    [first] = await world.history("notes/a.txt")
    assert (first.version, first.op, first.actor) == (1, "write", actor)

    changed = await world.tool_call("echo two >> notes/a.txt && rm b.txt", "tsk_2")
    assert sorted(changed.paths) == ["/agent/b.txt", "/agent/notes/a.txt"]
    assert changed.written == ("/agent/notes/a.txt",)
    second, _ = await world.history("notes/a.txt")
    assert second.actor == Actor(
        agent_id=world.agent.id, task_id="tsk_2", session_id=world.session.id
    )
    assert await world.content(second) == b"one\ntwo\n"
    tombstone, written = await world.history("b.txt")
    assert (tombstone.op, tombstone.deleted, written.op) == ("delete", True, "write")
    assert await world.live() == {"notes/a.txt": b"one\ntwo\n"}

    assert await world.sync.after_tool(world.context("tsk_3")) == sync_module.FilesChanged()


async def test_the_space_working_copy_is_the_space_drive(world: SyncWorld) -> None:
    await world.run("mkdir -p plans && echo shared > plans/s.txt", cwd="/space")
    changed = await world.sync.after_tool(world.context())
    assert changed.paths == ("/space/plans/s.txt",)
    assert await world.live(world.space_ref) == {"plans/s.txt": b"shared\n"}
    assert await world.live() == {}
    await world.api_write("plans/from-api.txt", b"api\n", world.space_ref)
    await world.sync.before_tool(world.context())
    result = await world.run("cat plans/from-api.txt", cwd="/space")
    assert result.stdout == "api\n"


async def test_a_touch_adds_no_version_and_only_changed_files_are_hashed(
    world: SyncWorld, hashed: list[str]
) -> None:
    names = " ".join(f"f{index}.txt" for index in range(20))
    await world.run(
        f'for f in {names}; do echo "content of $f" > $f; done && touch -d @{OLD} {names}'
    )
    changed = await world.sync.after_tool(world.context())
    assert len(changed.paths) == 20
    assert sorted(hashed) == sorted(f"f{index}.txt" for index in range(20))

    hashed.clear()
    assert (await world.sync.after_tool(world.context())).paths == ()
    assert hashed == []

    await world.run(
        f"touch -d @{OLD + 100} f3.txt && echo changed >> f5.txt && touch -d @{OLD} f5.txt"
    )
    changed = await world.sync.after_tool(world.context())
    assert changed.paths == ("/agent/f5.txt",)
    assert sorted(hashed) == ["f3.txt", "f5.txt"]
    assert len(await world.history("f3.txt")) == 1
    assert len(await world.history("f5.txt")) == 2

    hashed.clear()
    assert (await world.sync.after_tool(world.context())).paths == ()
    assert hashed == []


async def test_a_change_keeping_size_and_mtime_of_a_racy_file_is_found(world: SyncWorld) -> None:
    """A file whose time is not safely before the scan (here: in the future) is hashed again
    at the next scan, so a same-size write within one tick of file time is not missed."""
    await world.run("printf aaaa > r.txt && touch -d @$(( $(date +%s) + 3600 )) r.txt")
    assert (await world.sync.after_tool(world.context())).paths == ("/agent/r.txt",)
    await world.run(
        "touch -r r.txt ref && printf bbbb | dd of=r.txt conv=notrunc status=none "
        "&& touch -r ref r.txt && rm ref"
    )
    assert (await world.sync.after_tool(world.context())).paths == ("/agent/r.txt",)
    assert await world.live() == {"r.txt": b"bbbb"}


async def test_the_index_outlives_the_process(world: SyncWorld, hashed: list[str]) -> None:
    await world.run(f"echo a > a.txt && echo b > b.txt && touch -d @{OLD} a.txt b.txt")
    await world.sync.after_tool(world.context())
    hashed.clear()
    restarted = DriveSync(world.drive, world.computers, world.computer_dir)
    assert (await restarted.after_tool(world.context())).paths == ()
    assert hashed == []
    await world.run("rm a.txt")
    assert (await restarted.after_tool(world.context())).paths == ("/agent/a.txt",)
    assert await world.live() == {"b.txt": b"b\n"}


async def test_a_members_console_command_is_synced_as_the_member(world: SyncWorld) -> None:
    await world.run("echo by-member > m.txt")
    changed = await world.sync.sync_member(world.agent, world.member_id)
    assert changed.paths == ("/agent/m.txt",)
    [version] = await world.history("m.txt")
    assert version.actor == Actor(member_id=world.member_id)


async def test_an_external_users_read_only_session_does_not_push(world: SyncWorld) -> None:
    from datetime import UTC, datetime

    from openbuda.ports import NewSession

    async with world.store.write() as tx:
        external = await tx.create_session(
            NewSession(world.agent.space_id, world.agent.id, external_user_id="user-1"),
            datetime.now(UTC),
        )
    await world.run("echo x > x.txt")
    assert (await world.sync.after_tool(world.context(session=external))).paths == ()
    assert await world.live() == {}
    await world.api_write("from-api.txt", b"api\n")
    await world.sync.before_tool(world.context(session=external))
    assert (await world.run("cat from-api.txt")).stdout == "api\n"
    assert (await world.sync.after_tool(world.context())).paths == ("/agent/x.txt",)


# ---------------------------------------------------------------------------------------------
# limits


@pytest.mark.parametrize("limits", [DriveLimits(quota_bytes=100)])
async def test_past_the_quota_a_file_is_not_saved_and_the_model_is_told(
    world: SyncWorld,
) -> None:
    await world.run("printf small > a.txt && head -c 500 /dev/zero > big.bin")
    changed = await world.sync.after_tool(world.context())
    assert changed.paths == ("/agent/a.txt",)
    assert changed.note is not None
    assert changed.note.startswith("Drive: 1 file was not saved (/agent/big.bin): ")
    assert "quota" in changed.note
    assert await world.live() == {"a.txt": b"small"}
    again = await world.sync.after_tool(world.context())  # retried, still refused
    assert (again.paths, again.note) == ((), changed.note)
    await world.run("head -c 50 /dev/zero > big.bin")
    assert (await world.sync.after_tool(world.context())).paths == ("/agent/big.bin",)


@pytest.mark.parametrize("limits", [DriveLimits(max_file_bytes=100)])
async def test_a_file_over_the_size_limit_is_not_saved(world: SyncWorld) -> None:
    await world.run("head -c 101 /dev/zero > one.bin && head -c 200 /dev/zero > two.bin")
    changed = await world.sync.after_tool(world.context())
    assert changed.paths == ()
    assert changed.note == (
        "Drive: 2 files were not saved (/agent/one.bin, /agent/two.bin): a Drive file may be "
        "at most 100 bytes"
    )


# ---------------------------------------------------------------------------------------------
# pull


async def test_an_api_write_reaches_the_computer_before_the_next_tool_call(
    world: SyncWorld, scans: list[str]
) -> None:
    await world.run("echo local > local.txt")
    await world.sync.after_tool(world.context())
    await world.api_write("api/note.md", b"# from the API\n")
    await world.sync.before_tool(world.context())
    assert (await world.run("cat api/note.md")).stdout == "# from the API\n"

    await world.drive.delete(world.ref, "local.txt", Actor(member_id=world.member_id))
    await world.sync.before_tool(world.context())
    assert (await world.run("ls -A")).stdout == "api\n"
    # the files written by the pull are not changes of the agent
    assert (await world.sync.after_tool(world.context())).paths == ()
    assert await world.live() == {"api/note.md": b"# from the API\n"}

    scans.clear()
    sandbox = await world.sandbox()
    calls: list[str] = []
    real = sandbox.working_copy

    async def counting(mount: Literal["agent", "space"]) -> WorkingCopy:
        calls.append(mount)
        return await real(mount)

    setattr(sandbox, "working_copy", counting)  # noqa: B010 - the instance only
    await world.sync.before_tool(world.context())
    assert (calls, scans) == ([], []), "nothing new in Drive: the computer is not looked at"


async def test_a_fresh_working_copy_pulls_everything_and_keeps_its_own_files(
    world: SyncWorld, hashed: list[str]
) -> None:
    for path, data in {
        "same.txt": b"same\n",
        "differs.txt": b"drive\n",
        "only-drive.txt": b"d\n",
    }.items():
        await world.api_write(path, data)
    await world.run("echo same > same.txt && echo mine > differs.txt && echo l > only-local.txt")
    changed = await world.sync.after_tool(world.context())
    assert sorted(changed.paths) == ["/agent/differs.txt", "/agent/only-local.txt"]
    assert await world.live() == {
        "same.txt": b"same\n",
        "differs.txt": b"mine\n",
        "only-drive.txt": b"d\n",
        "only-local.txt": b"l\n",
    }
    assert await anyio.to_thread.run_sync(world.local) == await world.live()
    assert len(await world.history("same.txt")) == 1
    differs = await world.history("differs.txt")
    assert [await world.content(v) for v in differs] == [b"mine\n", b"drive\n"]


async def test_a_conflict_keeps_both_versions(world: SyncWorld) -> None:
    await world.tool_call("echo v1 > p.txt")
    # the API writes while the agent's command changes the same file
    await world.api_write("p.txt", b"from the api\n")
    await world.run("echo from the agent > p.txt")
    changed = await world.sync.after_tool(world.context("tsk_2"))
    assert changed.paths == ("/agent/p.txt",)
    history = await world.history("p.txt")
    assert [await world.content(v) for v in history] == [
        b"from the agent\n",
        b"from the api\n",
        b"v1\n",
    ]
    assert history[0].actor.task_id == "tsk_2" and history[1].actor.member_id == world.member_id

    # the agent changes it, then the API writes before the next tool call: the pull leaves
    # the agent's file alone and the push after the call keeps it as the newest version
    await world.run("echo agent again > p.txt")
    await world.api_write("p.txt", b"api again\n")
    await world.sync.before_tool(world.context("tsk_3"))
    assert (await world.run("cat p.txt")).stdout == "agent again\n"
    await world.sync.after_tool(world.context("tsk_3"))
    history = await world.history("p.txt")
    assert [await world.content(v) for v in history[:2]] == [b"agent again\n", b"api again\n"]
    assert await anyio.to_thread.run_sync(world.local) == await world.live()


async def test_a_touch_is_no_conflict(world: SyncWorld) -> None:
    """The agent only touches a file (same content) while the API writes it: the API's
    content reaches the working copy, also when the index on disk predates the touch."""
    await world.tool_call(f"echo v1 > p.txt && touch -d @{OLD} p.txt")
    await world.run(f"touch -d @{OLD + 1} p.txt")
    await world.sync.after_tool(world.context())  # the new time, known in memory only
    await world.run(f"touch -d @{OLD + 2} p.txt")
    await world.api_write("p.txt", b"api\n")
    restarted = DriveSync(world.drive, world.computers, world.computer_dir)
    await restarted.before_tool(world.context())
    assert (await restarted.after_tool(world.context())).paths == ()
    assert await anyio.to_thread.run_sync(world.local) == await world.live() == {"p.txt": b"api\n"}
    assert len(await world.history("p.txt")) == 2


async def test_concurrent_writes_from_the_api_and_the_agent_keep_every_version(
    world: SyncWorld,
) -> None:
    rounds = 6

    async def agent_round(index: int) -> None:
        await world.run(f"printf 'agent {index}\\n' > p.txt")
        await world.sync.after_tool(world.context(f"tsk_{index}"))

    for index in range(rounds):
        async with anyio.create_task_group() as group:
            group.start_soon(agent_round, index)
            group.start_soon(world.api_write, "p.txt", f"api {index}\n".encode())
    await world.sync.before_tool(world.context())
    contents = {await world.content(v) for v in await world.history("p.txt")}
    for index in range(rounds):
        assert f"agent {index}\n".encode() in contents
        assert f"api {index}\n".encode() in contents
    assert await anyio.to_thread.run_sync(world.local) == await world.live()


# ---------------------------------------------------------------------------------------------
# safety


async def test_a_link_to_outside_is_neither_read_nor_written_through(
    any_world: SyncWorld, tmp_path: Path
) -> None:
    world = any_world
    passwd = await anyio.to_thread.run_sync(Path("/etc/passwd").read_bytes)
    changed = await world.tool_call("ln -s /etc/passwd passwd && ln -s / root && echo ok > ok.txt")
    assert changed.paths == ("/agent/ok.txt",)
    assert await world.live() == {"ok.txt": b"ok\n"}

    await world.api_write("root/etc/evil", b"evil\n")
    await world.api_write("passwd", b"evil\n")
    await world.api_write("after.txt", b"after\n")
    await world.sync.before_tool(world.context())
    assert not await anyio.to_thread.run_sync(os.path.lexists, "/etc/evil")
    assert await anyio.to_thread.run_sync(Path("/etc/passwd").read_bytes) == passwd
    assert (await world.run("cat after.txt")).stdout == "after\n"
    # the refused writes are not retried at every call, and the links stay as they are
    assert (await world.sync.after_tool(world.context())).paths == ()
    assert (await world.run("readlink passwd root")).stdout == "/etc/passwd\n/\n"
    assert sorted(await world.live()) == ["after.txt", "ok.txt", "passwd", "root/etc/evil"]
    assert not (tmp_path / "etc").exists()


async def test_a_writer_killed_mid_write_leaves_the_previous_version(world: SyncWorld) -> None:
    await world.tool_call("mkdir -p notes && echo previous > notes/a.txt")
    child = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from openbuda.computer._hostfs import HostRoot\n"
        "from openbuda.computer._working import HostWorkingCopy\n"
        "def chunks():\n"
        "    yield b'the first half of a new version '\n"
        "    print('half', flush=True)\n"
        "    time.sleep(60)\n"
        "    yield b'and the second half'\n"
        "HostWorkingCopy(HostRoot(Path(sys.argv[1]), '/agent')).replace('notes/a.txt', chunks())\n"
    )
    async with await anyio.open_process(
        [sys.executable, "-c", child, str(world.agent_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        with anyio.fail_after(30):
            said = b""
            while not said.endswith(b"\n"):
                said += await process.stdout.receive()
        assert said == b"half\n"
        process.send_signal(signal.SIGKILL)
        await process.wait()
    leftovers = await anyio.to_thread.run_sync(os.listdir, world.agent_dir / "notes")
    assert len(leftovers) == 2, "the killed writer's temp file is left beside the file"
    assert (await world.run("cat notes/a.txt")).stdout == "previous\n"
    assert (await world.sync.after_tool(world.context())).paths == ()
    assert await world.live() == {"notes/a.txt": b"previous\n"}
    assert len(await world.history("notes/a.txt")) == 1


# ---------------------------------------------------------------------------------------------
# computers that are not running


async def test_a_sleeping_computer_is_not_scanned(
    world: SyncWorld, scans: list[str], hashed: list[str]
) -> None:
    sandbox: Sandbox = await world.sandbox()
    await world.tool_call("echo a > a.txt")
    await sandbox.sleep()
    scans.clear()
    hashed.clear()
    assert await world.sync.after_tool(world.context()) == sync_module.FilesChanged()
    await world.sync.before_tool(world.context())
    assert (scans, hashed, (await sandbox.status()).state) == ([], [], "sleeping")
    # a Drive change to bring in wakes it: the next tool call must see it
    await world.api_write("api.txt", b"api\n")
    await world.sync.before_tool(world.context())
    assert (await sandbox.status()).state == "running"
    assert await anyio.to_thread.run_sync(world.local) == {"a.txt": b"a\n", "api.txt": b"api\n"}


async def test_a_stopped_computer_is_not_scanned_nor_started(
    world: SyncWorld, scans: list[str]
) -> None:
    sandbox = await world.sandbox()
    await world.tool_call("echo a > a.txt")
    await sandbox.destroy()
    scans.clear()
    await world.api_write("api.txt", b"api\n")
    await world.sync.before_tool(world.context())
    assert await world.sync.after_tool(world.context()) == sync_module.FilesChanged()
    assert scans == []
    assert (await sandbox.status()).state == "stopped"
    assert await anyio.to_thread.run_sync(world.local) == {"a.txt": b"a\n"}
    await world.computers.forget(world.agent.id)
    assert await world.sync.after_tool(world.context()) == sync_module.FilesChanged()


async def test_a_computer_started_here_pulls_before_its_first_command(
    world: SyncWorld, scans: list[str]
) -> None:
    """``before_tool`` leaves a computer that does not run here alone; when the tool then
    starts it, the Drive's changes are written in before its first command, and what changed
    in its files meanwhile is saved by the agent, outside any task."""
    await world.tool_call("echo a > a.txt")
    await world.computers.forget(world.agent.id)
    await world.api_write("api.txt", b"api\n")
    await anyio.to_thread.run_sync((world.agent_dir / "offline.txt").write_text, "offline\n")
    scans.clear()
    await world.sync.before_tool(world.context())
    assert world.computers.running(world.agent.id) is None
    assert scans == []
    assert (await world.run("cat api.txt a.txt")).stdout == "api\na\n"
    assert scans == ["/agent", "/space"]
    [offline] = await world.history("offline.txt")
    assert offline.actor == Actor(agent_id=world.agent.id)
    assert (await world.sync.after_tool(world.context())).paths == ()
