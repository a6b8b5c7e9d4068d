"""Health, the principal (``/v1/me``), API keys and spaces."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from openbuda import __version__
from openbuda.api._json import JsonResponse
from openbuda.api.deps import Api, Auth, IdempotencyKey, current_secret, respond
from openbuda.api.errors import ERROR_RESPONSES
from openbuda.api.limits import path_id, require_json
from openbuda.api.paging import Cursor, Limit, page_of
from openbuda.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    HealthOut,
    MeOut,
    Page,
    SpaceCreate,
    SpaceCreatedOut,
    SpaceOut,
    api_key_json,
    created_key_json,
    space_json,
)

__all__ = ["health_router", "router"]

health_router = APIRouter(prefix="/v1", tags=["health"])
router = APIRouter(prefix="/v1", tags=["identity"], responses=ERROR_RESPONSES)


@health_router.get("/health", response_model=HealthOut, summary="Health check (no auth)")
async def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


@router.get("/me", response_model=MeOut, summary="The principal of this API key")
async def me(
    api: Api, secret: Annotated[str, Depends(current_secret)], _principal: Auth
) -> JsonResponse:
    identity = await api.keys.identify(secret)
    return JsonResponse(
        {
            "member": {
                "id": identity.member.id,
                "name": identity.member.name,
                "role": identity.member.role.value,
            },
            "space": space_json(identity.space),
            "role": identity.principal.role.value,
            "api_key": api_key_json(identity.key),
            "instance_owner": identity.principal.is_instance_owner,
        }
    )


@router.get("/api-keys", response_model=Page[ApiKeyOut], summary="API keys of this space")
async def list_api_keys(
    api: Api, principal: Auth, limit: Limit = 50, cursor: Cursor = None
) -> JsonResponse:
    keys = await api.keys.list_keys(principal)
    return JsonResponse(page_of([api_key_json(key) for key in keys], limit, cursor))


@router.post(
    "/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    dependencies=[Depends(require_json)],
    summary="Create an API key (its secret is shown once)",
)
async def create_api_key(
    request: Request,
    api: Api,
    principal: Auth,
    body: ApiKeyCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    async def produce() -> Any:
        created = await api.keys.create_key(
            principal, name=body.name, role=body.role, expires_in_days=body.expires_in_days
        )
        return created_key_json(created)

    return await respond(request, api, principal, idempotency_key, 201, produce)


@router.delete("/api-keys/{key_id}", status_code=204, summary="Revoke an API key")
async def delete_api_key(key_id: str, api: Api, principal: Auth) -> Response:
    await api.keys.revoke_key(principal, path_id("API key", key_id))
    return Response(status_code=204)


@router.get("/spaces", response_model=Page[SpaceOut], summary="Spaces this key sees")
async def list_spaces(
    api: Api, principal: Auth, limit: Limit = 50, cursor: Cursor = None
) -> JsonResponse:
    spaces = await api.keys.list_spaces(principal)
    return JsonResponse(page_of([space_json(space) for space in spaces], limit, cursor))


@router.post(
    "/spaces",
    status_code=201,
    response_model=SpaceCreatedOut,
    dependencies=[Depends(require_json)],
    summary="Create a space and its owner key (instance owner only)",
)
async def create_space(
    request: Request,
    api: Api,
    principal: Auth,
    body: SpaceCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    async def produce() -> Any:
        created = await api.keys.create_space(principal, name=body.name)
        return {"space": space_json(created.space), "api_key": created_key_json(created.key)}

    return await respond(request, api, principal, idempotency_key, 201, produce)
