"""cgroup adapters: real limits, freeze and kill on this host's v1 hierarchy (root only), the
v2 adapter against fixture directories (the host's cgroup2 mount has no controllers), and the
parsing helpers."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbuda.computer._cgroups import (
    GATE_ARGV,
    Cgroup,
    CgroupUnavailable,
    CgroupV1,
    CgroupV2,
    _version_of,
    cgroup_version,
    open_cgroup,
    open_v2,
    parse_flat_keyed,
    parse_mountinfo,
    v1_hierarchies,
    v2_mount,
)

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/my\\040systemd rw,relatime shared:5 - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED_MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid - proc proc rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""

needs_v1_root = pytest.mark.skipif(
    os.geteuid() != 0 or cgroup_version() != 1,
    reason="real cgroup tests need root on a cgroup v1 host (this project's machines)",
)


# ---------------------------------------------------------------------------------------------
# Parsing


def test_mountinfo_of_a_hybrid_host_is_v1_with_co_mounted_cpu() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    hierarchies = v1_hierarchies(mounts)
    assert hierarchies["cpu"] == hierarchies["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert hierarchies["memory"] == Path("/sys/fs/cgroup/memory")
    assert hierarchies["name=systemd"] == Path("/sys/fs/cgroup/my systemd")
    assert v2_mount(mounts) == Path("/sys/fs/cgroup/unified")
    assert _version_of(mounts) == 1


def test_mountinfo_of_a_unified_host_is_v2() -> None:
    mounts = parse_mountinfo(UNIFIED_MOUNTINFO)
    assert v1_hierarchies(mounts) == {}
    assert v2_mount(mounts) == Path("/sys/fs/cgroup")
    assert _version_of(mounts) == 2
    assert _version_of(parse_mountinfo("22 1 0:21 / /proc rw - proc proc rw\n")) is None


def test_flat_keyed_files_parse_and_skip_non_integers() -> None:
    text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\nname text\n\n"
    assert parse_flat_keyed(text) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}


def test_unsafe_names_are_refused() -> None:
    for name in ("", "..", "a/b", ".hidden", "x" * 200):
        with pytest.raises(ValueError, match="not a valid cgroup name"):
            open_cgroup(name)


# ---------------------------------------------------------------------------------------------
# v2 against a fixture directory (the kernel's files are plain files here)


def _v2_fixture(path: Path, **files: str) -> CgroupV2:
    defaults = {
        "memory.max": "max",
        "memory.swap.max": "max",
        "pids.max": "max",
        "cpu.max": "max 100000",
        "cgroup.freeze": "0",
        "cgroup.events": "populated 0\nfrozen 0\n",
        "cgroup.procs": "",
        "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        "memory.current": str(50 << 20),
        "memory.stat": f"anon {30 << 20}\ninactive_file {10 << 20}\n",
        "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
        "pids.events": "max 4\n",
        "pids.current": "3",
    }
    for name, text in {**defaults, **files}.items():
        (path / name).write_text(text)
    return CgroupV2(path)


def test_v2_limits_are_written_in_the_unified_format(tmp_path: Path) -> None:
    group = _v2_fixture(tmp_path)
    group.set_limits(memory_bytes=512 << 20, pids=256, cpus=1.5)
    assert (tmp_path / "memory.max").read_text() == str(512 << 20)
    assert (tmp_path / "memory.swap.max").read_text() == "0"
    assert (tmp_path / "pids.max").read_text() == "256"
    assert (tmp_path / "cpu.max").read_text() == "150000 100000"


def test_v2_limits_without_swap_accounting(tmp_path: Path) -> None:
    group = _v2_fixture(tmp_path)
    (tmp_path / "memory.swap.max").unlink()
    group.set_limits(memory_bytes=1 << 30, pids=10, cpus=0.001)
    assert not (tmp_path / "memory.swap.max").exists()  # never created by the adapter
    assert (tmp_path / "cpu.max").read_text() == "1000 100000"  # the kernel's minimum quota


def test_v2_stats_read_the_unified_files(tmp_path: Path) -> None:
    stats = _v2_fixture(tmp_path).stats()
    assert stats.cpu_seconds == pytest.approx(2.5)
    assert stats.memory_bytes == 40 << 20
    assert (stats.oom_kills, stats.pids_max_events, stats.pids) == (2, 4, 3)


def test_v2_freeze_waits_for_the_frozen_event(tmp_path: Path) -> None:
    group = _v2_fixture(tmp_path)
    with pytest.raises(TimeoutError, match="did not freeze"):
        group.freeze(timeout=0.05)
    assert (tmp_path / "cgroup.freeze").read_text() == "1"
    assert not group.frozen()
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    group.freeze(timeout=0.05)
    assert group.frozen()
    group.thaw()
    assert (tmp_path / "cgroup.freeze").read_text() == "0"


def test_v2_kill_all_uses_cgroup_kill_and_waits_until_empty(tmp_path: Path) -> None:
    group = _v2_fixture(tmp_path, **{"cgroup.kill": "", "cgroup.procs": "999999999\n"})
    with pytest.raises(TimeoutError, match="remain"):
        group.kill_all(timeout=0.05)
    assert (tmp_path / "cgroup.kill").read_text() == "1"
    (tmp_path / "cgroup.procs").write_text("")
    group.kill_all(timeout=0.05)


def test_v2_without_controllers_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset io\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    with pytest.raises(CgroupUnavailable, match="memory, pids, cpu are not available"):
        open_v2("probe", tmp_path)
    assert not (tmp_path / "openbuda").exists()


@pytest.mark.skipif(
    not Path("/sys/fs/cgroup/unified/cgroup.controllers").exists()
    or "memory" in Path("/sys/fs/cgroup/unified/cgroup.controllers").read_text(),
    reason="needs a hybrid host whose cgroup2 mount has no controllers (this project's machines)",
)
def test_the_hosts_empty_cgroup2_mount_is_unavailable() -> None:
    with pytest.raises(CgroupUnavailable, match="not available"):
        open_v2("probe", Path("/sys/fs/cgroup/unified"))


# ---------------------------------------------------------------------------------------------
# Real v1 groups


class Starter:
    """Starts Python processes attached to a group before their payload runs (the gate
    pattern); kills and reaps them all at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, group: Cgroup, script: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*GATE_ARGV, sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        group.attach(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def start() -> Iterator[Starter]:
    starter = Starter()
    try:
        yield starter
    finally:
        starter.close()


@pytest.fixture
def group(start: Starter) -> Iterator[Cgroup]:  # removed before `start` reaps its processes
    created = open_cgroup(f"test-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield created
    finally:
        created.remove()
        assert not any(path.exists() for path in created.paths)


@needs_v1_root
def test_v1_group_has_a_directory_per_hierarchy_and_is_reused(group: Cgroup) -> None:
    assert isinstance(group, CgroupV1)
    assert all(path.is_dir() and path.parent.name == "openbuda" for path in group.paths)
    assert {path.parent.parent.name for path in group.paths} >= {"memory", "pids", "freezer"}
    assert open_cgroup(group.paths[0].name).paths == group.paths


@needs_v1_root
def test_v1_limits_raise_and_lower_with_swap_kept_in(group: Cgroup) -> None:
    memory_dir = next(p for p in group.paths if p.parent.parent.name == "memory")
    group.set_limits(memory_bytes=64 << 20, pids=16, cpus=0.5)
    group.set_limits(memory_bytes=256 << 20, pids=32, cpus=2)  # memsw must rise first
    assert (memory_dir / "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
    memsw = memory_dir / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        assert memsw.read_text().strip() == str(256 << 20)
    group.set_limits(memory_bytes=32 << 20, pids=8, cpus=1)
    assert (memory_dir / "memory.limit_in_bytes").read_text().strip() == str(32 << 20)


@needs_v1_root
def test_the_gate_attaches_the_payload_and_its_children(group: Cgroup, start: Starter) -> None:
    proc = start(
        group,
        "import subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '30'])\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n",
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert set(group.pids()) == {proc.pid, child}
    assert group.stats().pids == 2
    group.kill_all()
    assert proc.wait(5) == -9


@needs_v1_root
def test_memory_limit_oom_kills_a_large_allocation(group: Cgroup, start: Starter) -> None:
    group.set_limits(memory_bytes=64 << 20, pids=64, cpus=1)
    before = group.stats().oom_kills
    proc = start(group, "data = b'x' * (200 << 20)\nprint('allocated')")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -9
    assert b"allocated" not in out
    assert group.stats().oom_kills > before


@needs_v1_root
def test_pids_limit_stops_a_fork_loop(group: Cgroup, start: Starter) -> None:
    group.set_limits(memory_bytes=256 << 20, pids=16, cpus=1)
    proc = start(
        group,
        "import os, time\n"
        "started = refused = 0\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        refused += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    started += 1\n"
        "print(started, refused, flush=True)\n"
        "time.sleep(30)\n",
    )
    assert proc.stdout is not None
    started, refused = map(int, proc.stdout.readline().split())
    assert started <= 15 and refused >= 25
    stats = group.stats()
    assert stats.pids_max_events >= refused
    assert stats.pids == 16
    group.kill_all()
    assert group.pids() == []
    proc.wait(5)


@needs_v1_root
def test_freeze_stops_cpu_time_and_thaw_resumes_it(group: Cgroup, start: Starter) -> None:
    group.set_limits(memory_bytes=256 << 20, pids=16, cpus=1)
    proc = start(group, "while True: pass")
    time.sleep(0.3)
    group.freeze()
    assert group.frozen()
    frozen_at = group.stats().cpu_seconds
    time.sleep(0.5)
    assert group.stats().cpu_seconds - frozen_at < 0.01
    assert proc.poll() is None  # frozen, not dead
    group.thaw()
    assert not group.frozen()
    time.sleep(0.5)
    assert group.stats().cpu_seconds - frozen_at > 0.2
    group.kill_all()
    assert proc.wait(5) == -9


@needs_v1_root
def test_cpu_quota_caps_a_busy_loop(group: Cgroup, start: Starter) -> None:
    group.set_limits(memory_bytes=256 << 20, pids=16, cpus=0.25)
    proc = start(group, "while True: pass")
    before = group.stats().cpu_seconds
    time.sleep(1.0)
    used = group.stats().cpu_seconds - before
    assert 0.1 < used < 0.45
    group.kill_all()
    proc.wait(5)


@needs_v1_root
def test_kill_all_empties_a_frozen_process_tree(group: Cgroup, start: Starter) -> None:
    proc = start(
        group,
        "import subprocess, sys\n"
        "for _ in range(5):\n"
        "    subprocess.Popen(['sh', '-c', 'sleep 60 & sleep 60'])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n",
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    deadline = time.monotonic() + 5
    while len(group.pids()) < 16 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(group.pids()) == 16
    group.freeze()
    group.kill_all()
    assert group.pids() == []
    assert not group.frozen()
    assert proc.wait(5) == -9


@needs_v1_root
def test_remove_kills_and_deletes_and_tolerates_repeats(start: Starter) -> None:
    created = open_cgroup(f"test-{os.getpid()}-{secrets.token_hex(4)}")
    proc = start(created, "import time\ntime.sleep(60)")
    (created.paths[0] / "nested").mkdir()  # a sub-group (e.g. made by a later feature)
    created.remove()  # before the zombie is reaped: the group must still go
    assert not any(path.exists() for path in created.paths)
    assert proc.wait(5) == -9
    created.remove()
