"""Output of a running command: forwarded live, kept up to a cap, counted in full."""

from __future__ import annotations

import codecs

from openbuda.ports import OutputCallback, OutputStream

__all__ = ["OutputCapture"]


class _Stream:
    __slots__ = ("decoder", "kept", "parts", "total")

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.parts: list[bytes] = []
        self.kept = 0
        self.total = 0


class OutputCapture:
    """Collects stdout and stderr; ``capture_bytes`` of each are kept for the result."""

    def __init__(self, capture_bytes: int, on_output: OutputCallback | None = None) -> None:
        self._cap = max(0, capture_bytes)
        self._on_output = on_output
        self._streams: dict[OutputStream, _Stream] = {"stdout": _Stream(), "stderr": _Stream()}

    async def feed(self, stream: OutputStream, data: bytes) -> None:
        if not data:
            return
        state = self._streams[stream]
        state.total += len(data)
        room = self._cap - state.kept
        if room > 0:
            kept = data[:room]
            state.parts.append(kept)
            state.kept += len(kept)
        if self._on_output is not None:
            text = state.decoder.decode(data)
            if text:
                await self._on_output(stream, text)

    async def flush(self) -> None:
        """Forward what an incomplete UTF-8 sequence held back at the end of each stream."""
        for name, state in self._streams.items():
            text = state.decoder.decode(b"", final=True)
            if text and self._on_output is not None:
                await self._on_output(name, text)

    def text(self, stream: OutputStream) -> str:
        return b"".join(self._streams[stream].parts).decode("utf-8", errors="replace")

    def total(self, stream: OutputStream) -> int:
        return self._streams[stream].total
