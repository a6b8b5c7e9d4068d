"""One process's openbuda: the store, the broadcaster, the services and the organizer.

::

    async with Runtime.start(settings) as runtime:
        agent = await runtime.agents.create(principal, name="helper")
        ...

``start`` migrates the store, runs the organizer in a task group it owns, and on the way out
stops the organizer (its running tasks go back to the queue) and closes the store.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from openbuda.clock import SystemClock
from openbuda.engine.broadcaster import InProcessBroadcaster
from openbuda.engine.loop import EngineDeps, MemoryReader
from openbuda.engine.organizer import Organizer
from openbuda.engine.tools import ToolRegistry
from openbuda.models import resolve_model
from openbuda.ports import Clock, ModelClient, Store
from openbuda.service import AgentService, ServiceDeps, SessionService, TaskService
from openbuda.settings import Settings
from openbuda.stores import open_store

__all__ = ["Runtime"]


@dataclass(slots=True)
class Runtime:
    settings: Settings
    store: Store
    broadcaster: InProcessBroadcaster
    clock: Clock
    organizer: Organizer
    agents: AgentService
    sessions: SessionService
    tasks: TaskService

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: Store,
        *,
        clock: Clock | None = None,
        models: Callable[[str | None], ModelClient] | None = None,
        tools: ToolRegistry | None = None,
        memory: MemoryReader | None = None,
        worker_id: str | None = None,
    ) -> Runtime:
        """Wire the parts around an open ``store`` (nothing starts running)."""
        clock = clock or SystemClock()
        broadcaster = InProcessBroadcaster()

        def resolve(spec: str | None) -> ModelClient:
            return resolve_model(spec, settings)

        resolver = models or resolve
        engine = EngineDeps(store, clock, broadcaster, settings, resolver, tools or ToolRegistry())
        if memory is not None:
            engine.memory = memory
        organizer = Organizer(engine, worker_id=worker_id)
        deps = ServiceDeps(
            store,
            clock,
            broadcaster,
            on_queued=organizer.wake,
            on_cancelled=organizer.cancel_task,
        )
        return cls(
            settings,
            store,
            broadcaster,
            clock,
            organizer,
            AgentService(deps),
            SessionService(deps),
            TaskService(deps),
        )

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        settings: Settings,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        models: Callable[[str | None], ModelClient] | None = None,
        tools: ToolRegistry | None = None,
        memory: MemoryReader | None = None,
        worker_id: str | None = None,
        run_engine: bool = True,
    ) -> AsyncGenerator[Runtime]:
        """Open (and migrate) the store, run the organizer, and clean up on exit.

        ``run_engine=False`` serves the services without running tasks (an API-only process).
        """
        own_store = store is None
        if store is None:
            settings.home.mkdir(parents=True, exist_ok=True)
            store = open_store(
                settings.resolved_database_url(), synchronous=settings.sqlite_synchronous
            )
        try:
            await store.migrate()
            runtime = cls.build(
                settings,
                store,
                clock=clock,
                models=models,
                tools=tools,
                memory=memory,
                worker_id=worker_id,
            )
            async with anyio.create_task_group() as group:
                if run_engine:
                    await group.start(runtime.organizer.run)
                try:
                    yield runtime
                finally:
                    group.cancel_scope.cancel()
        finally:
            if own_store:
                with anyio.CancelScope(shield=True):
                    await store.close()
