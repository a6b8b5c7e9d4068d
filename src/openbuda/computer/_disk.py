"""A per-agent disk quota: the agent's ``/agent`` is an ext4 filesystem in a sparse image file,
loop-mounted on the host (root only).

``mount_image(image, mountpoint, size_mb=..., owner=(uid, gid))``:

- a missing image is created sparse (``truncate``) and formatted (``mkfs.ext4 -m 0 -E
  root_owner=uid:gid``: no blocks reserved for root, the agent owns the root directory); its
  empty ``lost+found`` is removed so it does not show up in the agent's files (``e2fsck``
  recreates it when it needs one). If the mountpoint already holds files while the image is new,
  ``DiskUnavailable`` is raised rather than hiding them under the mount: the caller migrates them;
- the image is mounted with ``-o loop,nosuid,nodev,discard`` unless ``/proc/self/mountinfo``
  already shows a mount there (``discard`` punches deleted blocks out of the image, so it stays
  as sparse as its contents);
- a larger ``size_mb`` than the filesystem's (read from the ext4 superblock) grows it: the file
  is extended, then, before mounting, checked and grown (``e2fsck -f -p``, ``resize2fs``). An
  image that is already mounted is grown online (``losetup -c``, ``resize2fs`` on the loop
  device), which needs ``CAP_SYS_RESOURCE``; where that fails (this project's own machines drop
  the capability) a warning is logged and the image grows at its next mount. A smaller
  ``size_mb`` is ignored: images are **never shrunk** (that would need an unmounted, checked
  filesystem and may not fit the data);
- the filesystem's root is chowned to ``owner`` every time (the agent's uid may change).

Writes past the size fail with ``ENOSPC`` inside the image while the host's filesystem is
untouched. Images are sparse, so the sum of quotas may exceed the host's free space: the host's
own disk monitoring still matters. Every function blocks (it runs ``mount``, ``mkfs``): call it
in a worker thread. Needs ``mount``/``losetup`` (Debian ``mount``) and ``mkfs.ext4``/
``resize2fs`` (``e2fsprogs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Final

__all__ = ["DiskUnavailable", "is_mounted", "loop_available", "mount_image", "unmount", "usage"]

_MIB: Final = 1 << 20
_TIMEOUT: Final = 120.0
_TOOLS: Final = ("mount", "umount", "losetup", "mkfs.ext4", "e2fsck", "resize2fs")
_EXT4_MAGIC: Final = 0xEF53
_INCOMPAT_64BIT: Final = 0x80

log = logging.getLogger("openbuda.computer")


class DiskUnavailable(Exception):
    """The quota image cannot be created, grown or mounted (the message says why)."""


def _run(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskUnavailable(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise DiskUnavailable(f"{' '.join(argv)} exited {done.returncode}: {detail}")
    return done.stdout


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_source(mountpoint: Path) -> str | None:
    """The source (``/dev/loopN``) of the topmost mount at ``mountpoint``, None if none."""
    target = os.path.realpath(mountpoint)
    source: str | None = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == target and "-" in fields:
            dash = fields.index("-")
            source = _unescape(fields[dash + 2]) if len(fields) > dash + 2 else ""
    return source


def is_mounted(mountpoint: Path) -> bool:
    """Whether something is mounted at ``mountpoint`` (symlinks in the path resolved)."""
    return _mount_source(mountpoint) is not None


def loop_available() -> bool:
    """Root, the tools, and a free loop device (``losetup -f`` finds or creates one)."""
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in _TOOLS):
        return False
    try:
        _run("losetup", "-f")
    except DiskUnavailable:
        return False
    return True


def usage(mountpoint: Path) -> tuple[int, int]:
    """(used bytes, total bytes) of the filesystem at ``mountpoint``."""
    stat = os.statvfs(mountpoint)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize, stat.f_blocks * stat.f_frsize


def _create(image: Path, mountpoint: Path, size_mb: int, owner: tuple[int, int]) -> None:
    if mountpoint.is_dir() and any(mountpoint.iterdir()):
        raise DiskUnavailable(
            f"{str(mountpoint)!r} already holds files and {str(image)!r} does not exist: move "
            "the files into the new image rather than hiding them under the mount"
        )
    image.parent.mkdir(parents=True, exist_ok=True)
    partial = image.with_name(image.name + ".new")
    try:
        with partial.open("wb") as file:
            file.truncate(size_mb * _MIB)
        uid, gid = owner
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"root_owner={uid}:{gid}", str(partial))
        partial.rename(image)  # only a formatted image ever has the final name
    finally:
        partial.unlink(missing_ok=True)


def filesystem_bytes(image: Path) -> int:
    """The size of the ext4 filesystem in ``image``, read from its superblock."""
    with image.open("rb") as file:
        file.seek(1024)
        block = file.read(1024)
    if len(block) < 1024 or struct.unpack_from("<H", block, 0x38)[0] != _EXT4_MAGIC:
        raise DiskUnavailable(f"{str(image)!r} does not hold an ext4 filesystem")
    low, log_size = (
        struct.unpack_from("<I", block, 0x4)[0],
        struct.unpack_from("<I", block, 0x18)[0],
    )
    incompat = struct.unpack_from("<I", block, 0x60)[0]
    high = struct.unpack_from("<I", block, 0x150)[0] if incompat & _INCOMPAT_64BIT else 0
    return ((high << 32) | low) * (1024 << log_size)


def _extend(image: Path, size: int) -> None:
    if image.stat().st_size < size:
        with image.open("r+b") as file:
            file.truncate(size)


def _grow_offline(image: Path, size: int) -> None:
    _extend(image, size)
    try:
        done = subprocess.run(
            ["e2fsck", "-f", "-p", str(image)], capture_output=True, text=True, timeout=_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskUnavailable(f"e2fsck failed: {exc}") from exc
    if done.returncode > 2:  # 1, 2: errors corrected
        raise DiskUnavailable(f"e2fsck {str(image)!r} exited {done.returncode}: {done.stdout}")
    _run("resize2fs", str(image))


def _grow_online(image: Path, mountpoint: Path, size: int) -> None:
    """Grow a mounted image; needs CAP_SYS_RESOURCE. On failure the image grows when it is
    next mounted (its filesystem is still smaller than asked), so only a warning is logged."""
    device = _mount_source(mountpoint)
    try:
        if device is None or not device.startswith("/dev/loop"):
            raise DiskUnavailable(f"{str(mountpoint)!r} is not a loop mount of {str(image)!r}")
        _extend(image, size)
        _run("losetup", "-c", device)
        _run("resize2fs", device)
    except DiskUnavailable as exc:
        log.warning(
            "cannot grow %s while it is mounted (%s); it grows at its next mount", image, exc
        )


def mount_image(image: Path, mountpoint: Path, *, size_mb: int, owner: tuple[int, int]) -> None:
    """Create, grow (never shrink) and mount the quota image; see the module docstring."""
    if size_mb < 8:
        raise ValueError(f"size_mb must be at least 8, not {size_mb!r}")
    size = size_mb * _MIB
    created = not image.exists()
    if created:
        _create(image, mountpoint, size_mb, owner)
    mountpoint.mkdir(parents=True, exist_ok=True)
    grow = filesystem_bytes(image) < size
    if is_mounted(mountpoint):
        if grow:
            _grow_online(image, mountpoint, size)
    else:
        if grow:
            _grow_offline(image, size)
        _run(
            "mount",
            "-t",
            "ext4",
            "-o",
            "loop,nosuid,nodev,discard",
            str(image),
            str(mountpoint),
        )
    if created:
        with contextlib.suppress(OSError):
            (mountpoint / "lost+found").rmdir()
    os.chown(mountpoint, *owner)


def unmount(mountpoint: Path) -> None:
    """Unmount (lazily when busy: it detaches now, frees the loop device when last closed)."""
    if not is_mounted(mountpoint):
        return
    try:
        _run("umount", str(mountpoint))
    except DiskUnavailable:
        _run("umount", "-l", str(mountpoint))
