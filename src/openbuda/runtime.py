"""One process's openbuda: the store, the broadcaster, the services and the organizer.

::

    async with Runtime.start(settings) as runtime:
        agent = await runtime.agents.create(principal, name="helper")
        ...

``start`` migrates the store, runs the organizer and the computers' sleep loop in a task group
it owns, and on the way out stops the organizer (its running tasks go back to the queue), stops
the computers it started and closes the store.

The agents' computers come from ``sandbox`` (default: ``open_backend(settings)``, opened on
first use, so that a process that never runs a command never probes for bubblewrap). Without
``tools=`` the agents get the built-in computer tools (``shell``, ``read_file`` …); a caller that
passes its own registry decides alone. Drive content goes to ``blobs`` (default:
``open_blob_store(settings)``, a local directory unless ``drive_blobs`` names S3); without
``memory=`` each task reads the agent's ``MEMORY.md`` from its Drive.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from openbuda.clock import SystemClock
from openbuda.computer import Computers, open_backend
from openbuda.computer.tools import computer_tools
from openbuda.drive.blobs import open_blob_store
from openbuda.drive.memory import DriveMemory, RememberTool
from openbuda.drive.sync import DriveSync
from openbuda.engine.broadcaster import InProcessBroadcaster
from openbuda.engine.bus import Bus, open_bus
from openbuda.engine.loop import EngineDeps, MemoryReader
from openbuda.engine.organizer import Organizer, new_worker_id
from openbuda.engine.presence import Presence
from openbuda.engine.tools import ToolRegistry, load_tools
from openbuda.models import resolve_model
from openbuda.ports import (
    BlobStore,
    Clock,
    ModelClient,
    ProcessKind,
    Sandbox,
    SandboxBackend,
    SandboxCapabilities,
    SandboxSpec,
    Store,
)
from openbuda.service import (
    AgentService,
    ComputerService,
    DriveService,
    ServiceDeps,
    SessionService,
    TaskService,
)
from openbuda.service.drive import DriveLimits
from openbuda.settings import Settings
from openbuda.stores import open_store

__all__ = ["LazyBackend", "Runtime"]


class LazyBackend:
    """A ``SandboxBackend`` opened on first use (``open_backend(settings)`` by default)."""

    def __init__(self, open_it: Callable[[], SandboxBackend]) -> None:
        self._open = open_it
        self._backend: SandboxBackend | None = None
        self._lock = anyio.Lock()

    @property
    def opened(self) -> bool:
        return self._backend is not None

    def _get(self) -> SandboxBackend:
        if self._backend is None:
            self._backend = self._open()
        return self._backend

    @property
    def name(self) -> str:
        return self._get().name

    @property
    def capabilities(self) -> SandboxCapabilities:
        return self._get().capabilities

    async def connect(self, spec: SandboxSpec) -> Sandbox:
        if self._backend is None:
            async with self._lock:
                if self._backend is None:  # probing may run programs: not on the event loop
                    opened = await anyio.to_thread.run_sync(self._open)
                    if self._backend is None:
                        self._backend = opened
                    else:  # a synchronous caller opened one meanwhile: keep that one
                        await opened.aclose()
        return await self._backend.connect(spec)

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.aclose()


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
    computers: Computers
    """The agents' computers used by this process (one sandbox per agent)."""
    computer: ComputerService
    """Members at an agent's computer: status, exec, sleep/wake/restart, previews."""
    drive: DriveService
    """The Agent and Space Drives: files, versions, history, diff, restore, saved sessions."""
    blobs: BlobStore
    bus: Bus
    """How this process hears the others (PostgreSQL: LISTEN/NOTIFY) and they hear it."""

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
        sandbox: SandboxBackend | None = None,
        blobs: BlobStore | None = None,
        bus: Bus | None = None,
    ) -> Runtime:
        """Wire the parts around an open ``store`` (nothing starts running). Without ``bus``
        everything stays in this process (the embedded mode)."""
        clock = clock or SystemClock()
        bus = bus or Bus()
        broadcaster = bus.broadcaster
        backend = sandbox or LazyBackend(lambda: open_backend(settings))
        computers = Computers(backend, check_seconds=settings.computer_sleep_check_seconds)
        blobs = blobs or open_blob_store(settings)
        deps = ServiceDeps(store, clock, broadcaster, on_agent_deleted=computers.forget)
        drive = DriveService(
            deps, blobs, DriveLimits(settings.drive_max_file_bytes, settings.drive_quota_bytes)
        )
        if tools is None:
            plugins = load_tools(settings.tools)
            tools = ToolRegistry([*computer_tools(computers), RememberTool(drive), *plugins])

        def resolve(spec: str | None) -> ModelClient:
            return resolve_model(spec, settings)

        resolver = models or resolve
        sync = DriveSync(drive, computers, settings.resolved_computer_dir())
        computers.on_connect = sync.connected  # a computer started here syncs before first use
        engine = EngineDeps(
            store,
            clock,
            broadcaster,
            settings,
            resolver,
            tools,
            memory=memory or DriveMemory(drive, settings.memory_max_bytes),
            hooks=sync,
        )
        organizer = Organizer(engine, worker_id=worker_id, computers=computers)
        organizer.announce = bus.queued
        deps.on_queued = bus.queued
        deps.on_cancelled = bus.cancelled
        bus.on_queued = organizer.wake
        bus.on_cancelled = organizer.cancel_task
        return cls(
            settings,
            store,
            broadcaster,
            clock,
            organizer,
            AgentService(deps),
            SessionService(deps),
            TaskService(deps),
            computers,
            ComputerService(deps, computers, settings.resolved_secret_key, sync),
            drive,
            blobs,
            bus,
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
        kind: ProcessKind | None = None,
        sandbox: SandboxBackend | None = None,
        blobs: BlobStore | None = None,
    ) -> AsyncGenerator[Runtime]:
        """Open (and migrate) the store, run the organizer, and clean up on exit.

        ``run_engine=False`` serves the services without running tasks (an API-only process).
        ``kind`` is what the process registers as in the store (``openbuda status``); default
        ``api+worker`` with the engine, else ``api``.
        """
        kind = kind or ("api+worker" if run_engine else "api")
        worker_id = worker_id or settings.worker_id or new_worker_id()
        own_store = store is None
        # other processes are heard through the database this process opens itself
        bus = (
            open_bus(
                settings.resolved_database_url(), process_id=worker_id, events=kind != "worker"
            )
            if own_store
            else None
        )
        if store is None:
            settings.home.mkdir(parents=True, exist_ok=True)
            store = open_store(
                settings.resolved_database_url(),
                synchronous=settings.sqlite_synchronous,
                application_name=f"openbuda {kind} {worker_id}",
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
                sandbox=sandbox,
                blobs=blobs,
                bus=bus,
            )
            try:
                presence = Presence(
                    store,
                    runtime.clock,
                    process_id=worker_id,
                    kind=kind,
                    heartbeat_seconds=settings.heartbeat_seconds,
                )
                # the bus outlives the rest: the organizer's last events still go out
                async with anyio.create_task_group() as outer:
                    await outer.start(runtime.bus.run)
                    try:
                        async with anyio.create_task_group() as group:
                            await group.start(presence.run)
                            await group.start(runtime.computers.run)
                            if run_engine:
                                await group.start(runtime.organizer.run)
                            try:
                                yield runtime
                            finally:
                                group.cancel_scope.cancel()
                    finally:
                        outer.cancel_scope.cancel()
            finally:
                await runtime.computers.aclose()  # shielded: every computer started here stops
                with anyio.CancelScope(shield=True):
                    await runtime.blobs.aclose()
        finally:
            if own_store:
                with anyio.CancelScope(shield=True):
                    await store.close()
