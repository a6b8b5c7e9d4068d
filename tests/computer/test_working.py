"""``HostWorkingCopy`` and ``HostRoot.scan`` on host trees: deep trees, over-long paths, names
Drive cannot hold, unfinished writes, and a root whose filesystem changed under it (a computer's
disk unmounted: it must fail, never look empty). Links and the sandbox backends are covered by
``tests/conformance/test_sandbox.py``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbuda.computer._hostfs import HostRoot
from openbuda.computer._working import HostWorkingCopy, drive_name
from openbuda.domain.drive import MAX_PATH_BYTES
from openbuda.domain.errors import Unavailable


def _copy(root: Path) -> HostWorkingCopy:
    return HostWorkingCopy.pinned(HostRoot(root, "/agent"))


def test_a_deep_tree_is_scanned_whole(tmp_path: Path) -> None:
    """Past the levels a scan keeps open, directories are reopened from the deepest open one."""
    deep = tmp_path.joinpath(*(f"d{level}" for level in range(100)))
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("bottom")
    middle = tmp_path.joinpath(*(f"d{level}" for level in range(70)))
    (middle / "middle.txt").write_text("middle")
    (middle / "sibling").mkdir()
    (middle / "sibling" / "s.txt").write_text("s")
    scanned = _copy(tmp_path).scan()
    prefix = "/".join(f"d{level}" for level in range(70))
    assert sorted(scanned) == sorted(
        [
            "/".join(f"d{level}" for level in range(100)) + "/bottom.txt",
            f"{prefix}/middle.txt",
            f"{prefix}/sibling/s.txt",
        ]
    )
    assert scanned[f"{prefix}/middle.txt"].size == len("middle")


def _make_nested(root: Path, names: list[str], files: dict[int, str]) -> None:
    """Nested folders by descriptors (their paths pass the host's PATH_MAX); ``files`` puts a
    file named by the value in the folder at the depth of the key."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for depth, name in enumerate(names, start=1):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if depth in files:
                os.close(os.open(files[depth], os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def test_paths_longer_than_drive_allows_are_skipped(tmp_path: Path) -> None:
    name = "n" * 200
    levels = MAX_PATH_BYTES // (len(name) + 1) + 2
    _make_nested(tmp_path, [name] * levels, {levels - 3: "fits.txt", levels: "too-long.txt"})
    fits = "/".join([name] * (levels - 3)) + "/fits.txt"
    assert len(fits.encode()) <= MAX_PATH_BYTES
    assert list(_copy(tmp_path).scan()) == [fits]


def test_unfinished_writes_are_not_scanned(tmp_path: Path) -> None:
    (tmp_path / ".openbuda-write-123-abc").write_text("half")
    (tmp_path / "real.txt").write_text("whole")
    assert list(_copy(tmp_path).scan()) == ["real.txt"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("plain.txt", True),
        ("with space", True),
        ("été.txt", True),
        (".hidden", True),
        ("...", True),
        (".", False),
        ("..", False),
        ("tab\there", False),
        ("del\x7f", False),
        ("back\\slash", False),
        ("e\u0301.txt", False),  # not NFC: Drive would hold it under another name
        ("latin\udce9.txt", False),  # not UTF-8 (a surrogate escape)
        ("\uff0e\uff0e", False),  # fullwidth '..'
        ("x" * 255, True),
        ("x" * 256, False),
        ("é" * 128, False),  # 256 bytes
    ],
)
def test_drive_names(name: str, ok: bool) -> None:
    assert drive_name(name) is ok


@pytest.fixture
def mounted_over(tmp_path: Path) -> Iterator[Path]:
    """A directory a tmpfs can be mounted on (root only); unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    target = tmp_path / "disk"
    target.mkdir()
    yield target
    subprocess.run(["umount", str(target)], check=False, capture_output=True)


def test_a_root_on_another_filesystem_than_pinned_fails(mounted_over: Path) -> None:
    """The working copy was made while the disk was mounted; once another filesystem shows at
    the root (here a tmpfs mounted over it: the same as the disk unmounted), nothing is read
    or written there."""
    (mounted_over / "file.txt").write_text("on the pinned filesystem")
    copy = _copy(mounted_over)
    assert list(copy.scan()) == ["file.txt"]
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "tmpfs", str(mounted_over)], check=False, capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    with pytest.raises(Unavailable):
        copy.scan()
    with pytest.raises(Unavailable):
        copy.replace("new.txt", [b"x"])
    with pytest.raises(Unavailable):
        copy.remove("file.txt")
    assert os.listdir(mounted_over) == []
    subprocess.run(["umount", str(mounted_over)], check=True)
    assert list(copy.scan()) == ["file.txt"]
