"""``client.computer``: an agent's computer from the SDK, blocking (``Computer``) and async
(``AsyncComputer``).

::

    status = client.computer.status(agent.id)
    result = client.computer.exec(agent.id, "ls -la")            # waits for the result
    with client.computer.exec_stream(agent.id, "make test") as items:
        for item in items:                                          # ExecOutput …, ExecResult
            if isinstance(item, ExecOutput):
                print(item.text, end="")
    link = client.computer.preview_link(agent.id, 8000)             # open link.url in a browser
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import httpx

from openbuda.client import _calls as calls
from openbuda.client._calls import Call
from openbuda.client._closing import AsyncClosingIterator, ClosingIterator
from openbuda.client._errors import ConnectionFailed, InvalidResponse, _api_class
from openbuda.client._http import connection_failed, headers_for
from openbuda.client._http import read_answer as _read
from openbuda.client._models import ComputerStatus, ExecOutput, ExecResult, PreviewLink
from openbuda.client._sse import ServerSentEvent, SSEDecoder
from openbuda.domain.errors import HTTP_STATUS

if TYPE_CHECKING:
    from openbuda.client._async import AsyncClient
    from openbuda.client._sync import Client

__all__ = ["AsyncComputer", "AsyncExecStream", "Computer", "ExecItem", "ExecStream"]

ExecItem = ExecOutput | ExecResult
"""What an exec stream yields: output as it comes, then the result, last."""


def _item(sse: ServerSentEvent) -> ExecItem | None:
    """The item of one server-sent event (``None``: an event this SDK does not know)."""
    try:
        data: Any = json.loads(sse.data)
        if sse.event == "output":
            return ExecOutput.model_validate(data)
        if sse.event == "exit":
            return ExecResult.model_validate(data)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise InvalidResponse(f"an exec stream sent an unreadable {sse.event!r} event") from error
    if sse.event == "error" and isinstance(data, dict):
        code = str(data.get("code") or "internal")
        details: Any = data.get("details")
        raise _api_class(code)(
            str(data.get("message") or code),
            status=HTTP_STATUS.get(code, 500),
            details=details if isinstance(details, dict) else {},
        )
    return None


def _timeout(call: Call[Any]) -> httpx.Timeout | httpx._client.UseClientDefault:
    return httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout


def _ended_early(base_url: str) -> ConnectionFailed:
    return ConnectionFailed(
        "the exec stream ended before the command's result (the connection broke); the "
        "command may still have run",
        url=base_url,
    )


def _stream_parts(
    agent_id: str,
    command: str,
    cwd: str | None,
    timeout_s: float | None,
    connect: float | None,
    read: float,
) -> tuple[Call[ExecResult], dict[str, str]]:
    """The streamed exec's call: the server sends a heartbeat while the command is silent, so
    a connection quiet for ``read`` seconds is a broken one."""
    call = calls.computer_exec(agent_id, command, cwd, timeout_s, connect)
    timeout = httpx.Timeout(connect, read=read, write=connect, pool=connect)
    return replace(call, timeout=timeout), {"Accept": "text/event-stream"}


class Computer:
    """An agent's computer (``client.computer``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def status(self, agent_id: str) -> ComputerStatus:
        return self._client._call(calls.computer_status(agent_id))

    def wake(self, agent_id: str) -> ComputerStatus:
        return self._client._call(calls.computer_action(agent_id, "wake"))

    def sleep(self, agent_id: str) -> ComputerStatus:
        return self._client._call(calls.computer_action(agent_id, "sleep"))

    def restart(self, agent_id: str) -> ComputerStatus:
        """Kill every process and clear ``/tmp``; ``/agent`` stays."""
        return self._client._call(calls.computer_action(agent_id, "restart"))

    def exec(
        self,
        agent_id: str,
        command: str,
        *,
        cwd: str | None = None,
        timeout_s: float | None = None,
    ) -> ExecResult:
        """Run ``command`` (``bash -c``, in ``/agent`` unless ``cwd``) and wait for its end."""
        connect = self._client._http.timeout.connect
        return self._client._call(calls.computer_exec(agent_id, command, cwd, timeout_s, connect))

    def exec_stream(
        self,
        agent_id: str,
        command: str,
        *,
        cwd: str | None = None,
        timeout_s: float | None = None,
    ) -> ExecStream:
        """Run ``command`` and yield its output live (``ExecOutput``), then its ``ExecResult``."""
        connect = self._client._http.timeout.connect
        read = self._client._stream_policy.read_timeout
        return ExecStream(
            self._client, *_stream_parts(agent_id, command, cwd, timeout_s, connect, read)
        )

    def preview_link(
        self, agent_id: str, port: int, *, expires_in_s: int | None = None
    ) -> PreviewLink:
        """A signed URL of the server on ``port`` that a browser opens without the API key
        (valid 15 minutes by default, at most 24 hours)."""
        return self._client._call(calls.computer_preview_link(agent_id, port, expires_in_s))


class ExecStream(ClosingIterator[ExecItem]):
    """The iterator of ``Computer.exec_stream``; use it in a ``with`` block (or iterate to the
    end) so that its connection is closed. ``result`` is set once the command ended."""

    def __init__(self, client: Client, call: Call[ExecResult], headers: dict[str, str]) -> None:
        self._client = client
        self._call = call
        self._headers = headers
        self.result: ExecResult | None = None
        self._items = self._run()

    def _run(self) -> Generator[ExecItem]:
        client, call = self._client, self._call
        headers = {**self._headers, **headers_for(client._connection, call)}
        try:
            with client._http.stream(
                call.method, call.path, json=call.json, headers=headers, timeout=_timeout(call)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _read(response, call)
                decoder = SSEDecoder()
                for chunk in response.iter_bytes():
                    for sse in decoder.feed(chunk):
                        item = _item(sse)
                        if isinstance(item, ExecResult):
                            self.result = item
                        if item is not None:
                            yield item
        except httpx.TransportError as error:
            raise connection_failed(client.base_url, error) from error
        if self.result is None:
            raise _ended_early(client.base_url)


class AsyncComputer:
    """An agent's computer (``AsyncClient.computer``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def status(self, agent_id: str) -> ComputerStatus:
        return await self._client._call(calls.computer_status(agent_id))

    async def wake(self, agent_id: str) -> ComputerStatus:
        return await self._client._call(calls.computer_action(agent_id, "wake"))

    async def sleep(self, agent_id: str) -> ComputerStatus:
        return await self._client._call(calls.computer_action(agent_id, "sleep"))

    async def restart(self, agent_id: str) -> ComputerStatus:
        """Kill every process and clear ``/tmp``; ``/agent`` stays."""
        return await self._client._call(calls.computer_action(agent_id, "restart"))

    async def exec(
        self,
        agent_id: str,
        command: str,
        *,
        cwd: str | None = None,
        timeout_s: float | None = None,
    ) -> ExecResult:
        """Run ``command`` (``bash -c``, in ``/agent`` unless ``cwd``) and wait for its end."""
        connect = self._client._http.timeout.connect
        return await self._client._call(
            calls.computer_exec(agent_id, command, cwd, timeout_s, connect)
        )

    def exec_stream(
        self,
        agent_id: str,
        command: str,
        *,
        cwd: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncExecStream:
        """Run ``command`` and yield its output live (``ExecOutput``), then its ``ExecResult``."""
        connect = self._client._http.timeout.connect
        read = self._client._stream_policy.read_timeout
        return AsyncExecStream(
            self._client, *_stream_parts(agent_id, command, cwd, timeout_s, connect, read)
        )

    async def preview_link(
        self, agent_id: str, port: int, *, expires_in_s: int | None = None
    ) -> PreviewLink:
        """A signed URL of the server on ``port`` that a browser opens without the API key
        (valid 15 minutes by default, at most 24 hours)."""
        return await self._client._call(calls.computer_preview_link(agent_id, port, expires_in_s))


class AsyncExecStream(AsyncClosingIterator[ExecItem]):
    """The iterator of ``AsyncComputer.exec_stream``; use it in an ``async with`` block (or
    iterate to the end). ``result`` is set once the command ended."""

    def __init__(
        self, client: AsyncClient, call: Call[ExecResult], headers: dict[str, str]
    ) -> None:
        self._client = client
        self._call = call
        self._headers = headers
        self.result: ExecResult | None = None
        self._items = self._run()

    async def _run(self) -> AsyncGenerator[ExecItem]:
        client, call = self._client, self._call
        headers = {**self._headers, **headers_for(client._connection, call)}
        try:
            async with client._http.stream(
                call.method, call.path, json=call.json, headers=headers, timeout=_timeout(call)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _read(response, call)
                decoder = SSEDecoder()
                async for chunk in response.aiter_bytes():
                    for sse in decoder.feed(chunk):
                        item = _item(sse)
                        if isinstance(item, ExecResult):
                            self.result = item
                        if item is not None:
                            yield item
        except httpx.TransportError as error:
            raise connection_failed(client.base_url, error) from error
        if self.result is None:
            raise _ended_early(client.base_url)
