"""The engine harness: a running runtime over each store, with a scripted model and a tool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent, AgentSettings, Event, Role, Task
from openbuda.domain.states import TaskStatus
from openbuda.engine.tools import ToolRegistry
from openbuda.ports import ModelClient, ReadEvents, Store
from openbuda.runtime import Runtime
from openbuda.settings import Settings
from openbuda.testing import ScriptedModel
from openbuda.testing.tools import RecordingTool


def engine_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "block_real_models": True,
        "poll_seconds": 0.05,
        "heartbeat_seconds": 0.2,
        "lease_seconds": 5.0,
        "model_retries": 2,
        "model_retry_base_seconds": 0.001,
    }
    values.update(overrides)
    return Settings(**values)


async def make_principal(store: Store, name: str = "space", role: Role = Role.OWNER) -> Principal:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    async with store.write() as tx:
        space = await tx.create_space(name, now)
        member = await tx.create_member(space.id, "owner", role, now)
    return Principal(space.id, member.id, role)


@dataclass
class Harness:
    runtime: Runtime
    principal: Principal
    model: ScriptedModel
    record: RecordingTool
    models: dict[str, ModelClient] = field(default_factory=dict[str, ModelClient])

    @property
    def store(self) -> Store:
        return self.runtime.store

    async def agent(self, **settings: Any) -> Agent:
        return await self.runtime.agents.create(
            self.principal,
            name="helper",
            instructions="Be brief.",
            model="test:scripted",
            settings=AgentSettings(**settings),
        )

    async def wait_task(
        self,
        task_id: str,
        statuses: frozenset[TaskStatus] = frozenset(
            {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.WAITING}
        ),
        timeout: float = 10.0,
    ) -> Task:
        with anyio.fail_after(timeout):
            while True:
                task = await self.runtime.tasks.get(self.principal, task_id)
                if task.status in statuses:
                    return task
                await anyio.sleep(0.01)

    async def wait_model_called(self, times: int = 1, timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while len(self.model.inputs) < times:
                await anyio.sleep(0.005)

    async def events(self, session_id: str, task_id: str | None = None) -> list[Event]:
        async with self.store.read() as tx:
            return await tx.read_events(
                ReadEvents(self.principal.space_id, session_id, task_id=task_id)
            )

    async def types(self, session_id: str, task_id: str | None = None) -> list[str]:
        return [e.type for e in await self.events(session_id, task_id)]


@pytest.fixture
async def harness(store: Store, tmp_path: Path) -> AsyncIterator[Harness]:
    model = ScriptedModel(name="test:scripted")
    record = RecordingTool()
    models: dict[str, ModelClient] = {"test:scripted": model}

    def resolve(spec: str | None) -> ModelClient:
        return models[spec or "test:scripted"]

    principal = await make_principal(store)
    async with Runtime.start(
        engine_settings(tmp_path),
        store=store,
        models=resolve,
        tools=ToolRegistry([record]),
    ) as runtime:
        yield Harness(runtime, principal, model, record, models)
    assert not model.unexpected, f"unexpected model calls: {model.unexpected}"


ModelFactory = Callable[[], ModelClient]
