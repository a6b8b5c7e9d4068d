"""A scripted SSE endpoint for ``httpx.MockTransport``: it serves a session's stored events
after ``Last-Event-ID`` (or ``?after=``), with ephemeral events between them, and drops the
connection where the test says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


def stored(seq: int, type_: str = "message", **data: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "id": f"evt_{seq}",
        "type": type_,
        "task_id": "tsk_1",
        "at": "2025-01-01T00:00:00Z",
        "data": data,
    }


def frame(event: dict[str, Any]) -> bytes:
    if "seq" in event:
        return (
            f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
        ).encode()
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Yields the frames, then ends cleanly or breaks like a dropped connection."""

    def __init__(self, frames: list[bytes], drop: bool) -> None:
        self.frames = frames
        self.drop = drop

    def __iter__(self) -> Iterator[bytes]:
        yield from self.frames
        if self.drop:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete body")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.frames:
            yield chunk
        if self.drop:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


@dataclass
class FakeStream:
    """``events``: stored events (with ``seq``) and ephemeral ones (without), in order.
    ``drops``: for the n-th connection, after how many frames it breaks (absent: it ends
    cleanly after the last event). ``failures``: connections answered with an error before
    any stream is served (a status code, or an exception to raise)."""

    events: list[dict[str, Any]]
    drops: dict[int, int] = field(default_factory=dict[int, int])
    failures: list[int | Exception] = field(default_factory=list[int | Exception])
    requests: list[httpx.Request] = field(default_factory=list[httpx.Request])
    heartbeat: bool = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            code = {503: "unavailable", 404: "not_found", 401: "unauthorized"}.get(failure, "x")
            return httpx.Response(
                failure, json={"error": {"code": code, "message": f"status {failure}"}}
            )
        after = int(request.headers.get("last-event-id") or request.url.params.get("after") or 0)
        # replay from the log: ephemeral events are only sent live, so after a reconnect only
        # those following the first new stored event are seen
        frames: list[bytes] = [b": connected\n\n"] if self.heartbeat else []
        started = after == 0
        for event in self.events:
            if "seq" in event:
                if event["seq"] <= after:
                    continue
                started = True
            if started:
                frames.append(frame(event))
        number = len(self.requests)
        drop_after = self.drops.get(number)
        if drop_after is not None:
            keep = drop_after + (1 if self.heartbeat else 0)
            cut = frames[keep][: len(frames[keep]) // 2] if keep < len(frames) else b""
            frames = [*frames[:keep], cut]  # the connection breaks in the middle of an event
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_Body(frames, drop=drop_after is not None),
        )

    @property
    def last_event_ids(self) -> list[str | None]:
        return [request.headers.get("last-event-id") for request in self.requests]
