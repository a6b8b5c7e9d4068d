"""Store conformance: Drive metadata (``DriveReader``, ``DriveWriter``): versions per path,
tombstones, restores, the Drive-wide change_seq, live byte counts, prefix listings, history
pages, isolation of spaces, deletion, concurrent writers."""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from openbuda.domain.drive import MAX_PATH_BYTES, Actor, DriveFile, DriveRef, DriveVersion
from openbuda.domain.errors import InvalidPath, InvalidRequest
from openbuda.ports import NewDriveVersion
from openbuda.stores import SqlStore
from openbuda.stores._drive import prefix_end
from openbuda.stores.schema import PATH_HEAD_CHARS

from .store_world import T0, World, at

pytestmark = pytest.mark.anyio

MEMBER = Actor(member_id="mem_1")
AGENT_ACTOR = Actor(agent_id="agt_1", task_id="tsk_1", session_id="ses_1")


def sha(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def agent_drive(world: World) -> DriveRef:
    return DriveRef(world.space.id, world.agent.id)


def space_drive(world: World) -> DriveRef:
    return DriveRef(world.space.id)


async def add(
    store: SqlStore,
    drive: DriveRef,
    path: str,
    content: str | None,
    *,
    when: Any = T0,
    actor: Actor = MEMBER,
    restored_from: int | None = None,
) -> DriveVersion:
    """Add a write (``content``), a tombstone (``None``) or, with ``restored_from``, a restore."""
    op = "restore" if restored_from is not None else "write" if content is not None else "delete"
    new = NewDriveVersion(
        path,
        op,
        None if content is None else sha(content),
        0 if content is None else len(content.encode()),
        actor,
        restored_from,
    )
    async with store.write() as tx:
        return await tx.add_drive_version(drive, new, when)


async def read(store: SqlStore, method: str, *args: Any, **kwargs: Any) -> Any:
    async with store.read() as tx:
        return await getattr(tx, method)(*args, **kwargs)


async def paths(store: SqlStore, drive: DriveRef, prefix: str = "", **kwargs: Any) -> list[str]:
    files: list[DriveFile] = await read(store, "list_drive_files", drive, prefix, **kwargs)
    return [file.path for file in files]


# ---------------------------------------------------------------------------------------------
# Versions


async def test_versions_are_numbered_per_path_and_seqs_per_drive(world: World) -> None:
    drive = agent_drive(world)
    first = await add(world.store, drive, "notes/a.md", "one", when=at(1), actor=AGENT_ACTOR)
    other = await add(world.store, drive, "b.md", "bee", when=at(2))
    second = await add(world.store, drive, "notes/a.md", "two!", when=at(3))
    assert [(v.path, v.version, v.change_seq) for v in (first, other, second)] == [
        ("notes/a.md", 1, 1),
        ("b.md", 1, 2),
        ("notes/a.md", 2, 3),
    ]
    assert first == DriveVersion("notes/a.md", 1, "write", sha("one"), 3, AGENT_ACTOR, at(1), 1)
    async with world.store.read() as tx:
        assert await tx.get_drive_version(drive, "notes/a.md", 1) == first
        assert await tx.get_drive_version(drive, "notes/a.md", 2) == second
        assert await tx.get_drive_version(drive, "notes/a.md", 3) is None
        assert await tx.get_drive_version(drive, "missing.md", 1) is None
        assert await tx.get_drive_file(drive, "notes/a.md") == DriveFile(
            "notes/a.md", 2, sha("two!"), 4, at(3), 3
        )
        assert await tx.get_drive_file(drive, "missing.md") is None
        assert await tx.drive_seq(drive) == 3
        assert await tx.drive_seq(space_drive(world)) == 0


async def test_a_tombstone_hides_the_file_until_it_is_written_again(world: World) -> None:
    drive = agent_drive(world)
    await add(world.store, drive, "doc.txt", "hello")
    tombstone = await add(world.store, drive, "doc.txt", None, when=at(5))
    assert (tombstone.op, tombstone.sha256, tombstone.size, tombstone.deleted) == (
        "delete",
        None,
        0,
        True,
    )
    deleted = await read(world.store, "get_drive_file", drive, "doc.txt")
    assert deleted == DriveFile("doc.txt", 2, None, 0, at(5), 2)
    assert deleted.deleted
    assert await paths(world.store, drive) == []
    assert await read(world.store, "drive_changes", drive, 1) == [deleted]
    again = await add(world.store, drive, "doc.txt", "back", when=at(6))
    assert (again.version, again.op, again.change_seq) == (3, "write", 3)
    assert await paths(world.store, drive) == ["doc.txt"]
    history = await read(world.store, "list_drive_versions", drive, "doc.txt")
    assert [(v.version, v.op, v.deleted) for v in history] == [
        (3, "write", False),
        (2, "delete", True),
        (1, "write", False),
    ]


async def test_a_restore_records_where_it_came_from(world: World) -> None:
    drive = space_drive(world)
    await add(world.store, drive, "plan.md", "first")
    await add(world.store, drive, "plan.md", "second")
    restored = await add(world.store, drive, "plan.md", "first", restored_from=1, when=at(9))
    assert restored == DriveVersion(
        "plan.md", 3, "restore", sha("first"), 5, MEMBER, at(9), 3, restored_from=1
    )
    assert await read(world.store, "get_drive_version", drive, "plan.md", 3) == restored
    assert await read(world.store, "drive_usage", world.space.id) == len("first")
    # Restoring a tombstone deletes the file again.
    await add(world.store, drive, "plan.md", None)
    await add(world.store, drive, "plan.md", "again")
    back = await add(world.store, drive, "plan.md", None, restored_from=4)
    assert (back.op, back.sha256, back.restored_from, back.version) == ("restore", None, 4, 6)
    assert await paths(world.store, drive) == []
    assert await read(world.store, "drive_usage", world.space.id) == 0


async def test_a_restore_of_a_version_that_does_not_exist_is_refused(world: World) -> None:
    drive = agent_drive(world)
    await add(world.store, drive, "x.md", "content")
    for restored_from in (2, 0):
        with pytest.raises(InvalidRequest, match="cannot restore"):
            await add(world.store, drive, "x.md", "content", restored_from=restored_from)
    with pytest.raises(InvalidRequest, match="cannot restore"):
        await add(world.store, drive, "new.md", "content", restored_from=1)
    async with world.store.read() as tx:
        assert await tx.drive_seq(drive) == 1
        assert await tx.get_drive_file(drive, "new.md") is None
        assert len(await tx.list_drive_versions(drive, "x.md")) == 1


@pytest.mark.parametrize(
    ("path", "op", "digest", "size", "restored_from"),
    [
        ("a.md", "write", None, 0, None),
        ("a.md", "delete", sha("x"), 1, None),
        ("a.md", "delete", None, 3, None),
        ("a.md", "write", sha("x"), -1, None),
        ("a.md", "write", "ABC", 1, None),
        ("a.md", "write", sha("x").upper(), 1, None),
        ("a.md", "rename", sha("x"), 1, None),
        ("a.md", "restore", sha("x"), 1, None),
        ("a.md", "write", sha("x"), 1, 1),
        ("e\u0301.md", "write", sha("x"), 1, None),
    ],
    ids=[
        "write-without-content",
        "delete-with-content",
        "tombstone-with-bytes",
        "negative-size",
        "short-sha",
        "uppercase-sha",
        "unknown-op",
        "restore-without-source",
        "write-with-source",
        "not-nfc",
    ],
)
async def test_inconsistent_versions_are_refused(
    world: World, path: str, op: Any, digest: str | None, size: int, restored_from: int | None
) -> None:
    drive = agent_drive(world)
    new = NewDriveVersion(path, op, digest, size, MEMBER, restored_from)
    with pytest.raises(InvalidRequest):
        async with world.store.write() as tx:
            await tx.add_drive_version(drive, new, T0)
    assert await read(world.store, "drive_seq", drive) == 0


async def test_an_invalid_path_is_refused(world: World) -> None:
    new = NewDriveVersion("../up.md", "write", sha("x"), 1, MEMBER)
    with pytest.raises(InvalidPath):
        async with world.store.write() as tx:
            await tx.add_drive_version(agent_drive(world), new, T0)


async def test_a_rolled_back_version_leaves_nothing(world: World) -> None:
    drive = agent_drive(world)
    await add(world.store, drive, "kept.md", "kept")

    async def add_then_fail() -> None:
        async with world.store.write() as tx:
            new = NewDriveVersion("lost.md", "write", sha("lost"), 4, MEMBER)
            await tx.add_drive_version(drive, new, T0)
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        await add_then_fail()
    async with world.store.read() as tx:
        assert await tx.drive_seq(drive) == 1
        assert await tx.get_drive_file(drive, "lost.md") is None
        assert await tx.drive_usage(world.space.id) == 4


# ---------------------------------------------------------------------------------------------
# Changes and usage


async def test_drive_changes_are_the_latest_versions_in_seq_order(world: World) -> None:
    drive = agent_drive(world)
    for path in ("a", "b", "c", "d"):
        await add(world.store, drive, path, path)
    await add(world.store, drive, "b", "b2")
    await add(world.store, drive, "a", None)
    changes: list[DriveFile] = await read(world.store, "drive_changes", drive, 0)
    assert [(f.path, f.version, f.change_seq, f.deleted) for f in changes] == [
        ("c", 1, 3, False),
        ("d", 1, 4, False),
        ("b", 2, 5, False),
        ("a", 2, 6, True),
    ]
    assert await read(world.store, "drive_changes", drive, 4) == changes[2:]
    assert await read(world.store, "drive_changes", drive, 6) == []
    pages: list[list[str]] = []
    after = 0
    while page := await read(world.store, "drive_changes", drive, after, limit=3):
        pages.append([f.path for f in page])
        after = page[-1].change_seq
    assert pages == [["c", "d", "b"], ["a"]]
    with pytest.raises(InvalidRequest):
        await read(world.store, "drive_changes", drive, 0, limit=0)


async def test_usage_counts_the_live_bytes_of_every_drive_of_the_space(world: World) -> None:
    agent, space = agent_drive(world), space_drive(world)
    store = world.store

    async def usage() -> int:
        return await read(store, "drive_usage", world.space.id)

    assert await usage() == 0
    await add(store, agent, "a", "12345")
    await add(store, space, "s", "123")
    assert await usage() == 8
    await add(store, agent, "a", "1234567890")
    assert await usage() == 13
    await add(store, agent, "a", "12")
    assert await usage() == 5
    await add(store, agent, "a", None)
    assert await usage() == 3
    await add(store, agent, "a", "1234")
    assert await usage() == 7
    await add(store, agent, "empty", "")
    assert await usage() == 7
    other = await World.make(store, "other")
    await add(store, agent_drive(other), "a", "x" * 100)
    assert await usage() == 7
    assert await read(store, "drive_usage", other.space.id) == 100


async def test_usage_holds_sizes_beyond_32_bits(world: World) -> None:
    big = NewDriveVersion("video.mp4", "write", sha("video"), 5 * 2**32, MEMBER)
    async with world.store.write() as tx:
        stored = await tx.add_drive_version(agent_drive(world), big, T0)
    assert stored.size == 5 * 2**32
    async with world.store.read() as tx:
        assert await tx.drive_usage(world.space.id) == 5 * 2**32
        found = await tx.get_drive_file(agent_drive(world), "video.mp4")
        assert found is not None and found.size == 5 * 2**32


# ---------------------------------------------------------------------------------------------
# Listings


async def test_prefix_listing_matches_percent_and_underscore_literally(world: World) -> None:
    drive = agent_drive(world)
    names = [
        "a/b.txt",
        "a/c/d.txt",
        "a%/x",
        "a_/y",
        "ab/z",
        "a",
        "a0",
        "b",
        "abc%d/e",
        "Ä/x",
        "é/café.md",
        "日本/ファイル.md",
        "\U0001f600/smile",
        "gone/file",
    ]
    for name in names:
        await add(world.store, drive, unicodedata.normalize("NFC", name), name)
    await add(world.store, drive, "gone/file", None)
    live = [unicodedata.normalize("NFC", name) for name in names if name != "gone/file"]
    assert await paths(world.store, drive) == sorted(live)
    assert await paths(world.store, drive, "a/") == ["a/b.txt", "a/c/d.txt"]
    assert await paths(world.store, drive, "a/c/") == ["a/c/d.txt"]
    assert await paths(world.store, drive, "a%/") == ["a%/x"]
    assert await paths(world.store, drive, "a_/") == ["a_/y"]
    assert await paths(world.store, drive, "abc%") == ["abc%d/e"]
    assert await paths(world.store, drive, "é/") == ["é/café.md"]
    assert await paths(world.store, drive, "日本/") == ["日本/ファイル.md"]
    assert await paths(world.store, drive, "\U0001f600/") == ["\U0001f600/smile"]
    assert await paths(world.store, drive, "gone/") == []
    assert await paths(world.store, drive, "zzz/") == []
    assert await paths(world.store, drive, "", limit=3) == sorted(live)[:3]
    assert await paths(world.store, drive, "a/", limit=1) == ["a/b.txt"]
    with pytest.raises(InvalidRequest):
        await paths(world.store, drive, "", limit=0)


def test_prefix_end_is_the_least_string_above_the_prefix() -> None:
    assert prefix_end("a/") == "a0"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff\U0010ffff") is None
    assert prefix_end("") is None
    assert prefix_end("x\ud7ff") == "x\ue000"


async def test_paths_of_4096_bytes_are_stored_listed_and_versioned(world: World) -> None:
    drive = agent_drive(world)
    segment = "\U0001f600" * 63  # 252 bytes, the most four-byte characters a name holds
    stem = "/".join([segment] * 16)
    long_a = f"{stem}/{'a' * (MAX_PATH_BYTES - len(stem.encode()) - 1)}"
    long_b = f"{stem}/{'b' * 10}"
    assert len(long_a.encode()) == MAX_PATH_BYTES
    assert len(stem) > PATH_HEAD_CHARS
    await add(world.store, drive, long_a, "one")
    await add(world.store, drive, long_a, "two")
    await add(world.store, drive, long_b, "three")
    await add(world.store, drive, "short", "four")
    assert await paths(world.store, drive) == sorted([long_a, long_b, "short"])
    assert await paths(world.store, drive, stem + "/") == [long_a, long_b]
    assert await paths(world.store, drive, stem + "/b") == [long_b]
    assert await paths(world.store, drive, segment + "/") == [long_a, long_b]
    history = await read(world.store, "list_drive_versions", drive, long_a)
    assert [(v.path, v.version) for v in history] == [(long_a, 2), (long_a, 1)]
    found = await read(world.store, "get_drive_file", drive, long_a)
    assert (found.path, found.version) == (long_a, 2)


async def test_history_pages_newest_first_below_before(world: World) -> None:
    drive = agent_drive(world)
    for number in range(1, 6):
        await add(world.store, drive, "log.md", f"v{number}", when=at(number))
    await add(world.store, drive, "other.md", "x")

    async def versions(**kwargs: Any) -> list[int]:
        found = await read(world.store, "list_drive_versions", drive, "log.md", **kwargs)
        return [version.version for version in found]

    assert await versions() == [5, 4, 3, 2, 1]
    assert await versions(limit=2) == [5, 4]
    assert await versions(limit=2, before=4) == [3, 2]
    assert await versions(limit=2, before=2) == [1]
    assert await versions(before=1) == []
    assert await versions(before=100) == [5, 4, 3, 2, 1]
    assert await read(world.store, "list_drive_versions", drive, "missing.md") == []
    with pytest.raises(InvalidRequest):
        await versions(limit=0)


# ---------------------------------------------------------------------------------------------
# Spaces, deletion, concurrency


async def test_a_drive_of_another_space_is_empty(world: World) -> None:
    other = await World.make(world.store, "other")
    for drive in (agent_drive(world), space_drive(world)):
        await add(world.store, drive, "secret.md", "secret")
    # The same keys in the other space: the agent's id (as if reused) and "space".
    for stranger in (DriveRef(other.space.id, world.agent.id), space_drive(other)):
        async with world.store.read() as tx:
            assert await tx.get_drive_file(stranger, "secret.md") is None
            assert await tx.list_drive_files(stranger) == []
            assert await tx.list_drive_versions(stranger, "secret.md") == []
            assert await tx.get_drive_version(stranger, "secret.md", 1) is None
            assert await tx.drive_changes(stranger, 0) == []
            assert await tx.drive_seq(stranger) == 0
        async with world.store.write() as tx:
            assert await tx.delete_drive(stranger) == 0
    assert await read(world.store, "drive_usage", other.space.id) == 0
    mine = await add(world.store, space_drive(other), "secret.md", "mine")
    assert (mine.version, mine.change_seq) == (1, 1)
    assert await paths(world.store, space_drive(world)) == ["secret.md"]
    assert await read(world.store, "drive_usage", world.space.id) == 12


async def test_delete_drive_forgets_its_metadata_only(world: World) -> None:
    agent, space = agent_drive(world), space_drive(world)
    await add(world.store, agent, "a.md", "a")
    await add(world.store, agent, "a.md", "aa")
    await add(world.store, agent, "dir/b.md", "b")
    await add(world.store, agent, "gone.md", "g")
    await add(world.store, agent, "gone.md", None)
    await add(world.store, space, "shared.md", "shared")
    async with world.store.write() as tx:
        assert await tx.delete_drive(agent) == 3
    async with world.store.read() as tx:
        assert await tx.list_drive_files(agent) == []
        assert await tx.get_drive_file(agent, "gone.md") is None
        assert await tx.list_drive_versions(agent, "a.md") == []
        assert await tx.drive_changes(agent, 0) == []
        assert await tx.drive_seq(agent) == 0
        assert await tx.drive_usage(world.space.id) == len("shared")
        assert [f.path for f in await tx.list_drive_files(space)] == ["shared.md"]
    async with world.store.write() as tx:
        assert await tx.delete_drive(agent) == 0
    again = await add(world.store, agent, "a.md", "new")
    assert (again.version, again.change_seq) == (1, 1)


async def test_concurrent_writers_of_one_drive_take_turns(world: World) -> None:
    drive = agent_drive(world)
    await add(world.store, drive, "shared.md", "base")
    first_added = anyio.Event()
    stored: dict[str, DriveVersion] = {}

    async def holder() -> None:
        async with world.store.write() as tx:
            new = NewDriveVersion("shared.md", "write", sha("first"), 5, MEMBER)
            stored["first"] = await tx.add_drive_version(drive, new, at(1))
            first_added.set()
            for _ in range(20):  # let the second writer reach the Drive's lock
                await anyio.lowlevel.checkpoint()

    async def follower() -> None:
        await first_added.wait()
        async with world.store.write() as tx:
            new = NewDriveVersion("shared.md", "write", sha("second!"), 7, MEMBER)
            stored["second"] = await tx.add_drive_version(drive, new, at(2))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(holder)
            group.start_soon(follower)
    assert [(v.version, v.change_seq) for v in (stored["first"], stored["second"])] == [
        (2, 2),
        (3, 3),
    ]
    latest = await read(world.store, "get_drive_file", drive, "shared.md")
    assert (latest.version, latest.size) == (3, 7)
    assert await read(world.store, "drive_usage", world.space.id) == 7


async def test_many_concurrent_writers_get_unique_versions_and_seqs(world: World) -> None:
    drive = agent_drive(world)
    results: list[DriveVersion] = []

    async def writer(number: int) -> None:
        path = "same.md" if number % 2 else f"own-{number}.md"
        results.append(await add(world.store, drive, path, "x" * number))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for number in range(1, 21):
                group.start_soon(writer, number)
    assert sorted(v.change_seq for v in results) == list(range(1, 21))
    assert sorted(v.version for v in results if v.path == "same.md") == list(range(1, 11))
    async with world.store.read() as tx:
        assert await tx.drive_seq(drive) == 20
        latest = await tx.get_drive_file(drive, "same.md")
        assert latest is not None and latest.version == 10
        own = sum(number for number in range(2, 21, 2))
        assert await tx.drive_usage(world.space.id) == own + latest.size
        assert len(await tx.list_drive_files(drive)) == 11


async def test_a_locked_drive_makes_other_writers_wait(world: World) -> None:
    drive = space_drive(world)
    locked = anyio.Event()
    order: list[str] = []

    async def holder() -> None:
        async with world.store.write() as tx:
            await tx.lock_drive(drive)  # creates the Drive's row: nothing was written yet
            locked.set()
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert await tx.get_drive_file(drive, "a.md") is None
            await tx.add_drive_version(
                drive, NewDriveVersion("a.md", "write", sha("held"), 4, MEMBER), at(1)
            )
            order.append("holder")

    async def waiter() -> None:
        await locked.wait()
        async with world.store.write() as tx:
            await tx.lock_drive(drive)
            current = await tx.get_drive_file(drive, "a.md")
            assert current is not None, "the lock is granted only after the holder committed"
            order.append("waiter")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(holder)
            group.start_soon(waiter)
    assert order == ["holder", "waiter"]
    async with world.store.read() as tx:
        assert await tx.drive_seq(drive) == 1
