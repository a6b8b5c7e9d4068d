"""What routes depend on: the app's state, the authenticated principal, and answers that may
be replayed for an ``Idempotency-Key``.

Every route but ``/v1/health`` depends on ``current_principal``: ``Authorization: Bearer
<key>`` turns into the ``Principal`` that every service call is scoped by (401 otherwise),
after the key's rate limit (429).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from openbuda.api._json import JsonResponse
from openbuda.api.idempotency import (
    IDEMPOTENCY_HEADER,
    IdempotencyCache,
    check_idempotency_key,
    fingerprint,
)
from openbuda.api.limits import RateLimiter
from openbuda.api.metrics import Metrics
from openbuda.domain.errors import Unauthorized, Unavailable
from openbuda.domain.principal import Principal
from openbuda.runtime import Runtime
from openbuda.service.keys import KeyService, authenticate
from openbuda.settings import Settings

__all__ = [
    "Api",
    "ApiState",
    "Auth",
    "IdempotencyKey",
    "api_state",
    "current_principal",
    "current_secret",
    "respond",
]

_MAX_SECRET = 1000


@dataclass(slots=True)
class ApiState:
    """The app's resources while its lifespan runs."""

    settings: Settings
    runtime: Runtime
    keys: KeyService
    idempotency: IdempotencyCache
    rate_limiter: RateLimiter | None
    metrics: Metrics


def api_state(request: Request) -> ApiState:
    state: ApiState | None = getattr(request.app.state, "openbuda", None)
    if state is None:
        raise Unavailable("the server is starting or stopping; retry in a moment")
    return state


Api = Annotated[ApiState, Depends(api_state)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An openbuda API key: `Authorization: Bearer <key>`.",
)


async def current_secret(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("send an API key: `Authorization: Bearer <key>`")
    if len(credentials.credentials) > _MAX_SECRET:
        raise Unauthorized("unknown API key")
    return credentials.credentials


async def current_principal(
    request: Request, api: Api, secret: Annotated[str, Depends(current_secret)]
) -> Principal:
    principal = await authenticate(api.runtime.store, secret, api.runtime.clock.now())
    request.scope.setdefault("state", {})["key_id"] = principal.key_id
    if api.rate_limiter is not None and principal.key_id is not None:
        api.rate_limiter.check(principal.key_id)
    return principal


Auth = Annotated[Principal, Depends(current_principal)]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="Repeating a request with the same key returns the first one's result.",
        max_length=255,
    ),
]


async def respond(
    request: Request,
    api: ApiState,
    principal: Principal,
    idempotency_key: str | None,
    status_code: int,
    produce: Callable[[], Awaitable[Any]],
) -> Response:
    """``produce()``'s JSON with ``status_code``; once per ``Idempotency-Key`` when one is given."""

    async def answer() -> Response:
        return JsonResponse(await produce(), status_code=status_code)

    key = check_idempotency_key(idempotency_key)
    if key is None:
        return await answer()
    body = await request.body()
    owner = principal.key_id or principal.member_id
    request_print = fingerprint(request.method, request.url.path, body)
    return await api.idempotency.run(owner, key, request_print, answer)
