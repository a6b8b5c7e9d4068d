"""Sessions, their messages and their stored events (the live stream is in ``stream``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response

from openbuda.api._json import JsonResponse
from openbuda.api.deps import Api, Auth, IdempotencyKey, respond
from openbuda.api.errors import ERROR_RESPONSES
from openbuda.api.limits import check_cursor, check_query_text, path_id, require_json
from openbuda.api.paging import SEQ_MAX, Cursor, Limit, seq_cursor
from openbuda.api.schemas import (
    EventOut,
    MessageAcceptedOut,
    MessageCreate,
    MessageOut,
    Page,
    SessionCreate,
    SessionOut,
    SessionUpdate,
    accepted_json,
    event_json,
    message_json,
    session_json,
)
from openbuda.domain.records import Event
from openbuda.domain.states import SessionStatus
from openbuda.service.sessions import HistoryMessage, MessageItem

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["sessions"], responses=ERROR_RESPONSES)

After = Annotated[
    int, Query(ge=0, le=SEQ_MAX, description="Only what comes after this seq (default 0).")
]


@router.get(
    "/agents/{agent_id}/sessions",
    response_model=Page[SessionOut],
    summary="Sessions of an agent, most recently active first",
)
async def list_sessions(
    agent_id: str,
    api: Api,
    principal: Auth,
    status: Annotated[
        SessionStatus | None, Query(description="Only sessions in this status.")
    ] = None,
    external_user_id: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Title contains (any case).")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> JsonResponse:
    page = await api.runtime.sessions.list(
        principal,
        path_id("agent", agent_id),
        status=status,
        external_user_id=check_query_text(external_user_id, "external_user_id"),
        query=check_query_text(q, "q"),
        limit=limit,
        cursor=check_cursor(cursor),
    )
    return JsonResponse(
        {"items": [session_json(s) for s in page.items], "next_cursor": page.next_cursor}
    )


@router.post(
    "/agents/{agent_id}/sessions",
    status_code=201,
    response_model=SessionOut,
    dependencies=[Depends(require_json)],
    summary="Start a session (optionally importing a conversation; bodies up to 64 MiB)",
)
async def create_session(
    agent_id: str,
    request: Request,
    api: Api,
    principal: Auth,
    body: SessionCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    agent_id = path_id("agent", agent_id)

    async def produce() -> Any:
        session = await api.runtime.sessions.create(
            principal,
            agent_id,
            title=body.title,
            external_user_id=body.external_user_id,
            history=[HistoryMessage(item.role, item.text) for item in body.history],
        )
        return session_json(session)

    return await respond(request, api, principal, idempotency_key, 201, produce)


@router.get("/sessions/{session_id}", response_model=SessionOut, summary="One session")
async def get_session(session_id: str, api: Api, principal: Auth) -> JsonResponse:
    return JsonResponse(
        session_json(await api.runtime.sessions.get(principal, path_id("session", session_id)))
    )


@router.patch(
    "/sessions/{session_id}",
    response_model=SessionOut,
    dependencies=[Depends(require_json)],
    summary="Rename a session",
)
async def rename_session(
    session_id: str, body: SessionUpdate, api: Api, principal: Auth
) -> JsonResponse:
    session = await api.runtime.sessions.rename(
        principal, path_id("session", session_id), body.title
    )
    return JsonResponse(session_json(session))


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    summary="Delete a session with its events (its open tasks are cancelled)",
)
async def delete_session(session_id: str, api: Api, principal: Auth) -> Response:
    await api.runtime.sessions.delete(principal, path_id("session", session_id))
    return Response(status_code=204)


@router.post(
    "/sessions/{session_id}/messages",
    status_code=202,
    response_model=MessageAcceptedOut,
    dependencies=[Depends(require_json)],
    summary="Send a message: starts a task, answers the open text question, or steers",
)
async def send_message(
    session_id: str,
    request: Request,
    api: Api,
    principal: Auth,
    body: MessageCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    session_id = path_id("session", session_id)

    async def produce() -> Any:
        accepted = await api.runtime.sessions.send(
            principal, session_id, body.text, on_busy=body.on_busy
        )
        return accepted_json(accepted)

    return await respond(request, api, principal, idempotency_key, 202, produce)


@router.get(
    "/sessions/{session_id}/messages",
    response_model=Page[MessageOut],
    summary="The conversation, oldest first",
)
async def list_messages(
    session_id: str,
    api: Api,
    principal: Auth,
    after: After = 0,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> JsonResponse:
    sessions = api.runtime.sessions
    session_id = path_id("session", session_id)

    async def fetch(after_seq: int, count: int) -> Sequence[MessageItem]:
        return await sessions.messages(principal, session_id, after_seq=after_seq, limit=count)

    return await _seq_page(fetch, seq_cursor(cursor, after), limit, message_json)


@router.get(
    "/sessions/{session_id}/events",
    response_model=Page[EventOut],
    summary="Stored events after a seq, in order",
)
async def list_events(
    session_id: str,
    api: Api,
    principal: Auth,
    after: After = 0,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> JsonResponse:
    sessions = api.runtime.sessions
    session_id = path_id("session", session_id)

    async def fetch(after_seq: int, count: int) -> Sequence[Event]:
        return await sessions.events(principal, session_id, after_seq=after_seq, limit=count)

    return await _seq_page(fetch, seq_cursor(cursor, after), limit, event_json)


class _Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


_T = TypeVar("_T", bound=_Sequenced)


async def _seq_page(
    fetch: Callable[[int, int], Awaitable[Sequence[_T]]],
    after: int,
    limit: int,
    to_json: Callable[[_T], dict[str, Any]],
) -> JsonResponse:
    """One page of items ordered by ``seq``; the cursor is the last ``seq`` when more follow."""
    items = await fetch(after, limit)
    next_cursor = None
    if len(items) == limit and await fetch(items[-1].seq, 1):
        next_cursor = str(items[-1].seq)
    return JsonResponse({"items": [to_json(item) for item in items], "next_cursor": next_cursor})
