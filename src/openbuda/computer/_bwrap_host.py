"""Host-side processes and resources of a bubblewrap computer.

``Running`` is what the host knows of a started sandbox: its outer ``bwrap`` and the sandbox's
init (PID 1), each with its start time so a reused pid is never mistaken for them, its host ids,
the spec it runs, its cgroup and internet link. ``record`` / ``from_record`` are the JSON kept
in the agent's run directory so a later server process can attach to it. Killing without a
cgroup kills the sandbox's PID 1 (the kernel then kills its whole PID namespace) and then the
``bwrap`` tree; sleeping without a cgroup stops that tree with ``SIGSTOP``.

``probe`` runs a tiny sandbox the way computers run; ``cgroups_work`` tries a cgroup;
``mount_quota_image`` mounts an agent's quota image, moving files already there into it.
Everything here blocks: async callers use worker threads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.abc

from openbuda.computer import _disk, _network
from openbuda.computer._bwrap_launch import HostIds, descendants, process_start
from openbuda.computer._cgroups import Cgroup, CgroupUnavailable, open_cgroup
from openbuda.computer._procfs import CpuRate
from openbuda.domain.records import AgentLimits
from openbuda.ports import SandboxSpec

__all__ = [
    "Running",
    "cgroups_work",
    "kill_tree",
    "mount_quota_image",
    "probe",
    "signal_tree",
]


@dataclass(slots=True)
class Running:
    """A started (or attached) sandbox (module docstring)."""

    pid: int
    """The outermost ``bwrap`` on the host."""
    pid_start: int
    child_pid: int
    """The sandbox's init (its PID 1) on the host."""
    child_start: int
    ids: HostIds
    spec: SandboxSpec
    cgroup: Cgroup | None
    process: anyio.abc.Process | None = None
    """Ours to reap; ``None`` when attached to a sandbox another process started."""
    link: _network.InternetLink | None = None
    views: set[tuple[str | None, bool]] = field(default_factory=set[tuple[str | None, bool]])
    cpu_rate: CpuRate = field(default_factory=CpuRate)

    def alive(self) -> bool:
        return process_start(self.child_pid) == self.child_start

    def record(self, quota: str) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "pid_start": self.pid_start,
            "child_pid": self.child_pid,
            "child_start": self.child_start,
            "uid": self.ids.uid,
            "gid": self.ids.gid,
            "space_gid": self.ids.space_gid,
            "switch": self.ids.switch,
            "cgroup": self.cgroup is not None,
            "quota": quota,
            "spec": {
                "space_id": self.spec.space_id,
                "agent_id": self.spec.agent_id,
                "network": self.spec.network,
                "limits": self.spec.limits.model_dump(),
            },
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], cgroup: Cgroup | None) -> Running:
        """``KeyError``, ``TypeError`` or ``ValueError`` when ``record`` is not one."""
        spec_data = record["spec"]
        return cls(
            pid=int(record["pid"]),
            pid_start=int(record["pid_start"]),
            child_pid=int(record["child_pid"]),
            child_start=int(record["child_start"]),
            ids=HostIds(
                int(record["uid"]),
                int(record["gid"]),
                None if record["space_gid"] is None else int(record["space_gid"]),
                bool(record["switch"]),
            ),
            spec=SandboxSpec(
                space_id=str(spec_data["space_id"]),
                agent_id=str(spec_data["agent_id"]),
                network=spec_data["network"],
                limits=AgentLimits.model_validate(spec_data["limits"]),
            ),
            cgroup=cgroup,
        )


def signal_tree(run: Running, number: signal.Signals) -> None:
    for pid in descendants(run.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, number)


def kill_tree(run: Running) -> None:
    """Without a cgroup: killing the sandbox's PID 1 kills everything in its namespace."""
    if process_start(run.child_pid) == run.child_start:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(run.child_pid, signal.SIGCONT)
            os.kill(run.child_pid, signal.SIGKILL)
    if process_start(run.pid) == run.pid_start:
        signal_tree(run, signal.SIGCONT)
        signal_tree(run, signal.SIGKILL)


def mount_quota_image(home: Path, agent_dir: Path, disk_mb: int, owner: tuple[int, int]) -> None:
    """Mount the agent's quota image on its directory, moving files already there into it."""
    image = home / "disk.img"
    moving = home / "agent.moving"
    if not image.exists() and not _disk.is_mounted(agent_dir) and any(agent_dir.iterdir()):
        agent_dir.rename(moving)
        agent_dir.mkdir()
    _disk.mount_image(image, agent_dir, size_mb=max(disk_mb, 16), owner=owner)
    if moving.is_dir():
        for entry in sorted(moving.iterdir()):
            shutil.move(entry, agent_dir / entry.name)
        moving.rmdir()
        for dirpath, dirnames, filenames in os.walk(agent_dir):
            for name in (*dirnames, *filenames):
                os.chown(os.path.join(dirpath, name), *owner, follow_symlinks=False)


def probe(bwrap: str, uid: int | None) -> str | None:
    """Run a tiny sandbox the way computers run, doing what the daemon needs (namespaces);
    ``None`` when it works, else why not."""
    check = "import ctypes,sys; sys.exit(ctypes.CDLL(None).unshare(0x20020000) != 0)"
    argv = [
        bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "0",
        "--gid", "0", "--cap-add", "ALL", "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
        "/usr/bin/python3", "-I", "-c", check,
    ]  # fmt: skip
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap did not run: {exc}"
    if done.returncode != 0:
        return done.stderr.strip() or f"the namespace check failed (exit {done.returncode})"
    return None


def cgroups_work(tag: str) -> bool:
    try:
        group = open_cgroup(f"probe-{tag}-{os.getpid()}")
    except (CgroupUnavailable, OSError):
        return False
    with contextlib.suppress(OSError, TimeoutError):
        group.remove()
    return True
