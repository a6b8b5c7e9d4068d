"""``FakeClock``: a ``ports.Clock`` that tests move by hand.

By default ``sleep`` advances the clock by the time asked and returns at once, so backoff and
timeouts cost no real time (``sleeps`` records what was asked). With ``auto_advance=False``
``sleep`` waits until the test moves the clock past its deadline with ``advance`` or ``set``.
The clock belongs to one event loop and thread.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel

__all__ = ["FakeClock"]

DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime | None = None, *, auto_advance: bool = True) -> None:
        start = start or DEFAULT_START
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        self.auto_advance = auto_advance
        self.sleeps: list[float] = []
        """The duration of every ``sleep`` call, in order."""
        self._sleepers: list[tuple[datetime, anyio.Event]] = []
        self._sleeper_added: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"FakeClock({self._now.isoformat()}, sleeping={len(self._sleepers)})"

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward, waking the sleepers whose time has come; the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        return self.set(self._now + timedelta(seconds=seconds))

    def set(self, when: datetime) -> datetime:
        """Move the clock to ``when`` (not backwards), waking the sleepers that are due."""
        if when.tzinfo is None:
            raise ValueError("FakeClock.set needs a timezone-aware time")
        when = when.astimezone(UTC)
        if when < self._now:
            raise ValueError(f"a clock does not go backwards ({when} < {self._now})")
        self._now = when
        for deadline, event in list(self._sleepers):
            if deadline <= when:
                event.set()
        return when

    @property
    def sleeping(self) -> int:
        """How many ``sleep`` calls are waiting (``auto_advance=False``)."""
        return len(self._sleepers)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.auto_advance or seconds <= 0:
            if seconds > 0:
                self.advance(seconds)
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._now + timedelta(seconds=seconds), anyio.Event())
        self._sleepers.append(entry)
        if self._sleeper_added is not None:
            self._sleeper_added.set()
        try:
            await entry[1].wait()
        finally:
            self._sleepers.remove(entry)

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Wait until ``count`` sleepers are waiting (wrap it in ``anyio.fail_after``)."""
        while len(self._sleepers) < count:
            self._sleeper_added = anyio.Event()
            await self._sleeper_added.wait()
