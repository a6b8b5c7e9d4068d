"""What services need from the outside, built once at the edge and passed down."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from openbuda.domain.records import Event
from openbuda.ports import Broadcaster, Clock, Store

__all__ = ["ServiceDeps"]


def _nothing(*_args: object) -> None:
    return None


async def _nothing_async(*_args: object) -> None:
    return None


@dataclass(slots=True)
class ServiceDeps:
    store: Store
    clock: Clock
    broadcaster: Broadcaster
    on_queued: Callable[[], None] = field(default=_nothing)
    """Called after a transaction queued a task: wakes this process's workers."""
    on_cancelled: Callable[[str], None] = field(default=_nothing)
    """Called with a task id after a transaction cancelled it: stops its run here at once."""
    on_agent_deleted: Callable[[str], Awaitable[None]] = field(default=_nothing_async)
    """Called with an agent id after its deletion committed: stops and forgets its computer."""

    async def publish(self, session_id: str, events: Sequence[Event]) -> None:
        """Deliver committed events to live subscribers."""
        for event in events:
            await self.broadcaster.publish(session_id, event.to_json())
