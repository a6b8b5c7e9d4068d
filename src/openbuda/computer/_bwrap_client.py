"""The host's end of the sandbox daemon's protocol (``_sandbox_init``'s docstring has it).

One unix-socket connection per request. The socket lives in the agent's run directory, whose
host path may be longer than a socket address allows (108 bytes), so the client keeps that
directory open and connects through ``/proc/self/fd/<fd>/d.sock``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from openbuda.computer._capture import OutputCapture
from openbuda.computer._portstream import SocketPortStream

__all__ = ["DaemonClient", "DaemonError", "DaemonGone", "ExitInfo"]

SOCKET_NAME: Final = "d.sock"
_MAX_LINE: Final = 1 << 20


class DaemonGone(Exception):
    """The daemon cannot be reached, or closed the connection before answering."""


class DaemonError(Exception):
    """The daemon refused a request; ``kind`` is ``cwd``, ``session`` or ``request``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ExitInfo:
    code: int
    signal: int | None
    timed_out: bool


class DaemonClient:
    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir
        self._dir_fd: int | None = None

    def _address(self) -> str:
        if self._dir_fd is None:
            self._dir_fd = os.open(self._run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._dir_fd}/{SOCKET_NAME}"

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    async def _open(
        self, message: dict[str, Any]
    ) -> tuple[anyio.abc.SocketStream, BufferedByteReceiveStream]:
        try:
            stream = await anyio.connect_unix(self._address())
        except OSError as exc:
            raise DaemonGone(f"cannot reach the sandbox daemon: {exc.strerror}") from None
        try:
            await stream.send(json.dumps(message).encode() + b"\n")
        except (OSError, anyio.BrokenResourceError) as exc:
            await stream.aclose()
            raise DaemonGone(f"the sandbox daemon closed the connection: {exc}") from None
        return stream, BufferedByteReceiveStream(stream)

    async def _message(self, buffered: BufferedByteReceiveStream) -> dict[str, Any]:
        try:
            line = await buffered.receive_until(b"\n", _MAX_LINE)
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            raise DaemonGone("the sandbox daemon closed the connection") from None
        message = json.loads(line)
        if not isinstance(message, dict):
            raise DaemonGone(f"unexpected answer from the sandbox daemon: {line[:200]!r}")
        if message.get("t") == "error":  # pyright: ignore[reportUnknownMemberType]
            raise DaemonError(str(message.get("kind")), str(message.get("message")))  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
        return message  # pyright: ignore[reportUnknownVariableType]

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request answered by one line."""
        stream, buffered = await self._open(message)
        async with stream:
            return await self._message(buffered)

    async def ping(self, within: float = 2.0) -> bool:
        with anyio.move_on_after(within):
            try:
                return bool((await self.call({"op": "ping"})).get("ok"))
            except (DaemonGone, DaemonError):
                return False
        return False

    async def exec(
        self,
        message: dict[str, Any],
        capture: OutputCapture,
        kill_when: Callable[[], Awaitable[None]] | None = None,
    ) -> ExitInfo:
        """Run a command; its output goes to ``capture`` as it arrives. Once ``kill_when()``
        returns (a limit was hit) the daemon is told to kill the command."""
        stream, buffered = await self._open(message)
        failure: Exception | None = None
        info: ExitInfo | None = None
        async with stream, anyio.create_task_group() as group:
            if kill_when is not None:
                group.start_soon(self._kill_when, stream, kill_when)
            try:
                info = await self._frames(buffered, capture)
            except Exception as exc:  # raised as itself below, not in an exception group
                failure = exc
            group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        assert info is not None
        return info

    async def _kill_when(
        self, stream: anyio.abc.SocketStream, kill_when: Callable[[], Awaitable[None]]
    ) -> None:
        await kill_when()
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await stream.send(b'{"op": "kill"}\n')

    async def _frames(
        self, buffered: BufferedByteReceiveStream, capture: OutputCapture
    ) -> ExitInfo:
        while True:
            frame = await self._message(buffered)
            kind = frame.get("t")
            if kind == "o":
                try:
                    data = await buffered.receive_exactly(int(frame["n"]))
                except (anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                    raise DaemonGone("the sandbox daemon closed the connection") from None
                await capture.feed("stdout" if frame.get("s") == 1 else "stderr", data)
            elif kind == "exit":
                number = frame.get("signal")
                return ExitInfo(
                    code=int(frame["code"]),
                    signal=None if number is None else int(number),
                    timed_out=bool(frame.get("timed_out")),
                )

    async def connect_port(self, port: int) -> SocketPortStream | None:
        """A stream to ``port`` in the sandbox; ``None`` when nothing listens there."""
        stream, buffered = await self._open({"op": "connect", "port": port})
        try:
            answer = await self._message(buffered)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        if not answer.get("ok"):
            with contextlib.suppress(OSError):
                await stream.aclose()
            return None
        return SocketPortStream(stream, buffered)
