"""An httpx transport that runs an ASGI app in-process and *streams* its responses.

``httpx.ASGITransport`` waits for the whole response before returning it, which an endless
event stream never finishes. This transport returns as soon as the app starts its response,
streams the body as the app sends it, and tells the app the client disconnected when the
response is closed::

    async with anyio.create_task_group() as group:
        transport = StreamingASGITransport(app, group)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async with client.stream("GET", "/events/stream") as response:
                async for line in response.aiter_lines():
                    ...
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.types import ASGIApp, Message

__all__ = ["StreamingASGITransport"]


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: MemoryObjectReceiveStream[bytes], disconnected: anyio.Event) -> None:
        self._chunks = chunks
        self._disconnected = disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        self._disconnected.set()
        self._chunks.close()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Runs each request's app call in ``group`` (owned by the caller, who cancels it)."""

    def __init__(
        self, app: ASGIApp, group: TaskGroup, *, client: tuple[str, int] = ("127.0.0.1", 50000)
    ) -> None:
        self.app = app
        self.client = client
        self._group = group

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": self.client,
            "root_path": "",
        }
        started = anyio.Event()
        disconnected = anyio.Event()
        start: dict[str, Any] = {}
        failure: list[BaseException] = []
        send_chunks, receive_chunks = anyio.create_memory_object_stream[bytes](math.inf)
        request_sent = False

        async def receive() -> Message:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                started.set()
            elif message["type"] == "http.response.body":
                chunk: bytes = message.get("body", b"")
                try:
                    if chunk:
                        send_chunks.send_nowait(chunk)
                    if not message.get("more_body", False):
                        send_chunks.close()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # the client is gone: what is sent is dropped

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as error:
                failure.append(error)
            finally:
                send_chunks.close()
                started.set()

        self._group.start_soon(run)
        await started.wait()
        if not start:
            if failure:
                raise failure[0]
            raise RuntimeError("the app ended without a response")
        return httpx.Response(
            start["status"],
            headers=start.get("headers", []),
            stream=_Body(receive_chunks, disconnected),
            request=request,
        )
