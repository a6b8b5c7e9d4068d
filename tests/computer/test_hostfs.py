"""Host-side file access (``HostRoot`` / ``HostFiles``) against files an agent has rigged.

The agent owns everything under its roots and can leave a symlink, a FIFO, a socket or a hard
link anywhere. The host reads, writes, lists and removes those files for the file tools and the
API as root, so one followed link is a host file disclosed or overwritten. A corpus of rigged
paths (links pointing outside and inside, at every depth, absolute and relative, dangling,
looping, plus ``..`` strings) is run against the real implementation, which must refuse each
with ``InvalidPath`` and leave every file outside unchanged, and against a naive
``root / user_path`` implementation, which must leak: that control proves the corpus has teeth.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from openbuda.computer._files import HostFiles, roots_from
from openbuda.computer._hostfs import HostRoot
from openbuda.computer._layout import ComputerLayout
from openbuda.computer._paths import Mount
from openbuda.computer.process import ProcessSandbox
from openbuda.domain.errors import InvalidPath, NotFound, TooLarge
from openbuda.ports import SandboxSpec, SandboxView

pytestmark = pytest.mark.anyio

SECRET = b"host secret: do not disclose\n"
INSIDE = b"inside file\n"

# Paths whose every reading leads outside the root if links or '..' are honoured.
OUTSIDE_CORPUS = [
    "out_rel",  # -> ../outside/secret.txt
    "out_abs",  # -> <absolute>/outside/secret.txt
    "/agent/out_rel",
    "out_dir/secret.txt",  # out_dir -> ../outside
    "out_dir_abs/secret.txt",  # out_dir_abs -> <absolute>/outside
    "sub/out_deep/secret.txt",  # sub/out_deep -> ../../outside
    "chain/secret.txt",  # chain -> in_dir/out_up -> ../../outside (a link to a link)
    "../outside/secret.txt",
    "/agent/../outside/secret.txt",
    "sub/../../outside/secret.txt",
]
# Links that stay inside the root: refused all the same (a link is never followed).
INSIDE_CORPUS = ["in_file", "in_link/inner.txt", "in_abs", "loop", "loop/x"]
# Names that do not exist yet behind a link: a write must not create them outside.
DANGLING_CORPUS = ["dangling", "dangling_dir/new.txt", "out_dir/new.txt"]


@dataclass(frozen=True, slots=True)
class Tree:
    root: Path
    outside: Path
    files: HostFiles

    @property
    def secret(self) -> Path:
        return self.outside / "secret.txt"


def _snapshot(directory: Path) -> dict[str, object]:
    """Every entry below ``directory`` (links as their text, files as their bytes)."""
    found: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = str(path.relative_to(directory))
            if path.is_symlink():
                found[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = (path.read_bytes(), path.stat().st_ino)
    return found


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "in_dir").mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (root / "real.txt").write_bytes(INSIDE)
    (root / "sub" / "inner.txt").write_bytes(INSIDE)
    (root / "in_dir" / "inner.txt").write_bytes(INSIDE)
    links = {
        "out_rel": "../outside/secret.txt",
        "out_abs": str(outside / "secret.txt"),
        "out_dir": "../outside",
        "out_dir_abs": str(outside),
        "sub/out_deep": "../../outside",
        "in_dir/out_up": "../../outside",
        "chain": "in_dir/out_up",
        "in_file": "real.txt",
        "in_link": "sub",
        "in_abs": str(root / "real.txt"),
        "loop": "loop",
        "dangling": "../outside/created.txt",
        "dangling_dir": "../outside/newdir",
    }
    for name, target in links.items():
        (root / name).symlink_to(target)
    roots: dict[Mount, HostRoot | None] = {
        "agent": HostRoot(root, "/agent"),
        "space": HostRoot(tmp_path / "space", "/space"),
        "session": HostRoot(tmp_path / "session", "/session"),
        "tmp": HostRoot(tmp_path / "tmp", "/tmp"),
    }
    return Tree(root, outside, HostFiles(roots_from(roots), SandboxView(session_id="s1")))


def _naive_path(root: Path, path: str) -> Path:
    """THE CONTROL: what a careless implementation does — join the user's path and open it."""
    return root / path.removeprefix("/agent").lstrip("/")


# ---------------------------------------------------------------------------------------------
# The control case


@pytest.mark.parametrize("path", OUTSIDE_CORPUS)
def test_control_a_naive_join_leaks_the_outside_file(tree: Tree, path: str) -> None:
    """Proves the corpus has teeth: each path discloses the host file to a plain join."""
    assert _naive_path(tree.root, path).read_bytes() == SECRET


def test_control_a_naive_join_writes_outside(tree: Tree) -> None:
    _naive_path(tree.root, "out_rel").write_bytes(b"overwritten")
    _naive_path(tree.root, "dangling").write_bytes(b"planted")
    assert tree.secret.read_bytes() == b"overwritten"
    assert (tree.outside / "created.txt").read_bytes() == b"planted"


# ---------------------------------------------------------------------------------------------
# Symlinks: refused, never followed


@pytest.mark.parametrize("path", OUTSIDE_CORPUS + INSIDE_CORPUS)
async def test_reading_through_a_link_or_dot_dot_is_refused(tree: Tree, path: str) -> None:
    with pytest.raises(InvalidPath):
        await tree.files.read(path)


@pytest.mark.parametrize("path", OUTSIDE_CORPUS + INSIDE_CORPUS + DANGLING_CORPUS)
async def test_writing_through_a_link_is_refused_and_changes_nothing(tree: Tree, path: str) -> None:
    before_outside, before_root = _snapshot(tree.outside), _snapshot(tree.root)
    with pytest.raises(InvalidPath):
        await tree.files.write(path, b"overwritten")
    assert _snapshot(tree.outside) == before_outside
    assert _snapshot(tree.root) == before_root


@pytest.mark.parametrize(
    "path",
    [
        "out_dir",
        "out_dir_abs",
        "sub/out_deep",
        "chain",
        "in_dir/out_up",
        "in_link",
        "loop",
        "../outside",
    ],
)
async def test_listing_through_a_link_is_refused(tree: Tree, path: str) -> None:
    with pytest.raises(InvalidPath):
        await tree.files.list(path)


@pytest.mark.parametrize("path", ["out_dir/secret.txt", "sub/out_deep/secret.txt", "chain/x"])
async def test_a_link_in_the_middle_is_named_as_a_link(tree: Tree, path: str) -> None:
    with pytest.raises(InvalidPath, match="symbolic link"):
        await tree.files.read(path)


async def test_a_listing_shows_links_as_links_without_their_targets(tree: Tree) -> None:
    entries = {entry.path: entry for entry in await tree.files.list("/agent")}
    assert entries["/agent/out_rel"].kind == "symlink"
    assert entries["/agent/out_dir"].kind == "symlink"
    assert entries["/agent/real.txt"].kind == "file"
    assert entries["/agent/sub"].kind == "dir"
    # lstat: the size of the link's own text, not of the secret it points at
    assert entries["/agent/out_abs"].size == len(str(tree.secret))
    nested = {entry.path: entry.kind for entry in await tree.files.list("sub")}
    assert nested == {"/agent/sub/inner.txt": "file", "/agent/sub/out_deep": "symlink"}


async def test_stat_reports_the_link_itself(tree: Tree) -> None:
    entry = await tree.files.stat("out_abs")
    assert entry is not None and entry.kind == "symlink"
    with pytest.raises(InvalidPath):
        await tree.files.stat("out_dir/secret.txt")


async def test_removing_a_link_removes_the_link_not_its_target(tree: Tree) -> None:
    assert await tree.files.remove("out_rel") is True
    assert await tree.files.remove("out_dir") is True
    assert not (tree.root / "out_rel").is_symlink()
    assert not (tree.root / "out_dir").is_symlink()
    assert tree.secret.read_bytes() == SECRET
    assert tree.outside.is_dir()


@pytest.mark.parametrize(
    "path", ["out_dir/secret.txt", "sub/out_deep/secret.txt", "chain/secret.txt"]
)
async def test_removing_through_a_link_is_refused(tree: Tree, path: str) -> None:
    with pytest.raises(InvalidPath):
        await tree.files.remove(path)
    assert tree.secret.read_bytes() == SECRET


async def test_a_link_swapped_in_after_a_write_is_not_followed_by_the_next(tree: Tree) -> None:
    """The agent replaces a file the host wrote with a link between two host writes."""
    await tree.files.write("notes.txt", b"v1")
    (tree.root / "notes.txt").unlink()
    (tree.root / "notes.txt").symlink_to(tree.secret)
    with pytest.raises(InvalidPath):
        await tree.files.write("notes.txt", b"v2")
    with pytest.raises(InvalidPath):
        await tree.files.read("notes.txt")
    assert tree.secret.read_bytes() == SECRET


# ---------------------------------------------------------------------------------------------
# FIFOs, sockets, hard links


def _read_or_unblock(tree: Tree, name: str) -> BaseException | bytes:
    """Read ``name`` through ``HostRoot`` in a thread; if it blocks, unblock it and fail."""
    outcome: list[BaseException | bytes] = []
    root = HostRoot(tree.root, "/agent")

    def run() -> None:
        try:
            outcome.append(root.read((name,)))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        fd = os.open(tree.root / name, os.O_WRONLY | os.O_NONBLOCK)  # releases a blocked open
        os.close(fd)
        thread.join(5)
        pytest.fail(f"reading {name!r} blocked the host")
    return outcome[0]


def test_reading_a_fifo_does_not_block_and_is_refused(tree: Tree) -> None:
    os.mkfifo(tree.root / "pipe")
    outcome = _read_or_unblock(tree, "pipe")
    assert isinstance(outcome, InvalidPath)
    assert "not a regular file" in str(outcome)


async def test_writing_over_a_fifo_replaces_it_without_blocking(tree: Tree) -> None:
    os.mkfifo(tree.root / "pipe")
    await tree.files.write("pipe", b"plain now")
    assert stat.S_ISREG((tree.root / "pipe").lstat().st_mode)
    assert await tree.files.read("pipe") == b"plain now"


async def test_a_fifo_is_listed_as_other(tree: Tree) -> None:
    os.mkfifo(tree.root / "pipe")
    entry = await tree.files.stat("pipe")
    assert entry is not None and entry.kind == "other"


@pytest.fixture
def unix_socket(tree: Tree) -> Iterator[str]:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tree.root / "sock"))
        listener.listen()
        yield "sock"


async def test_reading_a_socket_is_refused(tree: Tree, unix_socket: str) -> None:
    with pytest.raises(InvalidPath, match="not a regular file"):
        await tree.files.read(unix_socket)


async def test_writing_a_hard_link_replaces_the_entry_not_the_other_file(tree: Tree) -> None:
    victim = tree.outside / "victim.txt"
    victim.write_bytes(b"victim")
    os.link(victim, tree.root / "hard.txt")
    assert victim.stat().st_nlink == 2
    await tree.files.write("hard.txt", b"agent data")
    assert await tree.files.read("hard.txt") == b"agent data"
    assert victim.read_bytes() == b"victim"
    assert victim.stat().st_nlink == 1
    assert (tree.root / "hard.txt").stat().st_ino != victim.stat().st_ino


async def test_removing_a_hard_link_leaves_the_other_file(tree: Tree) -> None:
    victim = tree.outside / "victim.txt"
    victim.write_bytes(b"victim")
    os.link(victim, tree.root / "hard.txt")
    assert await tree.files.remove("hard.txt") is True
    assert victim.read_bytes() == b"victim"


# ---------------------------------------------------------------------------------------------
# Plain behaviour


@pytest.mark.parametrize("path", ["sub", "/agent", "", "in_dir/"])
async def test_reading_a_directory_is_refused(tree: Tree, path: str) -> None:
    with pytest.raises(InvalidPath, match="is a directory"):
        await tree.files.read(path)


async def test_writing_over_a_directory_is_refused(tree: Tree) -> None:
    with pytest.raises(InvalidPath, match="is a directory"):
        await tree.files.write("sub", b"x")
    assert (tree.root / "sub" / "inner.txt").read_bytes() == INSIDE


async def test_missing_files(tree: Tree) -> None:
    with pytest.raises(NotFound):
        await tree.files.read("nope.txt")
    with pytest.raises(NotFound):
        await tree.files.read("nope/deeper.txt")
    with pytest.raises(NotFound):
        await tree.files.list("nope")
    assert await tree.files.stat("nope.txt") is None
    assert await tree.files.stat("nope/deeper.txt") is None
    assert await tree.files.remove("nope.txt") is False


async def test_max_bytes_refuses_a_larger_file(tree: Tree) -> None:
    await tree.files.write("big.bin", b"x" * 1000)
    assert await tree.files.read("big.bin", max_bytes=1000) == b"x" * 1000
    with pytest.raises(TooLarge):
        await tree.files.read("big.bin", max_bytes=999)


async def test_remove_refuses_a_non_empty_directory_and_the_root(tree: Tree) -> None:
    with pytest.raises(InvalidPath, match="not empty"):
        await tree.files.remove("sub")
    with pytest.raises(InvalidPath):
        await tree.files.remove("/agent")
    await tree.files.remove("in_dir/inner.txt")
    await tree.files.remove("in_dir/out_up")
    assert await tree.files.remove("in_dir") is True


def test_write_creates_parents_owned_by_the_agent(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    (tmp_path / "root" / "existing").mkdir(parents=True)
    root = HostRoot(tmp_path / "root", "/agent", owner=(12345, 12345))
    written = root.write(("existing", "a", "b", "c.txt"), b"data")
    assert (written.st_uid, written.st_gid) == (12345, 12345)
    for path in ("existing/a", "existing/a/b", "existing/a/b/c.txt"):
        st = (tmp_path / "root" / path).stat()
        assert (st.st_uid, st.st_gid) == (12345, 12345), path
    assert (tmp_path / "root" / "existing").stat().st_uid == 0  # not taken over


async def test_a_write_is_an_atomic_replace(tree: Tree) -> None:
    await tree.files.write("doc.txt", b"old content")
    reader = os.open(tree.root / "doc.txt", os.O_RDONLY)
    try:
        old_inode = os.fstat(reader).st_ino
        entry = await tree.files.write("doc.txt", b"new content, longer")
        assert os.read(reader, 100) == b"old content"  # the old file, whole and unchanged
    finally:
        os.close(reader)
    assert await tree.files.read("doc.txt") == b"new content, longer"
    assert (tree.root / "doc.txt").stat().st_ino != old_inode
    assert entry.size == len(b"new content, longer") and entry.path == "/agent/doc.txt"
    assert not [name for name in os.listdir(tree.root) if name.startswith(".openbuda")]


async def test_a_listing_hides_unfinished_writes(tree: Tree) -> None:
    (tree.root / ".openbuda-write-1-abc").write_bytes(b"partial")
    names = {entry.path for entry in await tree.files.list()}
    assert "/agent/real.txt" in names
    assert not [name for name in names if ".openbuda-write-" in name]


def test_usage_counts_links_not_their_targets(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(os.urandom(1 << 20))
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.txt").write_bytes(b"x")
    (root / "big").symlink_to(outside)
    (root / "alldir").symlink_to(tmp_path)
    used, _ = HostRoot(root, "/agent").usage()
    assert used < 64 * 1024  # the 1 MiB outside and the whole tmp_path are not counted


# ---------------------------------------------------------------------------------------------
# Views


async def test_a_read_only_view_refuses_writes_to_agent_and_space(tmp_path: Path) -> None:
    roots: dict[Mount, HostRoot | None] = {
        mount: HostRoot(tmp_path / mount, f"/{mount}")
        for mount in ("agent", "space", "session", "tmp")
    }
    writable = HostFiles(roots_from(roots), SandboxView(session_id="s1"))
    await writable.write("/agent/kept.txt", b"kept")
    await writable.write("/space/shared.txt", b"shared")
    read_only = HostFiles(roots_from(roots), SandboxView(session_id="s1", shared_writable=False))
    for path in ("/agent/x.txt", "x.txt", "/space/x.txt", "/agent/kept.txt"):
        with pytest.raises(InvalidPath, match="read-only"):
            await read_only.write(path, b"x")
    for path in ("/agent/kept.txt", "/space/shared.txt"):
        with pytest.raises(InvalidPath, match="read-only"):
            await read_only.remove(path)
    assert await read_only.read("kept.txt") == b"kept"
    assert await read_only.read("/space/shared.txt") == b"shared"
    assert [entry.path for entry in await read_only.list()] == ["/agent/kept.txt"]
    await read_only.write("/session/own.txt", b"own")
    await read_only.write("/tmp/t.txt", b"t")
    assert await read_only.remove("/session/own.txt") is True
    assert not (tmp_path / "agent" / "x.txt").exists()


async def test_the_console_view_has_no_session(tmp_path: Path) -> None:
    sandbox = ProcessSandbox(SandboxSpec(space_id="s", agent_id="a"), ComputerLayout(tmp_path))
    console = sandbox.files(SandboxView(session_id=None))
    await console.write("/agent/a.txt", b"a")
    with pytest.raises(InvalidPath, match="/session"):
        await console.write("/session/x.txt", b"x")
    with pytest.raises(InvalidPath, match="/session"):
        await console.read("/session/x.txt")
    with pytest.raises(InvalidPath, match="/session"):
        await console.list("/session")
    with pytest.raises(InvalidPath, match="/session"):
        await console.stat("/session")
    session = sandbox.files(SandboxView(session_id="s1"))
    await session.write("/session/x.txt", b"x")
    assert await session.read("/session/x.txt") == b"x"
    await sandbox.destroy()
