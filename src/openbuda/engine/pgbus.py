"""The PostgreSQL bus: the processes of one database tell each other through ``LISTEN/NOTIFY``.

Channels (payloads are compact ASCII JSON):

- ``openbuda_events``: ``{"origin", "n", "session_id", "event"}``, one live event of a session.
  PostgreSQL refuses payloads of 8000 bytes or more: a *stored* event (an int ``seq``) too big
  for that goes as ``{"origin", "n", "session_id", "resync": seq}`` and the receivers offer
  their subscribers ``{"type": "stream.resync", "seq": seq}`` (the SSE stream reads it from the
  store). An *ephemeral* event too big (a long ``tool.output`` chunk) is split: several events
  of its type whose ``data.text`` pieces concatenate to the whole, which is all a client does
  with them. One that is too big for another reason is dropped.
- ``openbuda_signals``: ``{"origin", "n", "kind"}`` with ``kind`` ``queued``, ``cancelled``
  (and ``task_id``) or ``resync`` (this sender lost notifications: every subscriber reads the
  store, every worker looks for queued tasks).

``origin`` is unique per bus, so a process ignores its own echo (it offered its own subscribers
the event at once); ``n`` numbers the bus's notifications, which keeps two identical text
deltas apart (PostgreSQL delivers identical notifications of one transaction once).

Publishing never blocks: the event goes to this process's subscribers at once and into an
outbox that a sender task drains over its own connection, up to ``_BATCH`` notifications per
round trip (one transaction, so their order is kept). A full outbox (``outbox`` items: the
database is unreachable or slower than the publishers) drops further events; the sender then
sends a ``resync`` signal as soon as it can, as it does after a connection broke under a batch.
A ``cancelled`` signal is never dropped for a full outbox, but one lost with a broken batch is
lost: the worker running that task learns of it when it next writes (its fence fails).
Cancelled, the sender still flushes the outbox for up to ``_FLUSH_SECONDS``: a runtime stops
its bus *after* its organizer, so the tasks a stopping worker re-queues wake the others.

A listener task keeps its own connection with ``LISTEN`` on both channels (only the signals
with ``events=False``, a worker-only process that has no stream subscribers), and runs
``SELECT 1`` every ``check_seconds`` to notice a silently dead server. Both connections are
named ``openbuda bus <process_id>`` (``application_name``). A connection that drops is opened
again with backoff (0.1 s doubling to 2 s, forever; one warning per outage); once the listener
listens again, every local subscriber gets ``{"type": "stream.resync"}`` and ``on_queued`` runs,
since notifications sent meanwhile are lost.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Literal, cast

import anyio
import asyncpg  # pyright: ignore[reportMissingTypeStubs]
from anyio.abc import TaskStatus as AnyioTaskStatus
from sqlalchemy import make_url

from openbuda.engine.broadcaster import InProcessBroadcaster
from openbuda.engine.bus import RESYNC, Bus

__all__ = ["EVENTS_CHANNEL", "SIGNALS_CHANNEL", "PgBroadcaster", "PgBus", "asyncpg_dsn"]

log = logging.getLogger("openbuda.bus")

EVENTS_CHANNEL: Final = "openbuda_events"
SIGNALS_CHANNEL: Final = "openbuda_signals"

_MAX_PAYLOAD: Final = 7999
"""PostgreSQL's limit: a payload must be shorter than 8000 bytes (ours are ASCII)."""
_BATCH: Final = 100
_FIRST_DELAY: Final = 0.1
_MAX_DELAY: Final = 2.0
_CONNECT_TIMEOUT: Final = 10
_NOTIFY: Final = (
    "SELECT pg_notify(channel, payload) FROM unnest($1::text[], $2::text[]) AS t(channel, payload)"
)
_FLUSH_SECONDS: Final = 5.0
_CONNECTION_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

Role = Literal["sender", "listener"]


def asyncpg_dsn(database_url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy URL (``postgresql+asyncpg://`` → ``postgresql://``)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _encode(value: dict[str, Any]) -> str:
    """ASCII JSON: its length is its size in bytes, and a lone surrogate survives as ``\\ud800``."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _cut(text: str, room: int) -> Iterator[str]:
    """``text`` in consecutive pieces whose JSON string bodies take at most ``room`` bytes
    (``room`` >= 12, the most one character can take: a surrogate pair's two escapes)."""
    start = 0
    while start < len(text):
        size = min(len(text) - start, room)
        while (encoded := len(_encode_str(text[start : start + size]))) > room:
            size = max(1, size * room // encoded)
        yield text[start : start + size]
        start += size


def _set(event: anyio.Event, _connection: object) -> None:
    event.set()


def _encode_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)[1:-1]


@dataclass(frozen=True, slots=True)
class _Event:
    session_id: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Cancelled:
    task_id: str


class PgBroadcaster(InProcessBroadcaster):
    """The process's broadcaster: what is published here also goes to the other processes."""

    def __init__(self, forward: Callable[[str, dict[str, Any]], None], buffer: int = 1000) -> None:
        super().__init__(buffer)
        self._forward = forward

    def publish_nowait(self, session_id: str, event: dict[str, Any]) -> None:
        super().publish_nowait(session_id, event)
        self._forward(session_id, event)

    def offer(self, session_id: str, event: dict[str, Any]) -> None:
        """To this process's subscribers only (an event another process published)."""
        super().publish_nowait(session_id, event)

    def offer_everyone(self, event: dict[str, Any]) -> None:
        """To every subscriber of every session here."""
        for session_id in list(self._subscribers):
            super().publish_nowait(session_id, event)


class PgBus(Bus):
    """The bus of one process among many on a PostgreSQL database (see the module docstring)."""

    def __init__(
        self,
        database_url: str,
        *,
        process_id: str,
        events: bool = True,
        outbox: int = 10_000,
        check_seconds: float = 10.0,
        buffer: int = 1000,
    ) -> None:
        self._broadcaster = PgBroadcaster(self._post_event, buffer)
        super().__init__(self._broadcaster)
        self.process_id = process_id
        self.origin = f"{process_id}/{secrets.token_hex(4)}"
        """Unique per bus: two processes given the same id still hear each other."""
        self.application_name = f"openbuda bus {process_id}"
        self._dsn = asyncpg_dsn(database_url)
        self._events = events
        self._outbox_limit = outbox
        self._check_seconds = check_seconds
        self._outbox: deque[_Event | _Cancelled] = deque()
        self._wake_pending = False
        self._resync_pending = False
        self._posted: anyio.Event | None = None
        self._sender: asyncpg.Connection | None = None
        self._sender_outage = False
        self._sent = 0

    # -- this process's side ---------------------------------------------------------------------

    def queued(self) -> None:
        self.on_queued()
        self._wake_pending = True
        self._kick()

    def cancelled(self, task_id: str) -> None:
        self.on_cancelled(task_id)
        self._outbox.append(_Cancelled(task_id))
        self._kick()

    def _post_event(self, session_id: str, event: dict[str, Any]) -> None:
        if len(self._outbox) >= self._outbox_limit:
            self._resync_pending = True
        else:
            self._outbox.append(_Event(session_id, event))
        self._kick()

    def _kick(self) -> None:
        if self._posted is not None:
            self._posted.set()

    # -- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: AnyioTaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send and listen until cancelled; started once the listener listens (which waits for
        the database for as long as it takes, like every later reconnection)."""
        self._posted = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(self._send_loop)
            await group.start(self._listen_loop)
            task_status.started()

    async def _connect(self, role: Role, *, outage: bool) -> asyncpg.Connection:
        """A new connection, retried with backoff for as long as it takes.

        ``outage``: the caller already warned that the connection dropped.
        """
        delay = _FIRST_DELAY
        while True:
            try:
                connection = await asyncpg.connect(
                    self._dsn,
                    server_settings={"application_name": self.application_name},
                    timeout=_CONNECT_TIMEOUT,
                )
            except _CONNECTION_ERRORS as error:
                if not outage:
                    log.warning(
                        "the bus %s of %r cannot connect to PostgreSQL (%s); retrying",
                        role,
                        self.process_id,
                        error,
                    )
                    outage = True
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)
            else:
                if outage:
                    log.info("the bus %s of %r is connected again", role, self.process_id)
                return connection

    async def _close(self, connection: asyncpg.Connection) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await connection.close(timeout=1)
            except Exception:  # already gone: make sure the socket is released
                connection.terminate()

    # -- sender ----------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """Drain the outbox until cancelled; then flush what is left (``_FLUSH_SECONDS`` at
        most), so that what a stopping process published last (its re-queued tasks) is heard."""
        try:
            while True:
                if self._pending():
                    await self._send_batch()
                    continue
                assert self._posted is not None
                await self._posted.wait()
                self._posted = anyio.Event()
        finally:
            with anyio.move_on_after(_FLUSH_SECONDS, shield=True):
                while self._pending():
                    await self._send_batch()
            if self._sender is not None:
                await self._close(self._sender)
                self._sender = None

    def _pending(self) -> bool:
        return bool(self._outbox) or self._wake_pending or self._resync_pending

    async def _send_batch(self) -> None:
        connection = self._sender
        if connection is None or connection.is_closed():  # dropped while idle: nothing lost
            if connection is not None:
                await self._close(connection)
            self._sender = None
            connection = self._sender = await self._connect("sender", outage=self._sender_outage)
            self._sender_outage = False
        channels, payloads = self._batch()
        try:
            await connection.execute(_NOTIFY, channels, payloads)
        except _CONNECTION_ERRORS as error:
            log.warning(
                "the bus sender of %r lost %d notifications (%s); reconnecting",
                self.process_id,
                len(payloads),
                error,
            )
            self._sender_outage = True
            self._resync_pending = True
            self._sender = None
            await self._close(connection)

    def _batch(self) -> tuple[list[str], list[str]]:
        """Take up to about ``_BATCH`` notifications out of the outbox, in order."""
        channels: list[str] = []
        payloads: list[str] = []
        if self._resync_pending:
            self._resync_pending = False
            self._wake_pending = False  # a resync wakes the workers too
            channels.append(SIGNALS_CHANNEL)
            payloads.append(self._signal("resync"))
        if self._wake_pending:
            self._wake_pending = False
            channels.append(SIGNALS_CHANNEL)
            payloads.append(self._signal("queued"))
        while self._outbox and len(payloads) < _BATCH:
            item = self._outbox.popleft()
            if isinstance(item, _Cancelled):
                channels.append(SIGNALS_CHANNEL)
                payloads.append(self._signal("cancelled", task_id=item.task_id))
                continue
            for payload in self._event_payloads(item):
                channels.append(EVENTS_CHANNEL)
                payloads.append(payload)
        return channels, payloads

    def _stamp(self, value: dict[str, Any]) -> str:
        self._sent += 1
        return _encode({"origin": self.origin, "n": self._sent, **value})

    def _signal(self, kind: str, **fields: str) -> str:
        return self._stamp({"kind": kind, **fields})

    def _event_payloads(self, item: _Event) -> list[str]:
        session_id, event = item.session_id, item.event
        payload = self._stamp({"session_id": session_id, "event": event})
        if len(payload) <= _MAX_PAYLOAD:
            return [payload]
        seq = event.get("seq")
        if isinstance(seq, int):
            return [self._stamp({"session_id": session_id, "resync": seq})]
        raw = event.get("data")
        data = cast("dict[str, Any]", raw) if isinstance(raw, dict) else {}
        text = data.get("text")
        if isinstance(text, str):
            shell = {"origin": self.origin, "n": 10**18, "session_id": session_id}
            empty = {**event, "data": {**data, "text": ""}}
            room = _MAX_PAYLOAD - len(_encode({**shell, "event": empty}))
            if room >= 12:
                return [
                    self._stamp(
                        {
                            "session_id": session_id,
                            "event": {**event, "data": {**data, "text": piece}},
                        }
                    )
                    for piece in _cut(text, room)
                ]
        log.debug("dropped a %r event too big to notify", event.get("type"))
        return []

    # -- listener --------------------------------------------------------------------------------

    async def _listen_loop(self, *, task_status: AnyioTaskStatus[None]) -> None:
        started = False
        while True:
            connection = await self._connect("listener", outage=started)
            dropped = anyio.Event()
            connection.add_termination_listener(partial(_set, dropped))
            try:
                if self._events:
                    await connection.add_listener(EVENTS_CHANNEL, self._on_notification)
                await connection.add_listener(SIGNALS_CHANNEL, self._on_notification)
                if started:
                    self._broadcaster.offer_everyone({"type": RESYNC})
                    self._call(self.on_queued)
                else:
                    started = True
                    task_status.started()
                await self._watch(connection, dropped)
            except _CONNECTION_ERRORS:
                pass
            finally:
                await self._close(connection)
            log.warning("the bus listener of %r lost its connection; reconnecting", self.process_id)

    async def _watch(self, connection: asyncpg.Connection, dropped: anyio.Event) -> None:
        """Return when the connection dropped or stopped answering."""
        while True:
            with anyio.move_on_after(self._check_seconds):
                await dropped.wait()
                return
            with anyio.move_on_after(self._check_seconds) as check:
                await connection.execute("SELECT 1")
            if check.cancelled_caught:
                return

    def _on_notification(self, _connection: object, _pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("ignored a malformed notification on %s: %.200r", channel, payload)
            return
        if not isinstance(message, dict) or message.get("origin") == self.origin:
            return
        if channel == EVENTS_CHANNEL:
            self._on_event(message)
        else:
            self._on_signal(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        session_id = message.get("session_id")
        if not isinstance(session_id, str):
            return
        event = message.get("event")
        if isinstance(event, dict):
            self._broadcaster.offer(session_id, event)
            return
        seq = message.get("resync")
        if isinstance(seq, int):
            self._broadcaster.offer(session_id, {"type": RESYNC, "seq": seq})

    def _on_signal(self, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == "queued":
            self._call(self.on_queued)
        elif kind == "cancelled":
            task_id = message.get("task_id")
            if isinstance(task_id, str):
                self._call(self.on_cancelled, task_id)
        elif kind == "resync":
            self._broadcaster.offer_everyone({"type": RESYNC})
            self._call(self.on_queued)

    def _call(self, callback: Callable[..., None], *args: str) -> None:
        """A callback's failure is logged: it must not cost the other notifications."""
        try:
            callback(*args)
        except Exception:
            log.exception("a bus callback failed")
