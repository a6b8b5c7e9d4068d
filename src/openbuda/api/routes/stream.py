"""``GET /v1/sessions/{session_id}/events/stream``: the session's events as server-sent events."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from openbuda.api.deps import Api, Auth
from openbuda.api.errors import ERROR_RESPONSES
from openbuda.api.limits import path_id
from openbuda.api.paging import SEQ_MAX
from openbuda.api.sse import EventStreamResponse, StreamSource, follow_session
from openbuda.domain.errors import InvalidRequest, NotFound
from openbuda.domain.records import Event
from openbuda.domain.states import SessionStatus

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["sessions"], responses=ERROR_RESPONSES)

_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Each stored event as `id: <seq>`, `event: <type>`, `data: <event JSON>`; "
        "ephemeral `text.delta` and `tool.output` events without `id:`; a comment line after "
        "each quiet interval.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def _last_event_id(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or int(value) > SEQ_MAX:
        raise InvalidRequest(
            "Last-Event-ID must be the seq of an event (a non-negative integer)",
            details={"header": "Last-Event-ID"},
        )
    return int(value)


@router.get(
    "/sessions/{session_id}/events/stream",
    response_class=EventStreamResponse,
    status_code=200,
    responses=_STREAM_DOC,
    summary="Follow a session's events live (SSE), after replaying the stored ones",
)
async def stream_events(
    session_id: str,
    api: Api,
    principal: Auth,
    after: Annotated[
        int | None,
        Query(ge=0, le=SEQ_MAX, description="Start after this seq (`Last-Event-ID` wins)."),
    ] = None,
    until: Annotated[
        Literal["idle"] | None,
        Query(description="`idle`: end once no task of the session is queued or running."),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=20, description="Resume after this seq."),
    ] = None,
) -> Response:
    sessions = api.runtime.sessions
    session_id = path_id("session", session_id)
    await sessions.get(principal, session_id)  # 404 before the stream starts
    resume = _last_event_id(last_event_id)
    start = resume if resume is not None else (after or 0)

    async def read(after_seq: int, limit: int) -> list[Event]:
        return await sessions.events(principal, session_id, after_seq=after_seq, limit=limit)

    async def busy() -> bool | None:
        try:
            session = await sessions.get(principal, session_id)
        except NotFound:
            return None
        return session.status is SessionStatus.WORKING

    source = StreamSource(
        read=read,
        subscribe=lambda: api.runtime.broadcaster.subscribe(session_id),
        busy=busy,
    )
    heartbeat = api.settings.sse_heartbeat_seconds

    async def produce(emit: Any) -> None:
        await follow_session(
            source, emit, after=start, until_idle=until == "idle", heartbeat=heartbeat
        )

    return EventStreamResponse(produce)
