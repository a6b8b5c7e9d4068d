"""A process's row in the store: registered at start, seen at every heartbeat, removed on a
clean stop — what ``openbuda status`` lists as the deployment's processes.

A process killed outright leaves its row behind with an old ``seen_at``; a restart with the same
id (``--worker-id``) takes the row over, and any process that starts forgets rows not seen for a
day.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Final

import anyio
from anyio.abc import TaskStatus as AnyioTaskStatus

from openbuda import __version__
from openbuda.ports import Clock, ProcessInfo, ProcessKind, Store

__all__ = ["FORGET_AFTER", "Presence"]

FORGET_AFTER: Final = timedelta(days=1)

log = logging.getLogger("openbuda.engine")


class Presence:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        process_id: str,
        kind: ProcessKind,
        heartbeat_seconds: float,
    ) -> None:
        self.store = store
        self.clock = clock
        self.process_id = process_id
        self.kind: ProcessKind = kind
        self.heartbeat_seconds = heartbeat_seconds

    def _info(self) -> ProcessInfo:
        now = self.clock.now()
        return ProcessInfo(
            id=self.process_id,
            kind=self.kind,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            version=__version__[:64],
            started_at=now,
            seen_at=now,
        )

    async def register(self) -> None:
        """Register, and forget the processes not seen for ``FORGET_AFTER`` (killed and never
        started again: they would stay in ``openbuda status`` for ever)."""
        info = self._info()
        async with self.store.write() as tx:
            await tx.prune_processes(info.seen_at - FORGET_AFTER)
            await tx.register_process(info)

    async def heartbeat(self) -> None:
        async with self.store.write() as tx:
            if not await tx.heartbeat_process(self.process_id, self.clock.now()):
                await tx.register_process(self._info())  # removed meanwhile: come back

    async def run(self, *, task_status: AnyioTaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Register, heartbeat until cancelled, then remove the row."""
        await self.register()
        task_status.started()
        try:
            while True:
                await anyio.sleep(self.heartbeat_seconds)
                try:
                    await self.heartbeat()
                except Exception:  # the store is briefly gone: the next beat tries again
                    log.warning("could not record that process %s is alive", self.process_id)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    async with self.store.write() as tx:
                        await tx.remove_process(self.process_id)
                except Exception:
                    log.warning("could not remove process %s from the store", self.process_id)
