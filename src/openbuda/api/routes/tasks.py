"""Tasks: read them, list them (``?status=waiting`` is the inbox), cancel, answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from openbuda.api._json import JsonResponse
from openbuda.api.deps import Api, Auth, IdempotencyKey, respond
from openbuda.api.errors import ERROR_RESPONSES
from openbuda.api.limits import check_cursor, path_id, require_json
from openbuda.api.paging import Cursor, Limit
from openbuda.api.schemas import AnswerCreate, Page, TaskOut, task_json
from openbuda.domain.errors import NotFound
from openbuda.domain.states import TaskStatus
from openbuda.service.tasks import Answer

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)


@router.get(
    "/tasks",
    response_model=Page[TaskOut],
    summary="Tasks, newest first; `?status=waiting` is the inbox of what needs a person",
)
async def list_tasks(
    api: Api,
    principal: Auth,
    status: Annotated[TaskStatus | None, Query(description="Only tasks in this status.")] = None,
    session_id: Annotated[str | None, Query(max_length=100)] = None,
    agent_id: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> JsonResponse:
    session_id = _filter_id(session_id)
    agent_id = _filter_id(agent_id)
    page = await api.runtime.tasks.list(
        principal,
        status=status,
        session_id=session_id,
        agent_id=agent_id,
        limit=limit,
        cursor=check_cursor(cursor),
    )
    return JsonResponse(
        {"items": [task_json(task) for task in page.items], "next_cursor": page.next_cursor}
    )


def _filter_id(value: str | None) -> str | None:
    """A filter by id; one that no id can equal still runs (and matches nothing)."""
    if value is None:
        return None
    try:
        return path_id("filter", value)
    except NotFound:
        return "-"


@router.get("/tasks/{task_id}", response_model=TaskOut, summary="One task")
async def get_task(task_id: str, api: Api, principal: Auth) -> JsonResponse:
    return JsonResponse(task_json(await api.runtime.tasks.get(principal, path_id("task", task_id))))


@router.post(
    "/tasks/{task_id}/cancel",
    status_code=202,
    response_model=TaskOut,
    summary="Cancel a queued, running or waiting task",
)
async def cancel_task(
    task_id: str,
    request: Request,
    api: Api,
    principal: Auth,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    task_id = path_id("task", task_id)

    async def produce() -> Any:
        return task_json(await api.runtime.tasks.cancel(principal, task_id))

    return await respond(request, api, principal, idempotency_key, 202, produce)


@router.post(
    "/tasks/{task_id}/answer",
    status_code=202,
    response_model=TaskOut,
    dependencies=[Depends(require_json)],
    summary="Answer the task's open question; the task is queued again",
)
async def answer_task(
    task_id: str,
    body: AnswerCreate,
    request: Request,
    api: Api,
    principal: Auth,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    task_id = path_id("task", task_id)
    answer = Answer(
        question_id=body.question_id,
        text=body.text,
        choice=body.choice,
        approved=body.approved,
        note=body.note,
    )

    async def produce() -> Any:
        return task_json(await api.runtime.tasks.answer(principal, task_id, answer))

    return await respond(request, api, principal, idempotency_key, 202, produce)
