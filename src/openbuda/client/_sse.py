"""An incremental ``text/event-stream`` decoder, following the WHATWG "event stream" rules.

Sans-IO: feed it bytes as they arrive, get back whole events::

    decoder = SSEDecoder()
    for chunk in response.iter_bytes():
        for event in decoder.feed(chunk):
            ...

Rules kept (https://html.spec.whatwg.org/multipage/server-sent-events.html):

- lines end with CRLF, LF or CR, also when a chunk boundary splits a CRLF or a UTF-8 sequence;
  a UTF-8 byte order mark at the very start is dropped; invalid UTF-8 becomes U+FFFD;
- a blank line dispatches the event; an event without any ``data`` line is not dispatched;
- ``data`` lines are joined with ``\\n``; one space after the colon is removed;
- a line starting with ``:`` is a comment (heartbeats): counted, never dispatched;
- ``id`` sets the last event id (kept across events; ignored when it contains NUL);
  ``retry`` with only ASCII digits sets the reconnection delay; unknown fields are ignored;
- an event left incomplete at the end of the stream is discarded.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["SSEDecoder", "ServerSentEvent"]

_LINE_END: Final = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    ``id`` is the id given by this event's own ``id:`` line (``None`` when it had none, as
    openbuda's ephemeral events do); ``last_event_id`` is the stream's last event id when the
    event was dispatched, as a browser would report it.
    """

    data: str
    event: str = "message"
    id: str | None = None
    last_event_id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Decodes a byte stream into ``ServerSentEvent``s; one instance per connection."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_event_id = ""
        self.retry: int | None = None
        """The last ``retry:`` value in milliseconds, if the server sent one."""
        self.comments = 0
        """How many comment lines (heartbeats) have been seen."""

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk`` and return the events it completes."""
        return self._feed_text(self._text.decode(chunk))

    def close(self) -> list[ServerSentEvent]:
        """End of stream: decode what is buffered. An incomplete event is discarded."""
        events = self._feed_text(self._text.decode(b"", final=True))
        self._buffer = ""
        self._reset_event()
        return events

    def _feed_text(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks
        self._after_cr = text.endswith("\r")
        *lines, self._buffer = _LINE_END.split(self._buffer + text)
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self.feed_line(line)
            if event is not None:
                events.append(event)
        return events

    def feed_line(self, line: str) -> ServerSentEvent | None:
        """Process one line without its line ending; return the event a blank line completes."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        match name:
            case "event":
                self._event = value
            case "data":
                self._data.append(value)
            case "id":
                if "\x00" not in value:
                    self._id = value
                    self.last_event_id = value
            case "retry":
                if value.isascii() and value.isdigit():
                    self.retry = int(value)
            case _:
                pass
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._reset_event()
            return None
        event = ServerSentEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._id,
            last_event_id=self.last_event_id,
            retry=self.retry,
        )
        self._reset_event()
        return event

    def _reset_event(self) -> None:
        self._event = ""
        self._data = []
        self._id = None
