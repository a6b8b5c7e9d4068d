"""Seccomp deny-lists as classic BPF, built in pure Python (no libseccomp), x86_64 and aarch64.

``build_filter(deny)`` returns the raw array of ``struct sock_filter`` (8 bytes each: ``u16
code, u8 jt, u8 jf, u32 k``, native byte order): exactly what ``bwrap --seccomp FD`` reads, and
what ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &sock_fprog)`` takes (``install`` does that).
The program, against ``struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}``::

    ld arch;  arch != host's          -> KILL_PROCESS   (i386 int 0x80, aarch32 compat: no bypass)
    ld nr;    x86_64: nr >= 0x40000000 -> ERRNO          (x32 ABI numbers alias the 64-bit ones)
    nr == clone3                       -> ERRNO(ENOSYS)  (its flags live in memory, out of BPF's
                                                          reach; glibc falls back to clone)
    nr == each denied name             -> ERRNO(errno_value), or ERRNO(ENOSYS) for ENOSYS_NAMES
    deny_clone_namespaces: nr == clone and arg0 & CLONE_NEW* -> ERRNO(errno_value)
    ALLOW

Each denied name costs two instructions (``jeq nr, 0, 1; ret``) so no jump ever needs an offset
past 255. ``ENOSYS_NAMES`` (io_uring and the new mount API) answer "not implemented" rather
than "not permitted" so libraries fall back to the classic calls (plain read/write, ``mount``),
which stay visible to these filters.

Two lists: ``BASE_DENY`` for the whole sandbox (``bwrap --seccomp``: calls no agent needs, and
the kernel's big attack surfaces); ``SESSION_DENY`` adds what the in-sandbox daemon itself needs
but agents' commands must not have (namespaces, mounts, ptrace and cross-process memory, the
hostname of the shared UTS namespace); build it with ``deny_clone_namespaces=True``.

``personality`` stays allowed: its dangerous bit, ``MMAP_PAGE_ZERO``, is stopped by
``mmap_min_addr`` (mapping page zero needs ``CAP_SYS_RAWIO`` in the host's namespace), the
others (``ADDR_NO_RANDOMIZE``, ``READ_IMPLIES_EXEC``, ``PER_LINUX32``) only change the calling
process, and ``setarch``, valgrind and some build tools call it.

A name this module knows but the host's architecture lacks (``iopl`` on aarch64) is skipped; a
name it does not know raises ``ValueError``.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct
from collections.abc import Iterable
from typing import Final

__all__ = ["BASE_DENY", "ENOSYS_NAMES", "SESSION_DENY", "build_filter", "host_arch", "install"]

# (x86_64, aarch64) syscall numbers; None where the architecture has no such call.
SYSCALLS: Final[dict[str, tuple[int | None, int | None]]] = {
    "_sysctl": (156, None),
    "acct": (163, 89),
    "add_key": (248, 217),
    "adjtimex": (159, 171),
    "bpf": (321, 280),
    "chroot": (161, 51),
    "clock_adjtime": (305, 266),
    "clock_settime": (227, 112),
    "clone": (56, 220),
    "clone3": (435, 435),
    "create_module": (174, None),
    "delete_module": (176, 106),
    "fanotify_init": (300, 262),
    "finit_module": (313, 273),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fsopen": (430, 430),
    "fspick": (433, 433),
    "get_kernel_syms": (177, None),
    "init_module": (175, 105),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "io_uring_setup": (425, 425),
    "ioperm": (173, None),
    "iopl": (172, None),
    "kcmp": (312, 272),
    "kexec_file_load": (320, 294),
    "kexec_load": (246, 104),
    "keyctl": (250, 219),
    "lookup_dcookie": (212, 18),
    "mount": (165, 40),
    "mount_setattr": (442, 442),
    "move_mount": (429, 429),
    "name_to_handle_at": (303, 264),
    "nfsservctl": (180, 42),
    "open_by_handle_at": (304, 265),
    "open_tree": (428, 428),
    "perf_event_open": (298, 241),
    "personality": (135, 92),
    "pidfd_getfd": (438, 438),
    "pivot_root": (155, 41),
    "process_madvise": (440, 440),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "ptrace": (101, 117),
    "query_module": (178, None),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "reboot": (169, 142),
    "request_key": (249, 218),
    "seccomp": (317, 277),
    "setdomainname": (171, 162),
    "sethostname": (170, 161),
    "setns": (308, 268),
    "settimeofday": (164, 170),
    "swapoff": (168, 225),
    "swapon": (167, 224),
    "sysfs": (139, None),
    "syslog": (103, 116),
    "umount2": (166, 39),
    "unshare": (272, 97),
    "uselib": (134, None),
    "userfaultfd": (323, 282),
    "ustat": (136, None),
    "vhangup": (153, 58),
}

BASE_DENY: Final[tuple[str, ...]] = (
    # kernel code and modules
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module", "uselib",
    # big attack surfaces no agent needs
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "lookup_dcookie", "fanotify_init",
    # file handles bypass path checks
    "open_by_handle_at", "name_to_handle_at",
    # the host: disks, power, clock, logs, raw I/O
    "quotactl", "quotactl_fd", "swapon", "swapoff", "reboot", "syslog", "acct",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
    "nfsservctl", "vhangup", "_sysctl", "ustat", "sysfs",
    # the new mount API and pivot_root (the daemon's mounts use mount(2))
    "mount_setattr", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
    "pivot_root",
)  # fmt: skip

SESSION_DENY: Final[tuple[str, ...]] = (
    *BASE_DENY,
    "unshare", "setns", "mount", "umount2", "chroot",
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_getfd",
    "sethostname", "setdomainname",
)  # fmt: skip

ENOSYS_NAMES: Final = frozenset(
    {
        "clone3",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "mount_setattr",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
    }
)
"""Denied names that return ``ENOSYS``, so callers fall back to an older call."""

CLONE_NEW_FLAGS: Final = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME (never an exit signal number in clone's low byte)
)

_AUDIT_ARCH: Final = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT: Final = 0x40000000

# classic BPF opcodes
_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_JSET_K: Final = 0x45
_RET_K: Final = 0x06

RET_KILL_PROCESS: Final = 0x80000000
RET_ERRNO: Final = 0x00050000
RET_ALLOW: Final = 0x7FFF0000

_OFFSET_NR: Final = 0
_OFFSET_ARCH: Final = 4
_OFFSET_ARG0_LOW: Final = 16  # args[0] is a little-endian u64 on both architectures

_INSN = struct.Struct("=HBBI")


def host_arch() -> str:
    """The host's architecture as this module names it; ``ValueError`` if unsupported."""
    machine = platform.machine()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)
    if arch not in _AUDIT_ARCH:
        raise ValueError(f"seccomp filters are not built for architecture {machine!r}")
    return arch


def syscall_number(name: str, arch: str) -> int | None:
    """The number of ``name`` on ``arch`` (None if ``arch`` lacks it; ``ValueError`` if unknown)."""
    try:
        numbers = SYSCALLS[name]
    except KeyError:
        raise ValueError(f"unknown system call {name!r}") from None
    return numbers[0] if arch == "x86_64" else numbers[1]


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return _INSN.pack(code, jt, jf, k)


def _deny(nr: int, action: int) -> bytes:
    return _insn(_JEQ_K, nr, 0, 1) + _insn(_RET_K, action)


def build_filter(
    deny: Iterable[str],
    *,
    errno_value: int = errno.EPERM,
    deny_clone_namespaces: bool = False,
    arch: str | None = None,
) -> bytes:
    """The filter program (see the module docstring); ``arch`` defaults to the host's."""
    arch = arch or host_arch()
    if arch not in _AUDIT_ARCH:
        raise ValueError(f"seccomp filters are not built for architecture {arch!r}")
    if not 0 < errno_value < 4096:
        raise ValueError(f"errno_value must be in 1..4095, not {errno_value!r}")
    refuse = RET_ERRNO | errno_value
    enosys = RET_ERRNO | errno.ENOSYS
    names = list(dict.fromkeys(deny))
    numbers = [(name, syscall_number(name, arch)) for name in names]  # ValueError first

    program = [
        _insn(_LD_W_ABS, _OFFSET_ARCH),
        _insn(_JEQ_K, _AUDIT_ARCH[arch], 1, 0),
        _insn(_RET_K, RET_KILL_PROCESS),
        _insn(_LD_W_ABS, _OFFSET_NR),
    ]
    if arch == "x86_64":
        program += [_insn(_JGE_K, _X32_SYSCALL_BIT, 0, 1), _insn(_RET_K, refuse)]
    clone3 = syscall_number("clone3", arch)
    assert clone3 is not None
    program.append(_deny(clone3, enosys))
    for name, nr in numbers:
        if nr is not None and name != "clone3":
            program.append(_deny(nr, enosys if name in ENOSYS_NAMES else refuse))
    if deny_clone_namespaces:
        clone = syscall_number("clone", arch)
        assert clone is not None
        program += [
            _insn(_JEQ_K, clone, 0, 3),
            _insn(_LD_W_ABS, _OFFSET_ARG0_LOW),
            _insn(_JSET_K, CLONE_NEW_FLAGS, 0, 1),
            _insn(_RET_K, refuse),
        ]
    program.append(_insn(_RET_K, RET_ALLOW))
    return b"".join(program)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_PR_SET_NO_NEW_PRIVS: Final = 38
_SECCOMP_SET_MODE_FILTER: Final = 1
_SECCOMP_FILTER_FLAG_TSYNC: Final = 1


def install(filter_bytes: bytes) -> None:
    """Apply the filter to the calling process, all its threads, and everything it starts.

    Sets ``no_new_privs`` first (required without ``CAP_SYS_ADMIN``, and wanted anyway), then
    ``seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog)``. Irreversible.
    """
    if not filter_bytes or len(filter_bytes) % _INSN.size:
        raise ValueError("filter_bytes is not an array of struct sock_filter")
    count = len(filter_bytes) // _INSN.size
    if count > 4096:
        raise ValueError(f"filter has {count} instructions, the kernel takes at most 4096")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    buffer = ctypes.create_string_buffer(filter_bytes, len(filter_bytes))
    prog = _SockFprog(count, ctypes.cast(buffer, ctypes.c_void_p))
    seccomp_nr = syscall_number("seccomp", host_arch())
    assert seccomp_nr is not None
    result = libc.syscall(
        ctypes.c_long(seccomp_nr),
        ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_uint(_SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(prog),
    )
    if result != 0:
        code = ctypes.get_errno() if result < 0 else errno.EBUSY  # > 0: a thread not synced
        raise OSError(code, f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {errno.errorcode[code]}")
