"""``PortStream`` over a socket: a TCP connection (``process``) or the daemon's splice (``bwrap``)."""

from __future__ import annotations

import anyio
import anyio.abc

__all__ = ["SocketPortStream"]


class SocketPortStream:
    """Sends on ``stream``; receives from ``receiver`` (default the stream itself), which may be
    a buffer holding bytes already read past a handshake. ``b""`` once the peer closed."""

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        receiver: anyio.abc.ByteReceiveStream | None = None,
    ) -> None:
        self._stream = stream
        self._receiver: anyio.abc.ByteReceiveStream = receiver or stream

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._receiver.receive(max_bytes)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return b""

    async def aclose(self) -> None:
        await self._stream.aclose()
