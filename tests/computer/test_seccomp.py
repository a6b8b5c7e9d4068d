"""Seccomp filters: real child processes under the filter (and under ``bwrap --seccomp``), the
syscall tables against the kernel headers, and both architectures' programs run through a small
classic-BPF interpreter."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from openbuda.computer._seccomp import (
    BASE_DENY,
    CLONE_NEW_FLAGS,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    SESSION_DENY,
    SYSCALLS,
    build_filter,
    install,
    syscall_number,
)

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7, "i386": 0x40000003}
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17


def run_bpf(program: bytes, *, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Interpret a classic BPF seccomp program (the subset build_filter emits)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            (acc,) = struct.unpack_from("<I", data, k)
        elif code == 0x06:  # ret k
            return k
        elif code in (0x15, 0x35, 0x45):  # jeq, jge, jset
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def _header_numbers(path: Path) -> dict[str, int]:
    text = path.read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)\b", text)}


# ---------------------------------------------------------------------------------------------
# The program


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_program_shape_and_semantics_per_architecture(arch: str) -> None:
    program = build_filter(SESSION_DENY, deny_clone_namespaces=True, arch=arch)
    assert len(program) % 8 == 0
    assert program[-8:] == struct.pack("=HBBI", 0x06, 0, 0, RET_ALLOW)
    native = AUDIT_ARCH[arch]

    def verdict(name: str, *args: int) -> int:
        nr = syscall_number(name, arch)
        assert nr is not None
        return run_bpf(program, nr=nr, arch=native, args=args)

    assert verdict("ptrace") == RET_ERRNO | errno.EPERM
    assert verdict("unshare", CLONE_NEWUSER) == RET_ERRNO | errno.EPERM
    assert verdict("bpf") == RET_ERRNO | errno.EPERM
    assert verdict("clone3") == RET_ERRNO | errno.ENOSYS
    assert verdict("fsopen") == RET_ERRNO | errno.ENOSYS
    assert verdict("clone", CLONE_NEWUSER | SIGCHLD) == RET_ERRNO | errno.EPERM
    assert verdict("clone", 0x1200000 | SIGCHLD) == RET_ALLOW  # fork()
    assert verdict("clone", 0x3D0F00) == RET_ALLOW  # pthread_create()
    assert verdict("personality", 0xFFFFFFFF) == RET_ALLOW
    for flag in range(32):
        bit = 1 << flag
        expected = RET_ERRNO | errno.EPERM if bit & CLONE_NEW_FLAGS else RET_ALLOW
        assert verdict("clone", bit) == expected, hex(bit)
    # an ordinary call (read is 0 on x86_64 and 63 on aarch64) passes
    assert run_bpf(program, nr=0 if arch == "x86_64" else 63, arch=native) == RET_ALLOW
    # a foreign architecture (32-bit compat entry points) kills the process
    assert run_bpf(program, nr=0, arch=AUDIT_ARCH["i386"]) == RET_KILL_PROCESS


def test_x32_numbers_are_refused_on_x86_64() -> None:
    program = build_filter([], arch="x86_64", errno_value=errno.EACCES)
    assert run_bpf(program, nr=0x40000000 | 0, arch=AUDIT_ARCH["x86_64"]) == RET_ERRNO | 13
    assert run_bpf(program, nr=1, arch=AUDIT_ARCH["x86_64"]) == RET_ALLOW


def test_base_filter_leaves_namespaces_to_the_sandbox_daemon() -> None:
    program = build_filter(BASE_DENY, arch="x86_64")
    for name in ("unshare", "setns", "mount", "umount2", "clone"):
        nr = syscall_number(name, "x86_64")
        assert nr is not None
        assert run_bpf(program, nr=nr, arch=AUDIT_ARCH["x86_64"], args=(CLONE_NEWUSER,)) == (
            RET_ALLOW
        )


def test_names_missing_on_an_architecture_are_skipped_and_unknown_ones_refused() -> None:
    assert build_filter(["iopl"], arch="aarch64") == build_filter([], arch="aarch64")
    assert len(build_filter(["iopl"], arch="x86_64")) == len(build_filter([], arch="x86_64")) + 16
    with pytest.raises(ValueError, match="unknown system call 'frobnicate'"):
        build_filter(["bpf", "frobnicate"])
    with pytest.raises(ValueError, match="errno_value"):
        build_filter([], errno_value=0)
    with pytest.raises(ValueError, match="architecture"):
        build_filter([], arch="riscv64")


@pytest.mark.parametrize(
    ("header", "column"),
    [
        (Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), 0),
        (Path("/usr/include/asm-generic/unistd.h"), 1),  # aarch64 uses the generic table
    ],
)
def test_syscall_numbers_match_the_kernel_headers(header: Path, column: int) -> None:
    if not header.exists():
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    numbers = _header_numbers(header)
    for name, pair in SYSCALLS.items():
        assert pair[column] == numbers.get(name), name


def test_lists_are_known_names() -> None:
    assert set(BASE_DENY) < set(SESSION_DENY) <= set(SYSCALLS)
    assert "personality" not in SESSION_DENY


# ---------------------------------------------------------------------------------------------
# Real processes

PROBE = r"""
import ctypes, errno, json, os, subprocess, sys, threading
from openbuda.computer._seccomp import SESSION_DENY, build_filter, install, syscall_number, host_arch

if sys.argv[1] == "filtered":
    install(build_filter(SESSION_DENY, deny_clone_namespaces=True))
libc = ctypes.CDLL(None, use_errno=True)

def call(name, *args):
    nr = syscall_number(name, host_arch())
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]

def clone_child(flags):
    nr = syscall_number("clone", host_arch())
    ctypes.set_errno(0)
    pid = libc.syscall(ctypes.c_long(nr), ctypes.c_long(flags), 0, 0, 0, 0)
    if pid == 0:  # the child, on a copy of this stack like fork()
        os._exit(0)
    if pid < 0:
        return errno.errorcode[ctypes.get_errno()]
    os.waitpid(pid, 0)
    return "ok"

def ptrace_a_child():
    child = subprocess.Popen(["sleep", "30"])
    try:
        return call("ptrace", 0x4206, child.pid, 0, 0)  # PTRACE_SEIZE
    finally:
        child.kill()
        child.wait()

results = {
    "clone_newuser": clone_child(0x10000000 | 17),
    "ptrace": ptrace_a_child(),
    "mount": call("mount", 0, 0, 0, 0, 0),
    "clone3": call("clone3", 0, 0),
    "unshare": call("unshare", 0x10000000),  # last: it changes this process's namespace
}
box = []
thread = threading.Thread(target=lambda: box.append("ran"))
thread.start(); thread.join()
results["thread"] = box[0]
pid = os.fork()
if pid == 0:
    os._exit(7)
results["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
results["bash"] = subprocess.run(
    ["bash", "-c", "echo $((6 * 7)) | cat"], capture_output=True, text=True
).stdout.strip()
results["python"] = subprocess.run(
    [sys.executable, "-c", "print('py')"], capture_output=True, text=True
).stdout.strip()
print(json.dumps(results))
"""


def _probe(mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_filtered_process_is_denied_and_still_works() -> None:
    results = _probe("filtered")
    assert results == {
        "unshare": "EPERM",
        "clone_newuser": "EPERM",
        "clone3": "ENOSYS",
        "ptrace": "EPERM",
        "mount": "EPERM",
        "thread": "ran",
        "fork": 7,
        "bash": "42",
        "python": "py",
    }


def test_the_same_probe_without_the_filter_gets_past_seccomp() -> None:
    """The control: unfiltered, the kernel answers something other than the filter's errors
    (unprivileged user namespaces are allowed here, clone3 exists, mount of nothing is EFAULT)."""
    results = _probe("plain")
    assert results["unshare"] == "ok"
    assert results["clone_newuser"] == "ok"
    assert results["ptrace"] == "ok"
    assert results["clone3"] == "EINVAL"  # size 0
    assert results["mount"] == ("EFAULT" if os.geteuid() == 0 else "EPERM")


def test_install_rejects_a_malformed_program() -> None:
    with pytest.raises(ValueError, match="sock_filter"):
        install(b"\x00" * 12)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_bwrap_applies_the_filter_from_an_fd() -> None:
    script = (
        "import ctypes, errno\n"
        "from openbuda.computer._seccomp import syscall_number, host_arch\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "result = libc.syscall(ctypes.c_long(syscall_number('bpf', host_arch())), 0, 0, 0)\n"
        "print(result, errno.errorcode.get(ctypes.get_errno()))\n"
        "import subprocess\n"
        "print(subprocess.run(['true']).returncode)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")

    def run(with_filter: bool) -> str:
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, build_filter(BASE_DENY))
            os.close(write_end)
            argv = ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc"]
            argv += ["--dev", "/dev", "--setenv", "PYTHONPATH", src]
            if with_filter:
                argv += ["--seccomp", str(read_end)]
            argv += ["--", sys.executable, "-c", script]
            out = subprocess.run(
                argv, pass_fds=(read_end,), capture_output=True, text=True, timeout=60
            )
        finally:
            os.close(read_end)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert run(with_filter=True) == "-1 EPERM\n0\n"
    assert run(with_filter=False) != "-1 EPERM\n0\n"  # the control: bpf() says EINVAL/EFAULT
