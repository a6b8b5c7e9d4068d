"""The loop-mounted ext4 quota image (root with loop devices only): a full disk stops writes
without touching the host, files survive remounts, and images grow but never shrink."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbuda.computer._disk import (
    DiskUnavailable,
    is_mounted,
    loop_available,
    mount_image,
    unmount,
    usage,
)

OWNER = (200050, 200050)
MIB = 1 << 20

pytestmark = pytest.mark.skipif(
    not loop_available(), reason="needs root, e2fsprogs, mount and a free loop device"
)


class Disk:
    def __init__(self, base: Path) -> None:
        self.image = base / "images" / "agent.ext4"
        self.mountpoint = base / "agent"

    def mount(self, size_mb: int = 32) -> None:
        mount_image(self.image, self.mountpoint, size_mb=size_mb, owner=OWNER)

    def loop_devices(self) -> str:
        return subprocess.run(
            ["losetup", "-j", str(self.image)], capture_output=True, text=True, check=True
        ).stdout


@pytest.fixture
def disk() -> Iterator[Disk]:
    # not tmp_path: the owner's uid must be able to reach the mountpoint (pytest's is 0700)
    base = Path(tempfile.mkdtemp(prefix="openbuda-disk-"))
    base.chmod(0o711)
    created = Disk(base)
    try:
        yield created
    finally:
        try:
            unmount(created.mountpoint)
            assert not is_mounted(created.mountpoint)
            if created.image.exists():
                assert created.loop_devices() == ""  # the loop device went with the mount
        finally:
            if not is_mounted(created.mountpoint):
                shutil.rmtree(base)


def _as_owner(*argv: str) -> subprocess.CompletedProcess[str]:
    uid, gid = OWNER
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_full_image_stops_the_owners_writes_and_spares_the_host(disk: Disk) -> None:
    disk.mount(32)
    assert is_mounted(disk.mountpoint)
    stat = disk.mountpoint.stat()
    assert (stat.st_uid, stat.st_gid) == OWNER
    assert list(disk.mountpoint.iterdir()) == []  # no lost+found in the agent's files
    used, total = usage(disk.mountpoint)
    assert 24 * MIB < total <= 32 * MIB and used < total
    assert disk.image.stat().st_blocks * 512 < 16 * MIB  # sparse on the host

    fill = disk.mountpoint / "fill"
    result = _as_owner("dd", "if=/dev/zero", f"of={fill}", "bs=1M", "count=64")
    assert result.returncode != 0
    assert "No space left on device" in result.stderr
    assert 20 * MIB < fill.stat().st_size < 32 * MIB
    assert fill.stat().st_uid == OWNER[0]
    # the host's filesystem (where the image lives) still takes writes
    (disk.image.parent / "host-file").write_bytes(b"x" * MIB)
    assert (disk.image.parent / "host-file").stat().st_size == MIB
    # and deleting inside the image gives the space back
    fill.unlink()
    assert _as_owner("dd", "if=/dev/zero", f"of={fill}", "bs=1M", "count=8").returncode == 0


def test_files_survive_unmount_and_remount(disk: Disk) -> None:
    disk.mount()
    (disk.mountpoint / "notes.txt").write_text("kept")
    disk.mount()  # already mounted: nothing happens
    assert len(disk.loop_devices().splitlines()) == 1
    unmount(disk.mountpoint)
    assert not is_mounted(disk.mountpoint)
    assert not (disk.mountpoint / "notes.txt").exists()
    unmount(disk.mountpoint)  # not mounted: no error
    disk.mount()
    assert (disk.mountpoint / "notes.txt").read_text() == "kept"


def _assert_clean(image: Path) -> None:
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_growing_an_unmounted_image_keeps_files_and_raises_the_total(disk: Disk) -> None:
    disk.mount(32)
    data = os.urandom(4 * MIB)
    (disk.mountpoint / "data.bin").write_bytes(data)
    _, before = usage(disk.mountpoint)
    unmount(disk.mountpoint)
    disk.mount(48)
    _, after = usage(disk.mountpoint)
    assert after - before > 14 * MIB
    assert disk.image.stat().st_size == 48 * MIB
    assert (disk.mountpoint / "data.bin").read_bytes() == data
    unmount(disk.mountpoint)
    _assert_clean(disk.image)


def test_growing_a_mounted_image_takes_effect_at_the_latest_on_remount(disk: Disk) -> None:
    """Online growth needs CAP_SYS_RESOURCE (this project's machines drop it): with it the total
    rises at once, without it at the next mount; the files are kept either way."""
    disk.mount(32)
    (disk.mountpoint / "notes.txt").write_text("kept")
    _, before = usage(disk.mountpoint)
    disk.mount(48)
    assert is_mounted(disk.mountpoint)
    unmount(disk.mountpoint)
    disk.mount(48)
    _, after = usage(disk.mountpoint)
    assert after - before > 14 * MIB
    assert (disk.mountpoint / "notes.txt").read_text() == "kept"
    unmount(disk.mountpoint)
    _assert_clean(disk.image)


def test_a_smaller_size_never_shrinks(disk: Disk) -> None:
    disk.mount(32)
    _, total = usage(disk.mountpoint)
    unmount(disk.mountpoint)
    disk.mount(16)
    assert usage(disk.mountpoint)[1] == total
    assert disk.image.stat().st_size == 32 * MIB


def test_existing_files_are_not_hidden_by_a_new_image(disk: Disk) -> None:
    disk.mountpoint.mkdir(parents=True)
    (disk.mountpoint / "old.txt").write_text("agent's files")
    with pytest.raises(DiskUnavailable, match="already holds files"):
        disk.mount()
    assert not is_mounted(disk.mountpoint)
    assert not disk.image.exists()
    assert list(disk.image.parent.glob("*")) == []  # no half-made image left behind


def test_the_owner_is_applied_on_every_mount(disk: Disk) -> None:
    disk.mount()
    unmount(disk.mountpoint)
    mount_image(disk.image, disk.mountpoint, size_mb=32, owner=(200051, 200052))
    stat = disk.mountpoint.stat()
    assert (stat.st_uid, stat.st_gid) == (200051, 200052)
