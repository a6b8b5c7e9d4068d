"""Agents: create, list, read, change and delete (changes need the ``admin`` role)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from openbuda.api._json import JsonResponse
from openbuda.api.deps import Api, Auth, IdempotencyKey, respond
from openbuda.api.errors import ERROR_RESPONSES
from openbuda.api.limits import check_cursor, path_id, require_json
from openbuda.api.paging import Cursor, Limit
from openbuda.api.schemas import (
    AgentCreate,
    AgentOut,
    AgentUpdate,
    Page,
    agent_json,
    merged_settings,
    plain_settings,
)
from openbuda.ports import AgentPatch

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["agents"], responses=ERROR_RESPONSES)


@router.get("/agents", response_model=Page[AgentOut], summary="Agents of this space")
async def list_agents(
    api: Api, principal: Auth, limit: Limit = 50, cursor: Cursor = None
) -> JsonResponse:
    page = await api.runtime.agents.list(principal, limit=limit, cursor=check_cursor(cursor))
    return JsonResponse(
        {"items": [agent_json(agent) for agent in page.items], "next_cursor": page.next_cursor}
    )


@router.post(
    "/agents",
    status_code=201,
    response_model=AgentOut,
    dependencies=[Depends(require_json)],
    summary="Create an agent",
)
async def create_agent(
    request: Request,
    api: Api,
    principal: Auth,
    body: AgentCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    async def produce() -> Any:
        agent = await api.runtime.agents.create(
            principal,
            name=body.name,
            description=body.description,
            instructions=body.instructions,
            model=body.model,
            settings=None if body.settings is None else plain_settings(body.settings),
        )
        return agent_json(agent)

    return await respond(request, api, principal, idempotency_key, 201, produce)


@router.get("/agents/{agent_id}", response_model=AgentOut, summary="One agent")
async def get_agent(agent_id: str, api: Api, principal: Auth) -> JsonResponse:
    return JsonResponse(
        agent_json(await api.runtime.agents.get(principal, path_id("agent", agent_id)))
    )


@router.patch(
    "/agents/{agent_id}",
    response_model=AgentOut,
    dependencies=[Depends(require_json)],
    summary="Change an agent (only the fields given; settings are merged)",
)
async def update_agent(agent_id: str, body: AgentUpdate, api: Api, principal: Auth) -> JsonResponse:
    agents = api.runtime.agents
    agent_id = path_id("agent", agent_id)
    settings = None
    if body.settings is not None:
        current = await agents.get(principal, agent_id)
        settings = merged_settings(current.settings, body.settings)
    patch = AgentPatch(
        name=body.name,
        description=body.description,
        instructions=body.instructions,
        model=body.model,
        set_model="model" in body.model_fields_set,
        settings=settings,
    )
    return JsonResponse(agent_json(await agents.update(principal, agent_id, patch)))


@router.delete("/agents/{agent_id}", status_code=204, summary="Delete an agent with its sessions")
async def delete_agent(agent_id: str, api: Api, principal: Auth) -> Response:
    await api.runtime.agents.delete(principal, path_id("agent", agent_id))
    return Response(status_code=204)
