"""The clients of the fault suite: sessions that send their plans, stream, and answer.

Each ``SessionClient`` is one user: it creates its session, follows the session's SSE stream
over raw HTTP (``httpx`` and the SDK's ``SSEDecoder``, not the SDK's stream, which drops the
duplicates the suite must see) and records *every* stored event each connection delivered. When
a connection drops it reconnects with ``Last-Event-ID``: the last seq it saw. It answers the
questions it sees through ``POST /tasks/{id}/answer``.

``sequential`` sessions send a message once the previous task is over (their plans ask text
and choice questions); ``queued`` sessions send all their messages at once with ``on_busy:
queue`` (their plans ask nothing: a message to a session waiting on a text question would be
its answer).

A request whose outcome is unknown (the connection broke after it was sent, or the server
answered 5xx while the database went away) is checked before it is made again: a message is
looked for in ``GET /messages`` by its unique text, so a retry never stores it twice.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.abc
import httpx

from openbuda.client._sse import SSEDecoder
from tests.scaleout.history import Accepted, ClientRecord, Received
from tests.scaleout.model import Plan, answer_for

__all__ = ["Progress", "SessionClient", "Workload"]

TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})
RETRY_FIRST: Final = 0.1
RETRY_MAX: Final = 1.0
"""Seconds between attempts while the API is unreachable (it restarts in about two): doubling
from the first to the max, so that 100 clients do not hammer a process that is starting."""
T = TypeVar("T")


class Unsure(Exception):
    """The request may or may not have been carried out."""


class Progress:
    """How many tasks the clients have seen end; ``await reached(n)`` wakes at ``n``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._waiters: list[tuple[int, anyio.Event]] = []

    def add(self) -> None:
        self.done += 1
        for goal, event in list(self._waiters):
            if self.done >= goal:
                event.set()
                self._waiters.remove((goal, event))

    async def reached(self, goal: int) -> None:
        if self.done >= goal:
            return
        event = anyio.Event()
        self._waiters.append((goal, event))
        await event.wait()


@dataclass
class Workload:
    """What every client shares: the HTTP client, the agents, the progress counter."""

    http: httpx.AsyncClient
    progress: Progress
    stream_read_timeout: float = 30.0
    status_poll_seconds: float = 5.0
    """A waiting client also reads its task now and then: a stream that missed an event must
    not hang the suite (the missed event is a violation the checks report anyway)."""
    anomalies: list[str] = field(default_factory=list[str])
    """Answers the clients did not expect (5xx, 409…): printed, not violations by themselves."""


class SessionClient:
    def __init__(
        self,
        workload: Workload,
        index: int,
        agent_id: str,
        mode: Literal["sequential", "queued"],
        plans: list[Plan],
    ) -> None:
        self.workload = workload
        self.http = workload.http
        self.index = index
        self.agent_id = agent_id
        self.mode = mode
        self.plans = plans
        self.session_id = ""
        self.accepted: list[Accepted] = []
        self.received: list[Received] = []
        self.connections = 0
        self.last_seq = 0
        self.status: dict[str, str] = {}
        self.answered: set[str] = set()
        self.stale_reads = 0
        """Times a client found its task further on than the stream had shown."""
        self.opened: dict[int, float] = {}
        """When each SSE connection was opened (``time.time()``)."""
        self.stream_ends: Counter[str] = Counter()
        """Why each SSE connection ended (an exception's name, an HTTP status, a clean end)."""
        self._changed = anyio.Event()
        self._stream_done = False
        self._group: anyio.abc.TaskGroup | None = None

    def record(self) -> ClientRecord:
        """What this client recorded, for the checks."""
        return ClientRecord(
            self.index, self.session_id, list(self.plans), list(self.accepted), list(self.received)
        )

    # -- the session's life --------------------------------------------------------------------

    async def run(self) -> None:
        self.session_id = await self._create_session()
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._stream)
            if self.mode == "sequential":
                for plan in self.plans:
                    accepted = await self._send(plan)
                    await self._until_terminal(accepted.task_id)
            else:
                sent = [await self._send(plan) for plan in self.plans]
                for accepted in sent:
                    await self._until_terminal(accepted.task_id)
            await self._drain()
            self._stream_done = True
            group.cancel_scope.cancel()

    async def _create_session(self) -> str:
        async def create() -> str:
            response = await self.http.post(
                f"/v1/agents/{self.agent_id}/sessions",
                json={"title": f"s{self.index:03d}"},
                headers={"Idempotency-Key": f"session-{self.index}"},
            )
            _check(response, 201)
            return str(response.json()["id"])

        # a lost answer leaves an empty session behind at worst: nothing to check there
        return await self._retry(create, on_unsure=create)

    async def _send(self, plan: Plan) -> Accepted:
        body = {"text": plan.text, "on_busy": "queue"}

        async def send() -> Accepted:
            response = await self.http.post(
                f"/v1/sessions/{self.session_id}/messages",
                json=body,
                headers={"Idempotency-Key": plan.tag},
            )
            _check(response, 202)
            data = response.json()
            return Accepted(plan.tag, str(data["message_id"]), str(data["task_id"]))

        async def find_or_send() -> Accepted:
            found = await self._find_message(plan)
            return found if found is not None else await send()

        accepted = await self._retry(send, on_unsure=find_or_send)
        self.accepted.append(accepted)
        return accepted

    async def _find_message(self, plan: Plan) -> Accepted | None:
        response = await self.http.get(
            f"/v1/sessions/{self.session_id}/messages", params={"limit": 500}
        )
        _check(response, 200)
        for item in response.json()["items"]:
            if item.get("role") == "user" and item.get("text") == plan.text:
                self.workload.anomalies.append(f"{plan.tag}: accepted though its answer was lost")
                return Accepted(plan.tag, str(item["message_id"]), str(item["task_id"]))
        return None

    async def _until_terminal(self, task_id: str) -> None:
        while self.status.get(task_id) not in TERMINAL:
            changed = self._changed
            with anyio.move_on_after(self.workload.status_poll_seconds):
                await changed.wait()
            if not changed.is_set():
                await self._read_task(task_id)
        self.workload.progress.add()

    def _start_answer(self, task_id: str, question: dict[str, Any]) -> None:
        question_id = str(question.get("id"))
        if question_id in self.answered or self._group is None:
            return
        self.answered.add(question_id)
        self._group.start_soon(self._answer, task_id, question)

    async def _read_task(self, task_id: str) -> None:
        """The stream has been quiet for a while: look at the task itself."""
        try:
            response = await self.http.get(f"/v1/tasks/{task_id}")
            _check(response, 200)
        except (httpx.TransportError, Unsure):
            return
        task = response.json()
        status = str(task["status"])
        if status in TERMINAL and self.status.get(task_id) not in TERMINAL:
            self.stale_reads += 1
            self.status[task_id] = status
        question = task.get("question")
        if status == "waiting" and question and question["id"] not in self.answered:
            self.stale_reads += 1
            self._start_answer(task_id, question)

    async def _drain(self) -> None:
        """Wait until the stream has delivered everything stored (the last task's last event);
        what it never delivers, the checks report."""
        target = await self._stored_last_seq()
        with anyio.move_on_after(30):
            while self.last_seq < target:
                changed = self._changed
                await changed.wait()

    async def _stored_last_seq(self) -> int:
        async def read() -> int:
            last = 0
            while True:
                response = await self.http.get(
                    f"/v1/sessions/{self.session_id}/events",
                    params={"after": last, "limit": 500},
                )
                _check(response, 200)
                items = response.json()["items"]
                if not items:
                    return last
                last = int(items[-1]["seq"])

        return await self._retry(read, on_unsure=read)

    # -- answers -------------------------------------------------------------------------------

    async def _answer(self, task_id: str, question: dict[str, Any]) -> None:
        body = answer_for(question)

        async def answer() -> None:
            response = await self.http.post(f"/v1/tasks/{task_id}/answer", json=body)
            if response.status_code == 409:
                raise Unsure(f"409 {response.text[:200]}")
            _check(response, 202)

        async def check_then_answer() -> None:
            response = await self.http.get(f"/v1/tasks/{task_id}")
            _check(response, 200)
            task = response.json()
            open_question = task.get("question")
            if (
                task["status"] == "waiting"
                and open_question
                and open_question["id"] == body["question_id"]
            ):
                await answer()

        await self._retry(answer, on_unsure=check_then_answer)

    # -- the stream ----------------------------------------------------------------------------

    async def _stream(self) -> None:
        failures = 0
        while not self._stream_done:
            self.connections += 1
            connection = self.connections
            self.opened[connection] = time.time()
            headers = {"Accept": "text/event-stream"}
            if self.last_seq:
                headers["Last-Event-ID"] = str(self.last_seq)
            try:
                timeout = httpx.Timeout(10.0, read=self.workload.stream_read_timeout)
                async with self.http.stream(
                    "GET",
                    f"/v1/sessions/{self.session_id}/events/stream",
                    headers=headers,
                    timeout=timeout,
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise Unsure(f"answered {response.status_code}")
                    failures = 0
                    decoder = SSEDecoder()
                    async for chunk in response.aiter_bytes():
                        for sse in decoder.feed(chunk):
                            self._receive(connection, sse.id, sse.data)
                self.stream_ends["closed by the server"] += 1
            except httpx.TransportError as error:
                self.stream_ends[type(error).__name__] += 1
            except Unsure as error:
                self.stream_ends[str(error)] += 1
            await anyio.sleep(_backoff(failures))
            failures += 1

    def _receive(self, connection: int, sse_id: str | None, payload: str) -> None:
        if sse_id is None:  # text.delta, tool.output: ephemeral
            return
        event = json.loads(payload)
        received = Received(
            connection,
            int(event["seq"]),
            str(event["id"]),
            str(event["type"]),
            event.get("task_id"),
            dict(event.get("data") or {}),
            time.time(),
        )
        self.received.append(received)
        self.last_seq = max(self.last_seq, received.seq)
        if received.type == "task.status" and received.task_id is not None:
            self.status[received.task_id] = str(received.data.get("status"))
        elif received.type == "question" and received.task_id is not None:
            self._start_answer(received.task_id, received.data)
        self._changed.set()
        self._changed = anyio.Event()

    # -- retries -------------------------------------------------------------------------------

    async def _retry(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        on_unsure: Callable[[], Awaitable[T]],
        deadline: float = 120.0,
    ) -> T:
        """Run ``attempt``; while the API is away, again; after an unsure outcome ``on_unsure``
        (which checks what happened before doing it again)."""
        step = attempt
        with anyio.fail_after(deadline):
            for failures in itertools.count():
                try:
                    return await step()
                except httpx.ConnectError:
                    pass  # refused: nothing was sent, the same step again
                except (httpx.TransportError, Unsure) as error:
                    if not isinstance(error, httpx.TransportError):
                        self.workload.anomalies.append(f"s{self.index:03d}: {error}")
                    step = on_unsure
                await anyio.sleep(_backoff(failures))
        raise AssertionError("unreachable")


def _backoff(failures: int) -> float:
    return min(RETRY_MAX, RETRY_FIRST * 2**failures)


def _check(response: httpx.Response, expected: int) -> None:
    if response.status_code == expected:
        return
    if response.status_code >= 500 or response.status_code == 409:
        raise Unsure(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:300]}"
        )
    raise AssertionError(
        f"{response.request.method} {response.request.url} answered {response.status_code}: "
        f"{response.text[:500]}"
    )
