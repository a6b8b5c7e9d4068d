"""Reading ``/proc``: listening ports of a network namespace, CPU time and memory of processes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CpuRate",
    "cpu_seconds",
    "listening_ports",
    "processes_in_group",
    "rss_bytes",
    "socket_inodes",
]

_LISTEN = "0A"
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def listening_ports(pid: int | str = "self", inodes: set[int] | None = None) -> tuple[int, ...]:
    """TCP ports in LISTEN state in the network namespace of ``pid``.

    With ``inodes`` only sockets among them count (processes sharing the host's namespace).
    """
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            if inodes is not None and int(fields[9]) not in inodes:
                continue
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return tuple(sorted(ports))


def socket_inodes(pids: Iterable[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def processes_in_group(pgids: set[int]) -> list[int]:
    """Pids whose process group is one of ``pgids`` (fields after the command name)."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and int(fields[2]) in pgids:
            found.append(int(entry))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


class CpuRate:
    """CPU use in percent of one CPU between one reading and the next (0 at the first)."""

    __slots__ = ("_mark",)

    def __init__(self) -> None:
        self._mark: tuple[float, float] | None = None

    def percent(self, cpu_seconds: float) -> float:
        now = time.monotonic()
        percent = 0.0
        if self._mark is not None and now > self._mark[0]:
            percent = max(0.0, (cpu_seconds - self._mark[1]) / (now - self._mark[0]) * 100)
        self._mark = (now, cpu_seconds)
        return round(percent, 1)
