"""DriveService over a real store and local blobs: versions, tombstones, history, diff,
restore, dedupe, limits and quotas, saved sessions, memory and ``remember``."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openbuda.domain.conversation import SystemText
from openbuda.domain.drive import MEMORY_INDEX, Actor, DriveRef
from openbuda.domain.errors import InvalidPath, NotFound, QuotaExceeded, TooLarge
from openbuda.drive.memory import DriveMemory, RememberTool
from openbuda.engine.tools import ToolContext
from openbuda.service.drive import DriveLimits, DriveService, iterate_bytes
from openbuda.testing import call, reply
from tests.harness import Harness, harness

__all__ = ["harness"]

pytestmark = pytest.mark.anyio


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _write(drive: DriveService, ref: DriveRef, path: str, data: bytes, who: Actor):
    return await drive.write(ref, path, iterate_bytes(data), who)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_every_change_is_a_version_with_who_made_it(harness: Harness) -> None:
    drive = harness.runtime.drive
    ref = DriveRef(harness.principal.space_id)
    member = Actor(member_id=harness.principal.member_id)
    agent = Actor(agent_id="agt_x", task_id="tsk_1", session_id="ses_1")

    first = await _write(drive, ref, "notes/plan.md", b"one\n", member)
    second = await _write(drive, ref, "notes/plan.md", b"one\ntwo\n", agent)
    assert (first.version, second.version) == (1, 2)
    assert second.sha256 == _sha(b"one\ntwo\n") and second.size == 8

    same = await _write(drive, ref, "notes/plan.md", b"one\ntwo\n", member)
    assert same.version == 2, "writing the content a path holds adds no version"

    history = await drive.history(ref, "notes/plan.md")
    assert [v.version for v in history] == [2, 1]
    assert history[0].actor == agent and history[1].actor == member
    assert [v.op for v in history] == ["write", "write"]

    found, data = await drive.read(ref, "notes/plan.md", 1)
    assert (found.version, data) == (1, b"one\n")


async def test_delete_is_a_tombstone_and_restore_brings_it_back(harness: Harness) -> None:
    drive = harness.runtime.drive
    ref = DriveRef(harness.principal.space_id)
    who = Actor(member_id=harness.principal.member_id)
    await _write(drive, ref, "a.txt", b"alpha\n", who)
    await _write(drive, ref, "a.txt", b"beta\n", who)

    gone = await drive.delete(ref, "a.txt", who)
    assert gone.deleted and gone.version == 3
    with pytest.raises(NotFound):
        await drive.read(ref, "a.txt")
    with pytest.raises(NotFound, match="deletion"):
        await drive.read(ref, "a.txt", 3)
    with pytest.raises(NotFound):
        await drive.delete(ref, "a.txt", who)
    assert [e.path for e in await drive.list(ref)] == []

    back = await drive.restore(ref, "a.txt", 1, who)
    assert (back.version, back.sha256) == (4, _sha(b"alpha\n"))
    history = await drive.history(ref, "a.txt")
    assert [(v.version, v.op, v.restored_from) for v in history] == [
        (4, "restore", 1),
        (3, "delete", None),
        (2, "write", None),
        (1, "write", None),
    ]
    _found, data = await drive.read(ref, "a.txt")
    assert data == b"alpha\n"
    with pytest.raises(NotFound):
        await drive.restore(ref, "a.txt", 9, who)


async def test_identical_content_is_stored_once(harness: Harness, tmp_path: Path) -> None:
    drive = harness.runtime.drive
    ref = DriveRef(harness.principal.space_id)
    who = Actor(member_id=harness.principal.member_id)
    payload = b"x" * 100_000
    await _write(drive, ref, "one.bin", payload, who)
    await _write(drive, ref, "two.bin", payload, who)
    blobs = [p for p in (tmp_path / "drive").rglob("*") if p.is_file() and p.parent.name != "tmp"]
    assert [p.name for p in blobs] == [_sha(payload)]


async def test_diff_between_versions(harness: Harness) -> None:
    drive = harness.runtime.drive
    ref = DriveRef(harness.principal.space_id)
    who = Actor(member_id=harness.principal.member_id)
    await _write(drive, ref, "doc.md", b"a\nb\nc\n", who)
    await _write(drive, ref, "doc.md", b"a\nB\nc\n", who)
    diff = await drive.diff(ref, "doc.md", 1)
    assert (diff.from_version, diff.to_version, diff.binary) == (1, 2, False)
    assert "--- doc.md@1\n+++ doc.md@2\n" in diff.diff
    assert "-b\n+B\n" in diff.diff

    await drive.delete(ref, "doc.md", who)
    removed = await drive.diff(ref, "doc.md", 2)
    assert removed.to_version == 3 and "-a\n-B\n-c\n" in removed.diff

    await _write(drive, ref, "pic.png", b"\x89PNG\x00\x01", who)
    await _write(drive, ref, "pic.png", b"\x89PNG\x00\x02", who)
    binary = await drive.diff(ref, "pic.png", 1, 2)
    assert binary.binary and "differ" in binary.diff
    with pytest.raises(NotFound):
        await drive.diff(ref, "doc.md", 7)


async def test_listing_shows_folders_and_files(harness: Harness) -> None:
    drive = harness.runtime.drive
    ref = DriveRef(harness.principal.space_id)
    who = Actor(member_id=harness.principal.member_id)
    for path in ("top.txt", "docs/a.md", "docs/b.md", "docs/deep/c.md", "docs%/x"):
        await _write(drive, ref, path, path.encode(), who)
    root = await drive.list(ref)
    assert [(e.path, e.kind) for e in root] == [
        ("docs", "dir"),
        ("docs%", "dir"),
        ("top.txt", "file"),
    ]
    assert root[0].size == len(b"docs/a.md") + len(b"docs/b.md") + len(b"docs/deep/c.md")
    docs = await drive.list(ref, "docs/")
    assert [(e.path, e.kind) for e in docs] == [
        ("docs/deep", "dir"),
        ("docs/a.md", "file"),
        ("docs/b.md", "file"),
    ]
    everything = await drive.list(ref, "docs", recursive=True)
    assert [e.path for e in everything] == ["docs/a.md", "docs/b.md", "docs/deep/c.md"]
    with pytest.raises(NotFound):
        await drive.list(ref, "nothing-here")


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "a/../x",
        "a/..",
        "..",
        "/etc/passwd",
        "a\\b",
        "a\x00b",
        "a//b",
        "a/./b",
        "",
        "x/",
        "．．/x",
        "a/\u2025",
        "a\ufffd",
        "a\nb",
        "x" * 256,
        "/".join(["abcdefgh"] * 500),
    ],
)
async def test_unsafe_paths_are_refused_before_anything_is_stored(
    harness: Harness, path: str
) -> None:
    drive = harness.runtime.drive
    ref = DriveRef(harness.principal.space_id)
    who = Actor(member_id=harness.principal.member_id)
    with pytest.raises(InvalidPath):
        await drive.write(ref, path, iterate_bytes(b"evil"), who)
    assert await drive.list(ref, recursive=True) == []


async def test_paths_are_nfc_normalised(harness: Harness) -> None:
    drive = harness.runtime.drive
    ref = DriveRef(harness.principal.space_id)
    who = Actor(member_id=harness.principal.member_id)
    await _write(drive, ref, "cafe\u0301.md", b"nfd", who)
    _found, data = await drive.read(ref, "caf\u00e9.md")
    assert data == b"nfd"


async def test_size_limit_and_space_quota(harness: Harness) -> None:
    runtime = harness.runtime
    ref = DriveRef(harness.principal.space_id)
    who = Actor(member_id=harness.principal.member_id)
    drive = DriveService(runtime.drive._deps, runtime.blobs, DriveLimits(100, 250))  # pyright: ignore[reportPrivateUsage]

    with pytest.raises(TooLarge):
        await drive.write(ref, "big", _chunks(b"x" * 60, b"y" * 60), who)
    with pytest.raises(TooLarge):
        await drive.write(ref, "big", _chunks(b"x"), who, size_hint=101)

    await drive.write(ref, "a", iterate_bytes(b"a" * 100), who)
    await drive.write(ref, "b", iterate_bytes(b"b" * 100), who)
    # replacing a file counts only the difference, also in the early check
    await drive.write(ref, "b", iterate_bytes(b"B" * 100), who, size_hint=100)
    with pytest.raises(QuotaExceeded):
        await drive.write(ref, "c", iterate_bytes(b"C" * 100), who, size_hint=100)
    with pytest.raises(QuotaExceeded) as caught:
        await drive.write(ref, "c", iterate_bytes(b"c" * 100), who)
    assert caught.value.details["quota_bytes"] == 250
    with pytest.raises(NotFound):
        await drive.read(ref, "c")

    await drive.write(ref, "a", iterate_bytes(b"a" * 10), who)  # shrinking always fits
    await drive.write(ref, "c", iterate_bytes(b"c" * 100), who)
    await drive.delete(ref, "b", who)  # deleting frees room
    await drive.write(ref, "d", iterate_bytes(b"d" * 100), who)


async def test_agent_drives_are_scoped_to_their_space(harness: Harness) -> None:
    agent = await harness.agent()
    drive = harness.runtime.drive
    assert await drive.drive(harness.principal, agent.id) == DriveRef(
        harness.principal.space_id, agent.id
    )
    from tests.harness import make_principal

    stranger = await make_principal(harness.store, "elsewhere")
    with pytest.raises(NotFound):
        await drive.drive(stranger, agent.id)


async def test_save_session_transcript_and_task_result(harness: Harness) -> None:
    runtime = harness.runtime
    agent = await harness.agent()
    session = await runtime.sessions.create(harness.principal, agent.id, title="Trip")
    harness.model.add(call("record", text="look up trains"), reply("Take the 9:04 train."))
    sent = await runtime.sessions.send(harness.principal, session.id, "How do I get to Lyon?")
    task = await harness.wait_task(sent.task_id)

    saved = await runtime.drive.save_session(harness.principal, session.id, "trips/lyon.md")
    ref = DriveRef(harness.principal.space_id, agent.id)
    _found, data = await runtime.drive.read(ref, "trips/lyon.md")
    text = data.decode()
    assert saved.version == 1
    assert text.startswith("# Trip\n")
    assert "How do I get to Lyon?" in text and "Take the 9:04 train." in text
    assert "tool `record`" in text
    history = await runtime.drive.history(ref, "trips/lyon.md")
    assert history[0].actor.member_id == harness.principal.member_id

    await runtime.drive.save_session(
        harness.principal, session.id, "lyon-result.md", drive="space", task_id=task.id
    )
    _found, result = await runtime.drive.read(
        DriveRef(harness.principal.space_id), "lyon-result.md"
    )
    assert "## Result\n\nTake the 9:04 train." in result.decode()
    assert "## Request" in result.decode()

    with pytest.raises(NotFound):
        await runtime.drive.save_session(
            harness.principal, session.id, "x.md", task_id="tsk_00000000000000000000000000"
        )


async def test_memory_index_is_read_before_each_task(harness: Harness) -> None:
    runtime = harness.runtime
    agent = await harness.agent()
    ref = DriveRef(harness.principal.space_id, agent.id)
    who = Actor(member_id=harness.principal.member_id)
    await runtime.drive.write(ref, MEMORY_INDEX, iterate_bytes(b"- The user likes trains.\n"), who)
    session = await runtime.sessions.create(harness.principal, agent.id)
    harness.model.add(reply("ok"))
    sent = await runtime.sessions.send(harness.principal, session.id, "hi")
    await harness.wait_task(sent.task_id)
    system = [t.text for t in harness.model.inputs[0].turns if isinstance(t, SystemText)]
    assert "Your memory index (MEMORY.md):\n- The user likes trains.\n" in system

    reader = DriveMemory(runtime.drive, max_bytes=10)
    shown = await reader(agent)
    assert shown is not None and shown.startswith("- The user")
    assert "only the first 10" in shown


async def test_remember_writes_a_memory_file_and_indexes_it(harness: Harness) -> None:
    runtime = harness.runtime
    agent = await harness.agent()
    session = await runtime.sessions.create(harness.principal, agent.id)
    tool = RememberTool(runtime.drive)
    context = ToolContext(agent, session, "tsk_1", "call_1")

    outcome = await tool.run(context, {"text": "Prefers window seats.\nAlways."})
    assert outcome.status == "ok"
    ref = DriveRef(harness.principal.space_id, agent.id)
    _found, index = await runtime.drive.read(ref, MEMORY_INDEX)
    memory_file = next(p for p in outcome.files if p.startswith("/agent/memory/"))
    name = memory_file.removeprefix("/agent/")
    assert f"- [Prefers window seats.]({name})\n" in index.decode()
    _found, content = await runtime.drive.read(ref, name)
    assert content == b"Prefers window seats.\nAlways.\n"
    history = await runtime.drive.history(ref, name)
    assert history[0].actor == Actor(agent_id=agent.id, task_id="tsk_1", session_id=session.id)

    again = await tool.run(context, {"text": "Prefers window seats.\nAlways."})
    assert again.status == "ok"
    _found, index_again = await runtime.drive.read(ref, MEMORY_INDEX)
    assert index_again == index, "a repeated call (same idempotency key) adds nothing"

    await tool.run(ToolContext(agent, session, "tsk_1", "call_2"), {"text": "Vegetarian."})
    _found, index_two = await runtime.drive.read(ref, MEMORY_INDEX)
    assert index_two.decode().count("\n- [") == 2
    assert (await tool.run(context, {"text": "  "})).status == "error"


async def test_remember_is_refused_to_external_users_unless_allowed(harness: Harness) -> None:
    runtime = harness.runtime
    agent = await harness.agent()
    session = await runtime.sessions.create(harness.principal, agent.id, external_user_id="u1")
    tool = RememberTool(runtime.drive)
    outcome = await tool.run(ToolContext(agent, session, "tsk_1", "call_1"), {"text": "x"})
    assert outcome.status == "error" and "read-only" in outcome.output
    with pytest.raises(NotFound):
        await runtime.drive.read(DriveRef(harness.principal.space_id, agent.id), MEMORY_INDEX)

    open_agent = await harness.agent(external_users_can_write=True)
    session = await runtime.sessions.create(harness.principal, open_agent.id, external_user_id="u1")
    allowed = await tool.run(ToolContext(open_agent, session, "tsk_1", "call_1"), {"text": "x"})
    assert allowed.status == "ok"


async def test_deleting_an_agent_deletes_its_drive(harness: Harness) -> None:
    runtime = harness.runtime
    agent = await harness.agent()
    ref = DriveRef(harness.principal.space_id, agent.id)
    who = Actor(member_id=harness.principal.member_id)
    await runtime.drive.write(ref, "x.txt", iterate_bytes(b"x"), who)
    await runtime.agents.delete(harness.principal, agent.id)
    async with harness.store.read() as tx:
        assert await tx.get_drive_file(ref, "x.txt") is None
