"""The real clock (``ports.Clock``): UTC wall time and ``anyio.sleep``.

Tests use ``openbuda.testing.FakeClock`` instead, which they can move.
"""

from __future__ import annotations

from datetime import UTC, datetime

import anyio

__all__ = ["SystemClock"]


class SystemClock:
    """``now()`` is timezone-aware UTC; ``sleep`` is ``anyio.sleep``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(seconds, 0.0))
