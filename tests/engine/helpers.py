"""Helpers shared by the engine's isolation, concurrency, dormancy and context tests.

``start_runtime`` runs a ``Runtime`` over a test store with named test models and settings of
the test's choosing (the ``harness`` fixture fixes both); the rest waits for tasks, pages
through the services and tracks how many model calls run at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from openbuda.domain.principal import Principal
from openbuda.domain.records import Event, Task
from openbuda.domain.states import TaskStatus
from openbuda.engine.tools import Tool, ToolRegistry
from openbuda.ports import Clock, ModelClient, Store
from openbuda.runtime import Runtime
from openbuda.service.sessions import MessageItem
from tests.harness import engine_settings

__all__ = [
    "SETTLED",
    "ConcurrencyTracker",
    "all_events",
    "all_messages",
    "all_tasks",
    "holds",
    "start_runtime",
    "wait_for",
    "wait_tasks",
]

SETTLED = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.WAITING}
)
"""Statuses in which a task does not move without someone acting."""

PAGE = 500


@asynccontextmanager
async def start_runtime(
    store: Store,
    home: Path,
    models: Mapping[str, ModelClient],
    *,
    clock: Clock | None = None,
    tools: Iterable[Tool] = (),
    **settings: Any,
) -> AsyncGenerator[Runtime]:
    """A running runtime over ``store`` whose agents name their model by a key of ``models``."""

    def resolve(spec: str | None) -> ModelClient:
        if spec is None or spec not in models:
            raise AssertionError(f"the test has no model {spec!r}")
        return models[spec]

    async with Runtime.start(
        engine_settings(home, **settings),
        store=store,
        clock=clock,
        models=resolve,
        tools=ToolRegistry(tools),
    ) as runtime:
        yield runtime


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 10.0,
    what: str = "a condition",
    interval: float = 0.01,
) -> None:
    """Poll ``check`` every ``interval`` seconds until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(interval)


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``predicate`` as a check for ``wait_for``: ``await wait_for(holds(lambda: ...))``."""

    async def check() -> bool:
        return predicate()

    return check


async def all_tasks(
    runtime: Runtime,
    principal: Principal,
    *,
    status: TaskStatus | None = None,
    session_id: str | None = None,
    agent_id: str | None = None,
) -> list[Task]:
    """Every task the principal can list with these filters (all pages), newest first."""
    tasks: list[Task] = []
    cursor: str | None = None
    while True:
        page = await runtime.tasks.list(
            principal,
            status=status,
            session_id=session_id,
            agent_id=agent_id,
            limit=PAGE,
            cursor=cursor,
        )
        tasks += page.items
        cursor = page.next_cursor
        if cursor is None:
            return tasks


async def wait_tasks(
    runtime: Runtime,
    principal: Principal,
    task_ids: Iterable[str],
    statuses: frozenset[TaskStatus] = SETTLED,
    *,
    timeout: float = 20.0,
) -> dict[str, Task]:
    """Wait until every task of ``task_ids`` is in one of ``statuses``; the tasks by id."""
    wanted = set(task_ids)
    found: dict[str, Task] = {}
    page_size = min(PAGE, 2 * len(wanted) + 20)

    async def settled() -> bool:
        # newest first: the tasks a test waits for are usually on the first page
        found.clear()
        cursor: str | None = None
        while len(found) < len(wanted):
            page = await runtime.tasks.list(principal, limit=page_size, cursor=cursor)
            found.update((task.id, task) for task in page.items if task.id in wanted)
            cursor = page.next_cursor
            if cursor is None:
                break
        return len(found) == len(wanted) and all(task.status in statuses for task in found.values())

    try:
        # many tasks take a while: poll them less often, to leave the engine the CPU
        interval = 0.02 if len(wanted) <= 50 else 0.1
        await wait_for(
            settled, timeout=timeout, what=f"{len(wanted)} task(s) to settle", interval=interval
        )
    except AssertionError as error:
        pending = {t.id: t.status.value for t in found.values() if t.status not in statuses}
        raise AssertionError(f"{error}; not settled: {pending}") from None
    return dict(found)


async def all_events(runtime: Runtime, principal: Principal, session_id: str) -> list[Event]:
    """A session's stored events through the service, page by page."""
    events: list[Event] = []
    while True:
        after = events[-1].seq if events else 0
        page = await runtime.sessions.events(principal, session_id, after_seq=after, limit=PAGE)
        events += page
        if len(page) < PAGE:
            return events


async def all_messages(
    runtime: Runtime, principal: Principal, session_id: str
) -> list[MessageItem]:
    """A session's conversation through the service, page by page."""
    items: list[MessageItem] = []
    while True:
        after = items[-1].seq if items else 0
        page = await runtime.sessions.messages(principal, session_id, after_seq=after, limit=PAGE)
        items += page
        if len(page) < PAGE:
            return items


@dataclass
class ConcurrencyTracker:
    """Counts what runs at once: ``with tracker.running(key): ...`` around each model call."""

    active: dict[str, int] = field(default_factory=dict[str, int])
    peak: dict[str, int] = field(default_factory=dict[str, int])
    total: int = 0
    peak_total: int = 0
    starts: list[str] = field(default_factory=list[str])
    """The key of every call, in the order they started."""
    spans: list[tuple[str, float, float]] = field(default_factory=list[tuple[str, float, float]])
    """``(key, started, ended)`` of every finished call (``time.monotonic``)."""

    @contextmanager
    def running(self, key: str = "") -> Generator[None]:
        started = time.monotonic()
        self.starts.append(key)
        self.active[key] = self.active.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.active[key])
        self.total += 1
        self.peak_total = max(self.peak_total, self.total)
        try:
            yield
        finally:
            self.active[key] -= 1
            self.total -= 1
            self.spans.append((key, started, time.monotonic()))
