"""The sandbox backends the ``Sandbox`` conformance suite runs against, and helpers for it.

``process`` always runs; ``bwrap`` runs when ``BwrapBackend`` can be built here (bubblewrap
installed, user namespaces, cgroups), else its cases are skipped with the reason the backend
gave. Each backend lives under the test's ``tmp_path`` (``ComputerLayout(tmp_path /
"computers")``) and is closed at the end of the test, which stops every computer it started.

Everything goes through the port: commands are backend-neutral (relative paths from the default
working directory ``/agent``; ``${TMPDIR:-/tmp}`` for the computer's ``/tmp``, which the
``process`` backend points at its own directory). Processes are found from the host by a
unique marker in their command line (``sleep 1000.<random>``): the host sees every process of
every backend, whatever namespace it runs in. ``test_escape`` and ``benchmarks/computer.py``
use the same helpers.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import pytest

from openbuda.computer._layout import ComputerLayout
from openbuda.computer.process import ProcessBackend
from openbuda.ports import (
    ExecRequest,
    ExecResult,
    OutputStream,
    PortStream,
    Sandbox,
    SandboxBackend,
    SandboxView,
)
from openbuda.settings import Settings

__all__ = [
    "BACKEND_NAMES",
    "CONSOLE",
    "Marker",
    "OutputLog",
    "bwrap_backend",
    "free_port",
    "host_pids_with",
    "http_get",
    "make_backend",
    "opened",
    "run",
    "wait_until",
]

BACKEND_NAMES: Final = (pytest.param("process", id="process"), pytest.param("bwrap", id="bwrap"))
CONSOLE: Final = SandboxView(session_id=None)


def bwrap_backend(tmp_path: Path, **settings: Any) -> SandboxBackend:
    """A ``BwrapBackend`` over ``tmp_path``, or a skip that says why it cannot run here."""
    from openbuda.computer.bwrap import BwrapBackend, BwrapUnavailable

    layout = ComputerLayout(tmp_path / "computers")
    try:
        return BwrapBackend(layout, Settings(home=tmp_path, **settings))
    except BwrapUnavailable as exc:
        pytest.skip(f"the bwrap backend cannot run here: {exc}")


def make_backend(name: str, tmp_path: Path) -> SandboxBackend:
    if name == "process":
        return ProcessBackend(ComputerLayout(tmp_path / "computers"))
    assert name == "bwrap", name
    return bwrap_backend(tmp_path)


@asynccontextmanager
async def opened(backend: SandboxBackend) -> AsyncGenerator[SandboxBackend]:
    """``backend``, closed (every computer stopped) however the block ends."""
    try:
        yield backend
    finally:
        with anyio.CancelScope(shield=True), anyio.fail_after(60):
            await backend.aclose()


async def run(
    sandbox: Sandbox,
    command: str,
    *,
    view: SandboxView = CONSOLE,
    timeout_s: float | None = 60,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    capture_bytes: int = 1024 * 1024,
    on_output: Callable[[OutputStream, str], Awaitable[None]] | None = None,
) -> ExecResult:
    request = ExecRequest(
        command=command,
        view=view,
        cwd=cwd,
        timeout_s=timeout_s,
        env=dict(env or {}),
        capture_bytes=capture_bytes,
    )
    return await sandbox.exec(request, on_output)


class OutputLog:
    """An ``on_output`` callback that keeps what arrived, in order, with arrival times."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.chunks: list[tuple[OutputStream, str, float]] = []

    async def __call__(self, stream: OutputStream, text: str) -> None:
        self.chunks.append((stream, text, time.monotonic() - self.started))

    def text(self, stream: OutputStream) -> str:
        return "".join(text for name, text, _ in self.chunks if name == stream)

    def merged(self) -> list[tuple[OutputStream, str]]:
        """Consecutive chunks of one stream joined (pipes may split a write)."""
        merged: list[tuple[OutputStream, str]] = []
        for name, text, _ in self.chunks:
            if merged and merged[-1][0] == name:
                merged[-1] = (name, merged[-1][1] + text)
            else:
                merged.append((name, text))
        return merged


class Marker:
    """A unique ``sleep`` that can be told apart from every other process on the host."""

    def __init__(self) -> None:
        self.seconds = f"1000.{secrets.randbelow(10**6):06d}"

    @property
    def command(self) -> str:
        return f"sleep {self.seconds}"

    @property
    def _is_it(self) -> str:
        """A shell test: is ``$f`` the command line of this very process (after its exec)?"""
        return f"[ \"$(tr '\\0' ' ' < $f 2>/dev/null)\" = '{self.command} ' ]"

    @property
    def background(self) -> str:
        """Start it in the background, detached from the command's pipes, and print its pid
        once it runs ``sleep`` (not before: the fork may not have reached ``exec`` yet)."""
        return (
            f"{self.command} </dev/null >/dev/null 2>&1 & f=/proc/$!/cmdline; "
            f"until {self._is_it}; do sleep 0.01; done; echo $!"
        )

    @property
    def count_inside(self) -> str:
        """A command that prints how many such processes its own ``/proc`` shows."""
        return f"for f in /proc/[0-9]*/cmdline; do {self._is_it} && echo; done | wc -l"

    def host_pids(self) -> list[int]:
        return host_pids_with(["sleep", self.seconds])


def host_pids_with(argv: list[str]) -> list[int]:
    """Host pids whose command line is exactly ``argv`` (every namespace: this is the host)."""
    wanted = "\0".join(argv).encode() + b"\0"
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if handle.read() == wanted:
                    found.append(int(entry))
        except OSError:
            continue
    return found


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.05
) -> float:
    """Poll ``check`` until it holds; the seconds it took (``TimeoutError`` past ``timeout``)."""
    started = time.monotonic()
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(interval)
    return time.monotonic() - started


def free_port() -> int:
    """A TCP port nothing on the host listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def http_get(stream: PortStream, path: str = "/") -> bytes:
    """Send a raw HTTP/1.0 GET over ``stream`` and read the whole response."""
    await stream.send(f"GET {path} HTTP/1.0\r\nHost: sandbox\r\n\r\n".encode())
    response = b""
    with anyio.fail_after(10):
        while chunk := await stream.receive():
            response += chunk
    await stream.aclose()
    return response
