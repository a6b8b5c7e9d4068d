"""The real API app, for the SDK and CLI tests: served by uvicorn on a thread (sync client,
CLI), or driven in-process through a streaming ASGI transport (async client). Either way the
agents' model is one ``ScriptedModel`` that the test fills, and their one tool a
``RecordingTool`` (``record``)."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn
from fastapi import FastAPI

from openbuda.api.app import create_app
from openbuda.client import AsyncClient, Client
from openbuda.ports import ModelClient
from openbuda.settings import Settings
from openbuda.testing import ScriptedModel
from openbuda.testing.tools import RecordingTool
from tests.api.transport import StreamingASGITransport
from tests.harness import engine_settings

API_KEY = "ob_test_0123456789abcdefghijklmnop"


def server_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bootstrap_api_key": API_KEY,
        "sse_heartbeat_seconds": 0.5,
        "log_level": "WARNING",
        "metrics_enabled": False,
        **overrides,
    }
    return engine_settings(home, **values)


def scripted_app(settings: Settings, model: ScriptedModel) -> FastAPI:
    def resolve(_spec: str | None) -> ModelClient:
        return model

    return create_app(
        settings, models=resolve, tools=[RecordingTool()], announce=lambda _text: None
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class LiveServer:
    """A uvicorn server on a thread; ``home`` holds its database and ``credentials.json``."""

    url: str
    home: Path
    model: ScriptedModel

    def client(self, **options: Any) -> Client:
        return Client(self.url, API_KEY, **options)


@contextmanager
def serving(app: FastAPI, port: int) -> Generator[str]:
    """``app`` served by uvicorn on a thread at ``port``; yields its URL once it accepts."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not server.started:
            raise RuntimeError("the test server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def live_server(home: Path, model: ScriptedModel, **overrides: Any) -> Generator[LiveServer]:
    port = free_port()
    settings = server_settings(home, port=port, **overrides)
    with serving(scripted_app(settings, model), port) as url:
        yield LiveServer(url, home, model)
    assert not model.unexpected, f"unexpected model calls: {model.unexpected}"


@asynccontextmanager
async def in_process(app: FastAPI) -> AsyncGenerator[httpx.AsyncBaseTransport]:
    """A transport to ``app`` in this event loop, its lifespan running, streaming responses."""
    async with app.router.lifespan_context(app), anyio.create_task_group() as group:
        yield StreamingASGITransport(app, group)
        group.cancel_scope.cancel()


@asynccontextmanager
async def in_process_client(
    home: Path, model: ScriptedModel, **overrides: Any
) -> AsyncGenerator[AsyncClient]:
    """An ``AsyncClient`` talking to the app in this event loop."""
    app = scripted_app(server_settings(home, **overrides), model)
    async with (
        in_process(app) as transport,
        AsyncClient("http://openbuda.test", API_KEY, transport=transport) as client,
    ):
        yield client
    assert not model.unexpected, f"unexpected model calls: {model.unexpected}"


class DroppingTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Wraps a transport; the body of the event streams listed in ``drops`` (by the number of
    the stream request, from 1) breaks after that many SSE messages, like a dropped
    connection, after sending half of the next message."""

    def __init__(
        self,
        inner: httpx.BaseTransport | httpx.AsyncBaseTransport,
        drops: dict[int, int],
    ) -> None:
        self.inner = inner
        self.drops = drops
        self.stream_requests: list[httpx.Request] = []

    def _drop_after(self, request: httpx.Request) -> int | None:
        if not request.url.path.endswith("/events/stream"):
            return None
        self.stream_requests.append(request)
        return self.drops.get(len(self.stream_requests))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(self.inner, httpx.BaseTransport)
        drop = self._drop_after(request)
        response = self.inner.handle_request(request)
        if drop is None:
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Cut(response, drop),
            request=request,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(self.inner, httpx.AsyncBaseTransport)
        drop = self._drop_after(request)
        response = await self.inner.handle_async_request(request)
        if drop is None:
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Cut(response, drop),
            request=request,
        )

    @property
    def last_event_ids(self) -> list[str | None]:
        return [r.headers.get("last-event-id") for r in self.stream_requests]

    def close(self) -> None:
        if isinstance(self.inner, httpx.BaseTransport):
            self.inner.close()

    async def aclose(self) -> None:
        if isinstance(self.inner, httpx.AsyncBaseTransport):
            await self.inner.aclose()


class _Cut(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Passes ``messages`` whole SSE messages (comments excluded) through, then half of the
    next chunk, then fails."""

    def __init__(self, response: httpx.Response, messages: int) -> None:
        self.response = response
        self.messages = messages
        self.buffer = b""

    def _take(self, chunk: bytes) -> tuple[bytes, bool]:
        """What to pass of ``chunk``; ``True`` once the cut is reached."""
        self.buffer += chunk
        out = b""
        while b"\n\n" in self.buffer:
            message, self.buffer = self.buffer.split(b"\n\n", 1)
            if self.messages == 0:
                return out + message[: len(message) // 2], True
            out += message + b"\n\n"
            if not message.startswith(b":"):
                self.messages -= 1
        return out, False

    def __iter__(self) -> Iterator[bytes]:
        stream = self.response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        cut = False
        try:
            for chunk in stream:
                out, cut = self._take(chunk)
                if out:
                    yield out
                if cut:
                    break
        finally:
            stream.close()
        if cut:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete body")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self.response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        cut = False
        try:
            async for chunk in stream:
                out, cut = self._take(chunk)
                if out:
                    yield out
                if cut:
                    break
        finally:
            await stream.aclose()
        if cut:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete body")
