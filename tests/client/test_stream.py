"""The reconnecting event stream, against a scripted SSE endpoint: resume with Last-Event-ID
after a dropped connection, no gap and no duplicate, bounded retries with backoff."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from openbuda.client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    Event,
    StreamPolicy,
)
from openbuda.client._sse import ServerSentEvent
from openbuda.client._stream import event_from_sse
from openbuda.domain.errors import NotFound, Unauthorized
from tests.client.fake_stream import FakeStream, stored

pytestmark = pytest.mark.anyio

POLICY = StreamPolicy(max_retries=3, backoff_base=0.5, backoff_max=1.5)


def session_log() -> list[dict[str, Any]]:
    return [
        stored(1, "session.created", title=""),
        stored(2, "message", role="user", text="hi"),
        stored(3, "task.status", status="running"),
        {"type": "text.delta", "data": {"task_id": "tsk_1", "text": "Hel"}, "task_id": "tsk_1"},
        {"type": "text.delta", "data": {"task_id": "tsk_1", "text": "lo"}, "task_id": "tsk_1"},
        stored(4, "message", role="assistant", text="Hello"),
        stored(5, "task.result", text="Hello", files=[]),
        stored(6, "task.status", status="completed"),
    ]


def sync_client(fake: FakeStream, sleeps: list[float]) -> Client:
    return Client(
        "http://openbuda.test",
        "ob_key",
        transport=httpx.MockTransport(fake),
        stream_policy=POLICY,
        sleep=sleeps.append,
    )


def async_client(fake: FakeStream, sleeps: list[float]) -> AsyncClient:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return AsyncClient(
        "http://openbuda.test",
        "ob_key",
        transport=httpx.MockTransport(fake),
        stream_policy=POLICY,
        sleep=sleep,
    )


def seqs(events: list[Event]) -> list[int | None]:
    return [event.seq for event in events]


def test_a_whole_stream_until_idle() -> None:
    fake = FakeStream(session_log())
    sleeps: list[float] = []
    with sync_client(fake, sleeps) as client:
        events = list(client.sessions.stream("ses_1", until_idle=True))
    assert seqs(events) == [1, 2, 3, None, None, 4, 5, 6]
    assert [e.data.get("text") for e in events if e.ephemeral] == ["Hel", "lo"]
    assert all(e.task_id == "tsk_1" for e in events)
    [request] = fake.requests
    assert request.url.path == "/v1/sessions/ses_1/events/stream"
    assert request.url.params["until"] == "idle"
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["authorization"] == "Bearer ob_key"
    assert "last-event-id" not in request.headers
    assert sleeps == []


def test_after_starts_with_last_event_id() -> None:
    fake = FakeStream(session_log())
    with sync_client(fake, []) as client:
        events = list(client.sessions.stream("ses_1", after=4, until_idle=True))
    assert seqs(events) == [5, 6]
    assert fake.last_event_ids == ["4"]


@pytest.mark.parametrize("drop_after", [0, 1, 2, 3, 4, 5, 6, 7])
def test_resume_after_a_dropped_connection_has_no_gap_and_no_duplicate(drop_after: int) -> None:
    fake = FakeStream(session_log(), drops={1: drop_after})
    sleeps: list[float] = []
    with sync_client(fake, sleeps) as client:
        stream = client.sessions.stream("ses_1", until_idle=True)
        events = list(stream)
    stored_seqs = [s for s in seqs(events) if s is not None]
    assert stored_seqs == [1, 2, 3, 4, 5, 6]
    seen_before_drop = [e["seq"] for e in session_log()[:drop_after] if "seq" in e]
    expected_header = str(seen_before_drop[-1]) if seen_before_drop else None
    assert fake.last_event_ids == [None, expected_header]
    assert sleeps == [0.5]
    assert stream.last_seq == 6


async def test_async_resume_after_a_dropped_connection() -> None:
    fake = FakeStream(session_log(), drops={1: 4, 2: 1})
    sleeps: list[float] = []
    async with (
        async_client(fake, sleeps) as client,
        client.sessions.stream("ses_1", until_idle=True) as stream,
    ):
        events = [event async for event in stream]
    assert [s for s in seqs(events) if s is not None] == [1, 2, 3, 4, 5, 6]
    assert fake.last_event_ids == [None, "3", "4"]
    assert sleeps == [0.5, 0.5]  # each reconnection followed an event: the counter was reset


def test_consecutive_failures_back_off_then_give_up() -> None:
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    fake = FakeStream(session_log(), failures=[refused, 503, refused, refused])
    sleeps: list[float] = []
    with sync_client(fake, sleeps) as client, pytest.raises(ConnectionFailed) as raised:
        list(client.sessions.stream("ses_1", until_idle=True))
    assert sleeps == [0.5, 1.0, 1.5]  # doubling, capped at backoff_max
    assert "gave up after 3 reconnections" in str(raised.value)
    assert "is `openbuda serve` running?" in str(raised.value)
    assert len(fake.requests) == 4


def test_a_retryable_error_answer_is_retried() -> None:
    fake = FakeStream(session_log(), failures=[503])
    sleeps: list[float] = []
    with sync_client(fake, sleeps) as client:
        events = list(client.sessions.stream("ses_1", until_idle=True))
    assert len(events) == 8
    assert sleeps == [0.5]


@pytest.mark.parametrize(("status", "error"), [(404, NotFound), (401, Unauthorized)])
def test_an_error_answer_that_is_not_retryable_raises_at_once(
    status: int, error: type[Exception]
) -> None:
    fake = FakeStream(session_log(), failures=[status])
    sleeps: list[float] = []
    with sync_client(fake, sleeps) as client, pytest.raises(error):
        list(client.sessions.stream("ses_1"))
    assert sleeps == []


def test_without_until_idle_a_clean_end_reconnects() -> None:
    fake = FakeStream(session_log(), failures=[])
    sleeps: list[float] = []
    with sync_client(fake, sleeps) as client:
        stream = client.sessions.stream("ses_1")
        events = [next(stream) for _ in range(8)]
        # the server ended the stream; the next read reconnects after seq 6 and, since nothing
        # new comes and the server keeps closing, gives up after the retries
        with pytest.raises(ConnectionFailed, match="kept closing the stream"):
            next(stream)
    assert seqs(events)[-1] == 6
    assert fake.last_event_ids == [None, "6", "6", "6"]
    assert sleeps == [0.5, 1.0, 1.5]


def test_the_server_retry_field_sets_the_backoff_base() -> None:
    log = session_log()
    fake = FakeStream(log, drops={1: 2})
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if len(fake.requests) == 1:
            assert isinstance(response.stream, httpx.SyncByteStream)
            frames: Any = response.stream
            frames.frames.insert(0, b"retry: 2000\n\n")
        return response

    client = Client(
        "http://openbuda.test",
        "ob_key",
        transport=httpx.MockTransport(handler),
        stream_policy=StreamPolicy(backoff_max=30),
        sleep=sleeps.append,
    )
    with client:
        events = list(client.sessions.stream("ses_1", until_idle=True))
    assert len([e for e in events if not e.ephemeral]) == 6
    assert sleeps == [2.0]


def test_closing_the_stream_early_closes_the_connection() -> None:
    fake = FakeStream(session_log())
    with sync_client(fake, []) as client:
        with client.sessions.stream("ses_1") as stream:
            first = next(stream)
        assert first.seq == 1
        with pytest.raises(StopIteration):
            next(stream)


async def test_async_closing_early() -> None:
    fake = FakeStream(session_log())
    async with async_client(fake, []) as client:
        stream = client.sessions.stream("ses_1")
        first = await anext(stream)
        await stream.aclose()
    assert first.type == "session.created"


def test_event_parsing_accepts_data_only_payloads() -> None:
    delta = event_from_sse(ServerSentEvent('{"task_id": "tsk_9", "text": "x"}', "text.delta"))
    assert (delta.type, delta.task_id, delta.seq, delta.ephemeral) == (
        "text.delta",
        "tsk_9",
        None,
        True,
    )
    numbered = event_from_sse(ServerSentEvent('{"role": "user"}', "message", id="12"))
    assert (numbered.type, numbered.seq, numbered.data) == ("message", 12, {"role": "user"})
    odd = event_from_sse(ServerSentEvent("not json", "note"))
    assert odd.data == {"text": "not json"}
    scalar = event_from_sse(ServerSentEvent("3", "count"))
    assert scalar.data == {"value": 3}
