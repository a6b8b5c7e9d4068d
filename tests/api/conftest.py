"""The API under test: ``create_app`` over each store, driven in-process over HTTP.

``api`` is a running app (lifespan started: runtime, organizer, bootstrap) with a scripted
model and a recording tool, and an ``httpx.AsyncClient`` holding the instance owner's key.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.api.transport import StreamingASGITransport
from tests.harness import engine_settings

from openbuda.api import create_app
from openbuda.api.deps import ApiState
from openbuda.api.metrics import Metrics
from openbuda.ports import ModelClient, Store
from openbuda.runtime import Runtime
from openbuda.testing import ScriptedModel
from openbuda.testing.tools import RecordingTool

OWNER_KEY = "ob_test_owner_key_0123456789"
BASE_URL = "http://openbuda.test"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
SETTLED = TERMINAL | {"waiting"}


@dataclass
class Api:
    app: FastAPI
    transport: StreamingASGITransport
    client: httpx.AsyncClient
    model: ScriptedModel
    record: RecordingTool
    spans: InMemorySpanExporter
    home: Path
    announced: list[str]
    models: dict[str, ModelClient] = field(default_factory=dict[str, ModelClient])
    _clients: list[httpx.AsyncClient] = field(default_factory=list[httpx.AsyncClient])

    @property
    def state(self) -> ApiState:
        state: ApiState = self.app.state.openbuda
        return state

    @property
    def runtime(self) -> Runtime:
        return self.state.runtime

    def client_for(self, key: str | None) -> httpx.AsyncClient:
        """A client sending ``key`` (none when ``None``), closed with the fixture."""
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        client = httpx.AsyncClient(
            transport=self.transport, base_url=BASE_URL, headers=headers, timeout=30
        )
        self._clients.append(client)
        return client

    async def agent(self, client: httpx.AsyncClient | None = None, **fields: Any) -> dict[str, Any]:
        body = {"name": "helper", "instructions": "Be brief.", "model": "test:scripted", **fields}
        response = await (client or self.client).post("/v1/agents", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    async def session(
        self, agent_id: str, client: httpx.AsyncClient | None = None, **fields: Any
    ) -> dict[str, Any]:
        response = await (client or self.client).post(
            f"/v1/agents/{agent_id}/sessions", json=fields
        )
        assert response.status_code == 201, response.text
        return response.json()

    async def send(
        self, session_id: str, text: str, client: httpx.AsyncClient | None = None, **fields: Any
    ) -> dict[str, Any]:
        response = await (client or self.client).post(
            f"/v1/sessions/{session_id}/messages", json={"text": text, **fields}
        )
        assert response.status_code == 202, response.text
        return response.json()

    async def wait_task(
        self,
        task_id: str,
        statuses: frozenset[str] = SETTLED,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                response = await (client or self.client).get(f"/v1/tasks/{task_id}")
                assert response.status_code == 200, response.text
                task = response.json()
                if task["status"] in statuses:
                    return task
                await anyio.sleep(0.01)

    async def wait_model_called(self, times: int = 1, timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while len(self.model.inputs) < times:
                await anyio.sleep(0.005)

    async def events(self, session_id: str, **params: Any) -> list[dict[str, Any]]:
        response = await self.client.get(
            f"/v1/sessions/{session_id}/events", params={"limit": 500, **params}
        )
        assert response.status_code == 200, response.text
        return response.json()["items"]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the error shape with this status and code; its ``error`` object."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    return error


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The messages of an event stream's text: ``{"id"?, "event", "data"}`` or ``{"comment"}``."""
    messages: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        message: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                message["comment"] = line[1:].strip()
            else:
                name, _, value = line.partition(": ")
                message[name] = json.loads(value) if name == "data" else value
        messages.append(message)
    return messages


async def make_api(
    store: Store,
    home: Path,
    *,
    settings: Mapping[str, Any] | None = None,
    model: ScriptedModel | None = None,
    **kwargs: Any,
) -> AsyncIterator[Api]:
    model = model or ScriptedModel(name="test:scripted")
    record = RecordingTool()
    models: dict[str, ModelClient] = {"test:scripted": model}
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    announced: list[str] = []

    def resolve(spec: str | None) -> ModelClient:
        return models[spec or "test:scripted"]

    values: dict[str, Any] = {
        "bootstrap_api_key": OWNER_KEY,
        "sse_heartbeat_seconds": 5.0,
        **(settings or {}),
    }
    app = create_app(
        engine_settings(home, **values),
        store=store,
        models=resolve,
        tools=[record],
        tracer_provider=provider,
        metrics=Metrics(store_refresh_seconds=0),
        announce=announced.append,
        **kwargs,
    )
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
        anyio.create_task_group() as group,
    ):
        transport = StreamingASGITransport(manager.app, group)
        async with httpx.AsyncClient(
            transport=transport,
            base_url=BASE_URL,
            headers={"Authorization": f"Bearer {OWNER_KEY}"},
            timeout=30,
        ) as client:
            api = Api(app, transport, client, model, record, spans, home, announced, models)
            try:
                yield api
            finally:
                for extra in api._clients:
                    await extra.aclose()
        group.cancel_scope.cancel()
    assert not model.unexpected, f"unexpected model calls: {model.unexpected}"


@pytest.fixture
async def api(store: Store, tmp_path: Path) -> AsyncIterator[Api]:
    async for running in make_api(store, tmp_path):
        yield running
