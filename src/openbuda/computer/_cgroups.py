"""Control groups of a sandbox: limits, statistics, freeze/thaw and kill, on cgroup v1 and v2.

One agent's computer is one group, ``openbuda/<name>``, created at the root of the hierarchy:

- **v1** (one hierarchy per controller, as on this project's own machines): a directory in each
  of the ``memory``, ``pids``, ``cpu``, ``cpuacct`` and ``freezer`` hierarchies (``cpu`` and
  ``cpuacct`` may be one co-mounted hierarchy, then one directory serves both);
- **v2** (unified): one directory under the cgroup2 mount (``/sys/fs/cgroup``, or
  ``/sys/fs/cgroup/unified`` on hybrid hosts) with ``memory``, ``pids`` and ``cpu`` enabled in
  the ``cgroup.subtree_control`` of its parents; freezing and killing are built into v2.

``cgroup_version()`` says which one the host offers *with the needed controllers* (a hybrid
host whose cgroup2 mount holds no controllers is v1); ``open_cgroup(name)`` creates (or reuses)
the group and returns a :class:`Cgroup`, or raises :class:`CgroupUnavailable` with the reason
(not root, controllers missing, no delegation).

**Attaching before the payload runs.** A process must be in the group before it allocates or
forks, or its children escape the limits. The pattern (also how the bwrap backend starts
bubblewrap) is a gate: start ``GATE_ARGV + payload`` with ``stdin=PIPE``: ``sh`` waits on a
line of its standard input, then ``exec``s the payload *in the same pid*. Attach that pid, then
write a newline::

    proc = subprocess.Popen([*GATE_ARGV, "bwrap", ...], stdin=subprocess.PIPE)
    group.attach(proc.pid)
    proc.stdin.write(b"\\n"); proc.stdin.flush()

Everything the payload forks inherits the group. Sandboxed processes cannot leave it: they are
unprivileged on the host and cgroupfs is not writable inside the sandbox.

Every method blocks briefly (freeze and kill poll for a few milliseconds up to a bound): call
them from a worker thread (``anyio.to_thread.run_sync``) in async code. Writes open control
files without ``O_CREAT``, so a file the kernel does not offer raises ``FileNotFoundError``
(optional files such as ``memory.memsw.limit_in_bytes`` or ``cgroup.kill`` are probed that way).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "GATE_ARGV",
    "Cgroup",
    "CgroupStats",
    "CgroupUnavailable",
    "CgroupV1",
    "CgroupV2",
    "cgroup_version",
    "open_cgroup",
]

GATE_ARGV: Final = ("/bin/sh", "-c", 'read -r _ || exit 125; exec "$@"', "openbuda-gate")
"""Prefix of a command that waits for a line on its stdin before ``exec``ing the rest, so the
caller can attach its pid to a group first (see the module docstring)."""

PREFIX: Final = "openbuda"
V1_CONTROLLERS: Final = ("memory", "pids", "cpu", "cpuacct", "freezer")
V2_CONTROLLERS: Final = ("memory", "pids", "cpu")
CFS_PERIOD_US: Final = 100_000
_POLL_SECONDS: Final = 0.005
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MOUNTINFO = Path("/proc/self/mountinfo")


class CgroupUnavailable(Exception):
    """No writable cgroup hierarchy with the needed controllers (not root, no delegation)."""


@dataclass(frozen=True, slots=True)
class CgroupStats:
    cpu_seconds: float
    """CPU time (user + system) used by the group's processes since it was created."""
    memory_bytes: int
    """Memory in use, less inactive file cache (what would be reclaimed first)."""
    oom_kills: int
    """Processes killed by the OOM killer for hitting the memory limit."""
    pids_max_events: int
    """Forks refused because the pids limit was reached."""
    pids: int
    """Tasks (processes and threads) in the group: what the pids limit counts."""


# ---------------------------------------------------------------------------------------------
# Parsing helpers (pure; tested against fixture text)


@dataclass(frozen=True, slots=True)
class _Mount:
    mountpoint: Path
    fstype: str
    super_options: frozenset[str]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[_Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text."""
    mounts: list[_Mount] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 4:
            continue
        mounts.append(
            _Mount(
                mountpoint=Path(_unescape(fields[4])),
                fstype=fields[dash + 1],
                super_options=frozenset(fields[dash + 3].split(",")),
            )
        )
    return mounts


def v1_hierarchies(mounts: Iterable[_Mount]) -> dict[str, Path]:
    """Controller name → mountpoint of its cgroup v1 hierarchy (the first mount of each)."""
    found: dict[str, Path] = {}
    for mount in mounts:
        if mount.fstype != "cgroup":
            continue
        for option in mount.super_options:
            found.setdefault(option, mount.mountpoint)
    return found


def v2_mount(mounts: Iterable[_Mount]) -> Path | None:
    """The cgroup2 mount: ``/sys/fs/cgroup`` when it is one, else the first cgroup2 mount."""
    candidates = [m.mountpoint for m in mounts if m.fstype == "cgroup2"]
    if Path("/sys/fs/cgroup") in candidates:
        return Path("/sys/fs/cgroup")
    return candidates[0] if candidates else None


def parse_flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (``memory.events``, ``pids.events``, ``cpu.stat``, ``memory.stat``,
    ``memory.oom_control``, ``cgroup.events``); lines whose value is not an integer are left out."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                values[parts[0]] = int(parts[1])
    return values


def _version_of(mounts: list[_Mount]) -> Literal[1, 2] | None:
    unified = v2_mount(mounts)
    if unified == Path("/sys/fs/cgroup"):
        return 2
    if "memory" in v1_hierarchies(mounts):
        return 1
    return 2 if unified is not None else None


def cgroup_version() -> Literal[1, 2] | None:
    """The cgroup version this host keeps its controllers in (``None``: no cgroupfs mounted)."""
    try:
        return _version_of(parse_mountinfo(_MOUNTINFO.read_text()))
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# File access


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    """Write one value into a control file that must already exist (no ``O_CREAT``)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_pids(path: Path) -> set[int]:
    try:
        return {int(line) for line in _read(path).split()}
    except FileNotFoundError:
        return set()


def _rmdir_tree(path: Path) -> None:
    """Remove a group and any groups below it, deepest first; a missing one is no error."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), key=str):
        _rmdir_tree(child)
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _cpu_quota(cpus: float) -> int:
    if cpus <= 0:
        raise ValueError(f"cpus must be positive, not {cpus!r}")
    return max(1000, round(cpus * CFS_PERIOD_US))


# ---------------------------------------------------------------------------------------------
# The group


class Cgroup(ABC):
    """One agent's group; see the module docstring for the two layouts."""

    @property
    @abstractmethod
    def paths(self) -> tuple[Path, ...]:
        """The group's directories (one per hierarchy), for diagnostics."""

    @abstractmethod
    def set_limits(self, *, memory_bytes: int, pids: int, cpus: float) -> None:
        """Memory (swap included where the kernel accounts it), task count and CPU share."""

    def attach(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the group in every hierarchy."""
        for path in self.paths:
            _write(path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        """Processes in the group (the union over its hierarchies), sorted."""
        found: set[int] = set()
        for path in self.paths:
            found |= _read_pids(path / "cgroup.procs")
        return sorted(found)

    @abstractmethod
    def freeze(self, timeout: float = 5.0) -> None:
        """Stop every task; returns once all are frozen (``TimeoutError`` past ``timeout``)."""

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def frozen(self) -> bool: ...

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process, frozen ones too, and wait until the group is empty.

        Freezing first means nothing can fork between listing the pids and killing them.
        ``TimeoutError`` when processes remain after ``timeout`` (a task stuck in the kernel).
        """
        deadline = time.monotonic() + timeout
        while self.pids():
            self.freeze(timeout=max(0.1, deadline - time.monotonic()))
            try:
                _kill_pids(self.pids())
            finally:
                self.thaw()
            self._wait_empty(deadline)

    def _wait_empty(self, deadline: float) -> None:
        while self.pids():
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes {self.pids()} remain in {self.paths[0]}")
            time.sleep(_POLL_SECONDS)

    @abstractmethod
    def stats(self) -> CgroupStats: ...

    def remove(self) -> None:
        """Kill everything, then remove the group's directories (missing ones are ignored)."""
        if self.pids():
            try:
                self.kill_all()
            except FileNotFoundError:  # half-made group (no freezer directory): kill directly
                _kill_pids(self.pids())
                self._wait_empty(time.monotonic() + 5.0)
        for path in self.paths:
            _rmdir_tree(path)


class CgroupV1(Cgroup):
    """A group on cgroup v1: ``dirs`` maps each controller to its directory."""

    def __init__(self, dirs: Mapping[str, Path]) -> None:
        missing = [name for name in V1_CONTROLLERS if name not in dirs]
        if missing:
            raise ValueError(f"no directory for controllers {missing!r}")
        self._dirs = dict(dirs)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(self._dirs.values()))

    def _file(self, controller: str, name: str) -> Path:
        return self._dirs[controller] / name

    def set_limits(self, *, memory_bytes: int, pids: int, cpus: float) -> None:
        limit = self._file("memory", "memory.limit_in_bytes")
        memsw = self._file("memory", "memory.memsw.limit_in_bytes")
        # memsw (memory + swap) must stay >= the memory limit: lowering writes memory first,
        # raising writes memsw first. Try memory first, and on EINVAL the other way round.
        try:
            _write(limit, str(memory_bytes))
        except OSError as exc:
            if exc.errno != errno.EINVAL or not memsw.exists():
                raise
            _write(memsw, str(memory_bytes))
            _write(limit, str(memory_bytes))
        with contextlib.suppress(FileNotFoundError):  # no swap accounting in this kernel
            _write(memsw, str(memory_bytes))
        _write(self._file("pids", "pids.max"), str(pids))
        _write(self._file("cpu", "cpu.cfs_period_us"), str(CFS_PERIOD_US))
        _write(self._file("cpu", "cpu.cfs_quota_us"), str(_cpu_quota(cpus)))

    def freeze(self, timeout: float = 5.0) -> None:
        state = self._file("freezer", "freezer.state")
        deadline = time.monotonic() + timeout
        while True:
            # Writing FROZEN again retries tasks that were busy in the kernel (FREEZING).
            _write(state, "FROZEN")
            if _read(state).strip() == "FROZEN":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{state.parent} did not freeze within {timeout}s")
            time.sleep(_POLL_SECONDS)

    def thaw(self) -> None:
        _write(self._file("freezer", "freezer.state"), "THAWED")

    def frozen(self) -> bool:
        return _read(self._file("freezer", "freezer.state")).strip() == "FROZEN"

    def stats(self) -> CgroupStats:
        memory_stat = parse_flat_keyed(_read(self._file("memory", "memory.stat")))
        usage = int(_read(self._file("memory", "memory.usage_in_bytes")))
        inactive = memory_stat.get("total_inactive_file", memory_stat.get("inactive_file", 0))
        oom = parse_flat_keyed(_read(self._file("memory", "memory.oom_control")))
        events = parse_flat_keyed(_read(self._file("pids", "pids.events")))
        return CgroupStats(
            cpu_seconds=int(_read(self._file("cpuacct", "cpuacct.usage"))) / 1e9,
            memory_bytes=max(0, usage - inactive),
            oom_kills=oom.get("oom_kill", 0),
            pids_max_events=events.get("max", 0),
            pids=int(_read(self._file("pids", "pids.current"))),
        )


class CgroupV2(Cgroup):
    """A group on the unified hierarchy: one directory."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self._path,)

    def set_limits(self, *, memory_bytes: int, pids: int, cpus: float) -> None:
        _write(self._path / "memory.max", str(memory_bytes))
        with contextlib.suppress(FileNotFoundError):  # no swap accounting in this kernel
            _write(self._path / "memory.swap.max", "0")
        _write(self._path / "pids.max", str(pids))
        _write(self._path / "cpu.max", f"{_cpu_quota(cpus)} {CFS_PERIOD_US}")

    def _events(self) -> dict[str, int]:
        return parse_flat_keyed(_read(self._path / "cgroup.events"))

    def freeze(self, timeout: float = 5.0) -> None:
        _write(self._path / "cgroup.freeze", "1")
        deadline = time.monotonic() + timeout
        while self._events().get("frozen") != 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._path} did not freeze within {timeout}s")
            time.sleep(_POLL_SECONDS)

    def thaw(self) -> None:
        _write(self._path / "cgroup.freeze", "0")

    def frozen(self) -> bool:
        return self._events().get("frozen") == 1

    def kill_all(self, timeout: float = 5.0) -> None:
        try:
            _write(self._path / "cgroup.kill", "1")  # kills frozen tasks too (kernel >= 5.14)
        except FileNotFoundError:
            super().kill_all(timeout)
            return
        self._wait_empty(time.monotonic() + timeout)

    def stats(self) -> CgroupStats:
        cpu = parse_flat_keyed(_read(self._path / "cpu.stat"))
        memory_stat = parse_flat_keyed(_read(self._path / "memory.stat"))
        usage = int(_read(self._path / "memory.current"))
        events = parse_flat_keyed(_read(self._path / "memory.events"))
        pids_events = parse_flat_keyed(_read(self._path / "pids.events"))
        return CgroupStats(
            cpu_seconds=cpu.get("usage_usec", 0) / 1e6,
            memory_bytes=max(0, usage - memory_stat.get("inactive_file", 0)),
            oom_kills=events.get("oom_kill", 0),
            pids_max_events=pids_events.get("max", 0),
            pids=int(_read(self._path / "pids.current")),
        )


# ---------------------------------------------------------------------------------------------
# Opening


def _check_name(name: str) -> None:
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid cgroup name")


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except PermissionError as exc:
        raise CgroupUnavailable(
            f"cannot create {str(path)!r}: permission denied (run as root, or delegate the "
            "cgroup hierarchy to this user)"
        ) from exc
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create {str(path)!r}: {exc.strerror}") from exc


def open_v1(name: str, hierarchies: Mapping[str, Path]) -> CgroupV1:
    missing = [c for c in V1_CONTROLLERS if c not in hierarchies]
    if missing:
        raise CgroupUnavailable(f"cgroup v1 controllers not mounted: {', '.join(missing)}")
    dirs: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:  # co-mounted controllers (cpu,cpuacct) share a directory
        parent = hierarchies[controller] / PREFIX
        _mkdir(parent)
        _mkdir(parent / name)
        dirs[controller] = parent / name
    return CgroupV1(dirs)


def _enable_controllers(path: Path) -> None:
    available = set(_read(path / "cgroup.controllers").split())
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        raise CgroupUnavailable(
            f"cgroup v2 controllers {', '.join(missing)} are not available in {str(path)!r}"
        )
    enabled = set(_read(path / "cgroup.subtree_control").split())
    wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS if c not in enabled)
    if not wanted:
        return
    try:
        _write(path / "cgroup.subtree_control", wanted)
    except OSError as exc:
        raise CgroupUnavailable(
            f"cannot enable {wanted!r} in {str(path / 'cgroup.subtree_control')!r}: "
            f"{exc.strerror} (processes in that group, or no delegation)"
        ) from exc


def open_v2(name: str, mount: Path) -> CgroupV2:
    _enable_controllers(mount)
    _mkdir(mount / PREFIX)
    _enable_controllers(mount / PREFIX)
    _mkdir(mount / PREFIX / name)
    group = mount / PREFIX / name
    if not (group / "cgroup.freeze").exists():
        raise CgroupUnavailable("this kernel's cgroup v2 has no freezer (cgroup.freeze)")
    return CgroupV2(group)


def open_cgroup(name: str) -> Cgroup:
    """Create (or reuse) the group ``openbuda/<name>`` in the host's cgroup hierarchy."""
    _check_name(name)
    try:
        mounts = parse_mountinfo(_MOUNTINFO.read_text())
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read {_MOUNTINFO}: {exc.strerror}") from exc
    version = _version_of(mounts)
    if version == 1:
        return open_v1(name, v1_hierarchies(mounts))
    unified = v2_mount(mounts)
    if unified is None:
        raise CgroupUnavailable("no cgroup filesystem is mounted")
    return open_v2(name, unified)
