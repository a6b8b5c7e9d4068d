"""Starting an agent's bubblewrap sandbox: host ids, the command line, the generated ``/etc``.

**Host ids.** A server running as root never lets a sandbox run as host root: each agent gets
its own host uid (and gid of the same number) from ``computer_uid_base`` on, and each space a
gid shared by its agents' sandboxes (supplementary group), which owns the space's directory
(setgid, group-writable; commands run with umask 002). The numbers are remembered in
``<computer_dir>/ids.json`` under an ``fcntl`` lock, so several server processes agree. A
server that is not root runs sandboxes as its own uid (unprivileged user namespaces).

**Launch.** ``launcher_argv`` builds, for root::

    sh -c 'read; exec "$@"'                    # the cgroup gate (_cgroups.GATE_ARGV)
      unshare --mount --propagation private    # a throwaway mount namespace of the launcher
        sh -c STAGE ...                        # binds the agent's directories at /run/openbuda/stage
          setpriv --reuid U --regid U --groups G
            bwrap ... python3 -I /.openbuda/init.py

bubblewrap runs as the agent's uid and resolves its bind sources with that uid's permissions,
so the directories are first bound (by root, in the launcher's private mount namespace, which
disappears with it) at a staging path anyone can traverse; ``computer_dir`` itself may sit
under a private directory such as ``/root``. A non-root server runs ``bwrap`` directly.

``bwrap_argv``: every namespace unshared (user namespaces disabled inside), uid 0 with all
capabilities *of its own user namespace* (the daemon needs them to build session namespaces;
it drops them before any command runs), the base seccomp filter, ``/usr`` and the usual
symlinks read-only, a generated ``/etc`` (``--file``: a user ``agent`` with uid 0, hosts, DNS)
plus a few read-only host files (certificates, ``ld.so.cache``, alternatives; never
``/etc/shadow`` or host credentials), fresh ``/proc`` and ``/dev``, a sized tmpfs on ``/tmp``,
``/agent``, ``/space``, the hidden ``/.openbuda`` (sessions, run directory, the daemon), and a
read-only root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from openbuda.computer._cgroups import GATE_ARGV

__all__ = [
    "INIT_PATH",
    "STAGE_DIR",
    "HostIds",
    "IdRegistry",
    "Sources",
    "bwrap_argv",
    "close_all",
    "descendants",
    "etc_files",
    "launcher_argv",
    "memfd",
    "process_start",
    "read_info",
]

STAGE_DIR: Final = Path("/run/openbuda/stage")
SANDBOX_DNS: Final = "10.0.2.3"
"""The resolver slirp4netns offers inside the sandbox (``network: internet``)."""
INIT_PATH: Final = "/.openbuda/init.py"
_STAGED: Final = ("agent", "space", "sessions", "run")
_STAGE_SCRIPT: Final = """set -e
stage=$1; shift
mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev,noexec openbuda-stage "$stage"
for name in agent space sessions run; do
  mkdir "$stage/$name"
  mount --bind "$1" "$stage/$name"
  shift
done
exec "$@"
"""
_HOST_ETC: Final = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "magic",
    "magic.mime",
    "mime.types",
    "os-release",
    "protocols",
    "python3",
    "python3.11",
    "services",
    "ssl",
    "timezone",
)
_TOP_LEVEL: Final = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True, slots=True)
class HostIds:
    """Who a sandbox runs as on the host."""

    uid: int
    gid: int
    space_gid: int | None
    """The space's shared group (root servers only)."""
    switch: bool
    """Whether the launcher changes to ``uid`` (the server is root)."""


class IdRegistry:
    """Host ids of agents and spaces, allocated once from ``first`` and remembered in a file."""

    def __init__(self, base: Path, first: int, count: int) -> None:
        self._path = base / "ids.json"
        self._lock = base / "ids.lock"
        self._first = first
        self._count = count

    @contextlib.contextmanager
    def _locked(self) -> Generator[dict[str, int]]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                table: dict[str, int] = json.loads(self._path.read_text())
            except FileNotFoundError:
                table = {}
            before = dict(table)
            yield table
            if table != before:
                temp = self._path.with_suffix(".tmp")
                temp.write_text(json.dumps(table, indent=1, sort_keys=True))
                temp.replace(self._path)

    def id_for(self, key: str) -> int:
        """The id of ``key`` (``agent:<id>`` or ``space:<id>``), allocating the lowest free one."""
        with self._locked() as table:
            if key in table:
                return table[key]
            used = set(table.values())
            for candidate in range(self._first, self._first + self._count):
                if candidate not in used:
                    table[key] = candidate
                    return candidate
        raise RuntimeError(
            f"no free sandbox uid left in {self._first}..{self._first + self._count - 1} "
            "(raise computer_uid_count)"
        )

    def host_ids(self, agent_id: str, space_id: str) -> HostIds:
        uid = self.id_for(f"agent:{agent_id}")
        return HostIds(uid, uid, self.id_for(f"space:{space_id}"), switch=True)


@dataclass(frozen=True, slots=True)
class Sources:
    """Host directories bound into the sandbox."""

    agent: Path
    space: Path
    sessions: Path
    run: Path

    def as_dict(self) -> dict[str, Path]:
        return {
            "agent": self.agent,
            "space": self.space,
            "sessions": self.sessions,
            "run": self.run,
        }


def etc_files(hostname: str, network: str) -> dict[str, bytes]:
    """The generated files of the sandbox's ``/etc``."""
    resolv = f"nameserver {SANDBOX_DNS}\n" if network == "internet" else ""
    return {
        "passwd": (
            b"agent:x:0:0:agent:/agent:/bin/bash\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": b"agent:x:0:\nnogroup:x:65534:\n",
        "hostname": f"{hostname}\n".encode(),
        "hosts": (
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
        ).encode(),
        "resolv.conf": resolv.encode(),
        "nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files dns\n",
    }


def memfd(name: str, data: bytes) -> int:
    """An anonymous file holding ``data``, positioned at its start (for ``bwrap --file``)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def bwrap_argv(
    bwrap: str,
    sources: Mapping[str, str],
    *,
    seccomp_fd: int,
    info_fd: int,
    files: Mapping[str, int],
    tmp_bytes: int,
    hostname: str = "computer",
) -> list[str]:
    """The ``bwrap`` command line; ``files`` maps sandbox paths to descriptors to copy there."""
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid", "0",
        "--gid", "0",
        "--cap-add", "ALL",
        "--hostname", hostname,
        "--new-session",
        "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--seccomp", str(seccomp_fd),
        "--info-fd", str(info_fd),
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for name in _TOP_LEVEL:
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    argv += ["--dir", "/etc"]
    for name in _HOST_ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    argv += ["--dir", "/var", "--symlink", "../tmp", "/var/tmp"]
    argv += ["--bind", sources["agent"], "/agent", "--bind", sources["space"], "/space"]
    argv += ["--dir", "/.openbuda/view", "--bind", sources["sessions"], "/.openbuda/sessions"]
    argv += ["--bind", sources["run"], "/.openbuda/run"]
    argv += ["--symlink", ".openbuda/view/session", "/session"]
    for path, fd in files.items():
        argv += ["--perms", "0644", "--file", str(fd), path]
    argv += ["--remount-ro", "/", "/usr/bin/python3", "-I", "-B", INIT_PATH]
    return argv


def launcher_argv(
    ids: HostIds,
    sources: Sources,
    build: Callable[[Mapping[str, str]], list[str]],
    *,
    unshare: str = "/usr/bin/unshare",
    setpriv: str = "/usr/bin/setpriv",
) -> list[str]:
    """The full command: the gate, then (root) the staging mount namespace and the uid switch,
    then ``build(sources)``, the bwrap command line for the bind sources it is given."""
    if not ids.switch:
        return [*GATE_ARGV, *build({k: str(v) for k, v in sources.as_dict().items()})]
    staged = {name: str(STAGE_DIR / name) for name in _STAGED}
    groups = "--clear-groups" if ids.space_gid is None else f"--groups={ids.space_gid}"
    return [
        *GATE_ARGV,
        unshare, "--mount", "--propagation", "private", "--",
        "/bin/sh", "-c", _STAGE_SCRIPT, "openbuda-stage", str(STAGE_DIR),
        *(str(sources.as_dict()[name]) for name in _STAGED),
        setpriv, f"--reuid={ids.uid}", f"--regid={ids.gid}", groups, "--",
        *build(staged),
    ]  # fmt: skip


def read_info(fd: int, timeout: float) -> int:
    """The host pid of the sandbox's init, from bubblewrap's ``--info-fd`` JSON."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        with contextlib.suppress(ValueError):
            info = json.loads(data)
            if isinstance(info, dict) and isinstance(info.get("child-pid"), int):
                return int(info["child-pid"])  # pyright: ignore[reportUnknownArgumentType]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("bubblewrap did not report its sandbox")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError("bubblewrap exited before starting the sandbox")
        data += chunk


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot; ``None`` if gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from the parent pids in ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    pending: list[int] = [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, ()))
    return found


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
