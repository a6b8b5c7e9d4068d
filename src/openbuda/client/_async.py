"""``AsyncClient``: the SDK for async code, the mirror of ``AsyncClient`` (``_sync.py``)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx

from openbuda.client import _calls as calls
from openbuda.client._calls import Call, HistoryItem, OnBusy, SessionStatusFilter, TaskStatusFilter
from openbuda.client._closing import AsyncClosingIterator
from openbuda.client._computer import AsyncComputer
from openbuda.client._config import Connection, resolve_connection
from openbuda.client._drive import AsyncDrive, DriveName, session_save
from openbuda.client._errors import ApiError
from openbuda.client._http import DEFAULT_TIMEOUT, USER_AGENT, connection_failed, headers_for
from openbuda.client._http import read_answer as _read
from openbuda.client._models import (
    Agent,
    ApiKey,
    DriveEntry,
    Event,
    Health,
    Me,
    Message,
    MessageAccepted,
    Page,
    Session,
    Space,
    SpaceCreated,
    Task,
)
from openbuda.client._patch import NOT_GIVEN, NotGiven, patch_body
from openbuda.client._sse import SSEDecoder
from openbuda.client._stream import StreamPolicy, StreamState
from openbuda.settings import Settings

__all__ = [
    "AsyncAgents",
    "AsyncApiKeys",
    "AsyncClient",
    "AsyncEventStream",
    "AsyncSessions",
    "AsyncSpaces",
    "AsyncTasks",
]

T = TypeVar("T")


class AsyncClient:
    """The blocking openbuda client::

        with AsyncClient() as client:  # URL and key from OPENBUDA_URL / OPENBUDA_API_KEY or
            agent = client.agents.create(name="helper")  # $OPENBUDA_HOME/credentials.json
            session = client.sessions.create(agent.id)
            client.sessions.send(session.id, "Hello")
            for event in client.sessions.stream(session.id, until_idle=True):
                print(event.type, event.data)

    Errors answered by the server raise the ``openbuda.domain.errors`` class of their code
    (also an ``ApiError`` with ``status``); a server that cannot be reached raises
    ``ConnectionFailed``; a call without any API key raises ``MissingCredentials``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        settings: Settings | None = None,
        stream_policy: StreamPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._connection: Connection = resolve_connection(base_url, api_key, settings)
        self._http = httpx.AsyncClient(
            base_url=self._connection.base_url,
            transport=transport,
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
        )
        self._stream_policy = stream_policy or StreamPolicy()
        self._sleep = sleep
        self.api_keys = AsyncApiKeys(self)
        self.spaces = AsyncSpaces(self)
        self.agents = AsyncAgents(self)
        self.sessions = AsyncSessions(self)
        self.tasks = AsyncTasks(self)
        self.drive = AsyncDrive(self)
        self.computer = AsyncComputer(self)

    @property
    def base_url(self) -> str:
        return self._connection.base_url

    async def health(self) -> Health:
        return await self._call(calls.health())

    async def me(self) -> Me:
        """The principal of this client's API key: member, space and role."""
        return await self._call(calls.me())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, call: Call[T]) -> T:
        request = self._http.build_request(
            call.method,
            call.path,
            params=call.params or None,
            json=call.json,
            headers=headers_for(self._connection, call),
            timeout=httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout,
        )
        try:
            response = await self._http.send(request)
        except httpx.TransportError as error:
            raise connection_failed(self.base_url, error) from error
        return _read(response, call)

    async def _pages(self, fetch: Callable[[str | None], Awaitable[Page[T]]]) -> AsyncIterator[T]:
        cursor: str | None = None
        while True:
            page = await fetch(cursor)
            for item in page.items:
                yield item
            if page.next_cursor is None or not page.items:
                return
            cursor = page.next_cursor


class AsyncApiKeys:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page[ApiKey]:
        return await self._client._call(calls.api_keys_list(limit, cursor))

    async def create(
        self,
        name: str,
        *,
        expires_in_days: int | None = None,
        role: str | None = None,
        idempotency_key: str | None = None,
    ) -> ApiKey:
        """A new key; its ``secret`` is in this answer only."""
        return await self._client._call(
            calls.api_keys_create(name, expires_in_days, role, idempotency_key)
        )

    async def delete(self, key_id: str) -> None:
        await self._client._call(calls.api_keys_delete(key_id))


class AsyncSpaces:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page[Space]:
        return await self._client._call(calls.spaces_list(limit, cursor))

    async def create(self, name: str, *, idempotency_key: str | None = None) -> SpaceCreated:
        """A new space and its owner's key (the instance owner only)."""
        return await self._client._call(calls.spaces_create(name, idempotency_key))


class AsyncAgents:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        name: str,
        *,
        description: str | None = None,
        instructions: str | None = None,
        model: str | None = None,
        settings: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Agent:
        return await self._client._call(
            calls.agents_create(name, description, instructions, model, settings, idempotency_key)
        )

    async def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page[Agent]:
        return await self._client._call(calls.agents_list(limit, cursor))

    def iterate(self, *, page_size: int | None = None) -> AsyncIterator[Agent]:
        """Every agent, fetching page after page."""
        return self._client._pages(lambda cursor: self.list(limit=page_size, cursor=cursor))

    async def get(self, agent_id: str) -> Agent:
        return await self._client._call(calls.agents_get(agent_id))

    async def update(
        self,
        agent_id: str,
        *,
        name: str | NotGiven = NOT_GIVEN,
        description: str | NotGiven = NOT_GIVEN,
        instructions: str | NotGiven = NOT_GIVEN,
        model: str | NotGiven | None = NOT_GIVEN,
        settings: Mapping[str, Any] | NotGiven = NOT_GIVEN,
    ) -> Agent:
        """Change the given fields (``model=None`` goes back to the server's default)."""
        body = patch_body(
            name=name,
            description=description,
            instructions=instructions,
            model=model,
            settings=settings,
        )
        return await self._client._call(calls.agents_update(agent_id, body))

    async def delete(self, agent_id: str) -> None:
        await self._client._call(calls.agents_delete(agent_id))


class AsyncSessions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        agent_id: str,
        *,
        title: str | None = None,
        external_user_id: str | None = None,
        history: Sequence[HistoryItem] | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """A new session; ``history`` imports an earlier conversation (``{role, text}`` items)."""
        return await self._client._call(
            calls.sessions_create(agent_id, title, external_user_id, history, idempotency_key)
        )

    async def list(
        self,
        agent_id: str,
        *,
        status: SessionStatusFilter | None = None,
        external_user_id: str | None = None,
        q: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Session]:
        return await self._client._call(
            calls.sessions_list(agent_id, status, external_user_id, q, limit, cursor)
        )

    def iterate(
        self,
        agent_id: str,
        *,
        status: SessionStatusFilter | None = None,
        external_user_id: str | None = None,
        q: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Session]:
        """Every matching session of the agent, fetching page after page."""
        return self._client._pages(
            lambda cursor: self.list(
                agent_id,
                status=status,
                external_user_id=external_user_id,
                q=q,
                limit=page_size,
                cursor=cursor,
            )
        )

    async def get(self, session_id: str) -> Session:
        return await self._client._call(calls.sessions_get(session_id))

    async def rename(self, session_id: str, title: str) -> Session:
        return await self._client._call(calls.sessions_rename(session_id, title))

    async def delete(self, session_id: str) -> None:
        await self._client._call(calls.sessions_delete(session_id))

    async def save(
        self,
        session_id: str,
        path: str,
        *,
        drive: DriveName | None = None,
        task_id: str | None = None,
    ) -> DriveEntry:
        """Save the session's transcript (or, with ``task_id``, that task's result with its
        files listed) as Markdown at ``path`` of its agent's Drive (``drive="space"``: the
        Space Drive); a new version by this key's member."""
        return await self._client._call(session_save(session_id, path, drive, task_id))

    async def send(
        self,
        session_id: str,
        text: str,
        *,
        on_busy: OnBusy | None = None,
        idempotency_key: str | None = None,
    ) -> MessageAccepted:
        """Send a user message (202): a new task, or the answer to a waiting text question."""
        return await self._client._call(
            calls.sessions_send(session_id, text, on_busy, idempotency_key)
        )

    async def messages(
        self,
        session_id: str,
        *,
        after: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Message]:
        """The conversation, oldest first."""
        return await self._client._call(calls.sessions_messages(session_id, after, limit, cursor))

    async def events(
        self,
        session_id: str,
        *,
        after: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Event]:
        """One page of stored events with ``seq`` above ``after`` (or the page's cursor)."""
        return await self._client._call(calls.sessions_events(session_id, after, limit, cursor))

    def stream(
        self, session_id: str, *, after: int | None = None, until_idle: bool = False
    ) -> AsyncEventStream:
        """The session's events live: stored ones after ``after`` (default: from the start),
        then ephemeral ``text.delta`` / ``tool.output`` ones as they happen. Reconnects by
        itself after a dropped connection, never yielding a stored event twice. With
        ``until_idle`` it ends once no task of the session is queued or running."""
        state = StreamState(
            self._client.base_url,
            session_id,
            after=after,
            until_idle=until_idle,
            policy=self._client._stream_policy,
        )
        return AsyncEventStream(self._client, state)


class AsyncTasks:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, task_id: str) -> Task:
        return await self._client._call(calls.tasks_get(task_id))

    async def list(
        self,
        *,
        status: TaskStatusFilter | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Task]:
        """AsyncTasks, newest first; ``status="waiting"`` is the inbox."""
        return await self._client._call(
            calls.tasks_list(status, session_id, agent_id, limit, cursor)
        )

    def iterate(
        self,
        *,
        status: TaskStatusFilter | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Task]:
        return self._client._pages(
            lambda cursor: self.list(
                status=status,
                session_id=session_id,
                agent_id=agent_id,
                limit=page_size,
                cursor=cursor,
            )
        )

    async def cancel(self, task_id: str) -> Task:
        return await self._client._call(calls.tasks_cancel(task_id))

    async def answer(
        self,
        task_id: str,
        question_id: str,
        *,
        text: str | None = None,
        choice: str | None = None,
        approved: bool | None = None,
        note: str | None = None,
    ) -> Task:
        """Answer the task's open question: ``text``, ``choice`` (the option's text) or
        ``approved`` (with an optional ``note``). The task is queued again."""
        return await self._client._call(
            calls.tasks_answer(task_id, question_id, text, choice, approved, note)
        )


class AsyncEventStream(AsyncClosingIterator[Event]):
    """The iterator of ``AsyncSessions.stream``. Use it in an ``async with`` block (or iterate
    it to the end) so that its connection is closed in the task that opened it."""

    def __init__(self, client: AsyncClient, state: StreamState) -> None:
        self._client = client
        self.state = state
        self._items = self._run()

    @property
    def last_seq(self) -> int | None:
        """The ``seq`` of the last stored event yielded (or the ``after`` it started from)."""
        return self.state.last_seq

    async def _run(self) -> AsyncGenerator[Event]:
        client, state = self._client, self.state
        path = f"/v1/sessions/{quote(state.session_id, safe='')}/events/stream"
        stream_call = Call("GET", path, lambda _: None)
        timeout = httpx.Timeout(client._http.timeout.connect, read=state.policy.read_timeout)
        while True:
            params, headers = state.request_parts()
            headers.update(headers_for(client._connection, stream_call))
            try:
                async with client._http.stream(
                    "GET", path, params=params, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _read(response, stream_call)
                    decoder = SSEDecoder()
                    async for chunk in response.aiter_bytes():
                        for sse in decoder.feed(chunk):
                            event = state.accept(sse)
                            if event is not None:
                                yield event
                if state.ended():
                    return
                delay = state.failed(None)
            except (httpx.TransportError, ApiError) as error:
                delay = state.failed(error)
            await client._sleep(delay)
