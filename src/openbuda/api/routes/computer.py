"""An agent's computer: status, wake, sleep, restart, exec (JSON or live SSE) and previews.

Every route is open to any member of the agent's space. ``exec`` answers 200 whenever the
command ran (also when a limit killed it or it timed out) and 503 only when the computer
cannot start; with ``Accept: text/event-stream`` its output streams as ``output`` events and
the result follows as one ``exit`` event (an error after the stream started is an ``error``
event).

``ANY …/computer/ports/{port}/{path}`` is an HTTP reverse proxy to a server the agent runs. It
takes the API key, or a signed link's token (``?openbuda_preview=`` or, for the page's own
relative requests, the cookie that a signed request sets, scoped to the port's path).
"""

from __future__ import annotations

from typing import Annotated, Any, Final
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Body, Depends, Path, Request
from starlette.responses import RedirectResponse, Response

from openbuda.api._json import JsonResponse, dumps, rfc3339
from openbuda.api.deps import Api, ApiState, Auth, current_principal
from openbuda.api.errors import ERROR_RESPONSES
from openbuda.api.limits import path_id, require_json
from openbuda.api.preview import (
    PREVIEW_COOKIE,
    PREVIEW_PARAM,
    ProxyTarget,
    nothing_listens,
    proxy,
    target_of,
)
from openbuda.api.schemas import (
    ComputerStatusOut,
    ExecCreate,
    ExecResultOut,
    PreviewLinkCreate,
    PreviewLinkOut,
    computer_status_json,
    exec_result_json,
)
from openbuda.api.sse import EventStreamResponse, comment
from openbuda.domain.errors import OpenbudaError, Unauthorized
from openbuda.domain.principal import Principal
from openbuda.ports import OutputStream
from openbuda.service.computer import NothingListens, PreviewGrant

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["computer"], responses=ERROR_RESPONSES)

COOKIE_MAX_AGE_S: Final = 3600
"""A signed request's cookie lasts as long as its link, at most this long."""

Port = Annotated[int, Path(ge=1, le=65_535, description="A TCP port inside the computer.")]

_EXEC_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The result; with `Accept: text/event-stream`, `output {stream, text}` "
        "events as the command writes, then one `exit` event with the result.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ExecResultOut"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
}


def _base(agent_id: str) -> str:
    return f"/v1/agents/{agent_id}/computer"


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {dumps(data)}\n\n"


@router.get(
    "/agents/{agent_id}/computer",
    response_model=ComputerStatusOut,
    summary="The computer's status: state, CPU, memory, disk, listening ports",
)
async def computer_status(agent_id: str, api: Api, principal: Auth) -> JsonResponse:
    status = await api.runtime.computer.status(principal, path_id("agent", agent_id))
    return JsonResponse(computer_status_json(status))


@router.post(
    "/agents/{agent_id}/computer/wake",
    response_model=ComputerStatusOut,
    summary="Start the computer, or wake it from sleep",
)
async def wake_computer(agent_id: str, api: Api, principal: Auth) -> JsonResponse:
    status = await api.runtime.computer.wake(principal, path_id("agent", agent_id))
    return JsonResponse(computer_status_json(status))


@router.post(
    "/agents/{agent_id}/computer/sleep",
    response_model=ComputerStatusOut,
    summary="Put the computer to sleep (its processes keep their state)",
)
async def sleep_computer(agent_id: str, api: Api, principal: Auth) -> JsonResponse:
    status = await api.runtime.computer.sleep(principal, path_id("agent", agent_id))
    return JsonResponse(computer_status_json(status))


@router.post(
    "/agents/{agent_id}/computer/restart",
    response_model=ComputerStatusOut,
    summary="Kill every process and clear /tmp; /agent stays",
)
async def restart_computer(agent_id: str, api: Api, principal: Auth) -> JsonResponse:
    status = await api.runtime.computer.restart(principal, path_id("agent", agent_id))
    return JsonResponse(computer_status_json(status))


@router.post(
    "/agents/{agent_id}/computer/exec",
    response_model=ExecResultOut,
    responses=_EXEC_DOC,
    dependencies=[Depends(require_json)],
    summary="Run a command in the computer (live output with Accept: text/event-stream)",
)
async def exec_command(
    agent_id: str, body: ExecCreate, request: Request, api: Api, principal: Auth
) -> Response:
    prepared = await api.runtime.computer.prepare_exec(
        principal, path_id("agent", agent_id), body.command, cwd=body.cwd, timeout_s=body.timeout_s
    )
    if "text/event-stream" not in request.headers.get("accept", ""):
        return JsonResponse(exec_result_json(await prepared.run()))
    heartbeat = api.settings.sse_heartbeat_seconds

    async def produce(emit: Any) -> None:
        sent_at = anyio.current_time()
        sending = anyio.Lock()  # output and heartbeats come from two tasks

        async def send(chunk: str) -> None:
            nonlocal sent_at
            async with sending:
                await emit(chunk)
                sent_at = anyio.current_time()

        async def on_output(stream: OutputStream, text: str) -> None:
            await send(_event("output", {"stream": stream, "text": text}))

        async def keep_alive() -> None:
            while True:
                await anyio.sleep(max(0.0, heartbeat - (anyio.current_time() - sent_at)))
                if anyio.current_time() - sent_at >= heartbeat:
                    await send(comment())

        async with anyio.create_task_group() as group:
            group.start_soon(keep_alive)
            try:
                result = await prepared.run(on_output)
            except OpenbudaError as error:
                await send(_event("error", error.to_json()))
            else:
                await send(_event("exit", exec_result_json(result)))
            group.cancel_scope.cancel()

    return EventStreamResponse(produce)


@router.post(
    "/agents/{agent_id}/computer/ports/{port}/link",
    response_model=PreviewLinkOut,
    dependencies=[Depends(require_json)],
    summary="A signed preview link to a port: a browser opens it without the API key",
)
async def preview_link(
    agent_id: str,
    port: Port,
    request: Request,
    api: Api,
    principal: Auth,
    body: Annotated[PreviewLinkCreate | None, Body()] = None,
) -> JsonResponse:
    agent_id = path_id("agent", agent_id)
    expires_in_s = (body or PreviewLinkCreate()).expires_in_s
    link = await api.runtime.computer.preview_link(
        principal, agent_id, port, expires_in_s=expires_in_s
    )
    base = (api.settings.public_url or str(request.base_url)).rstrip("/")
    url = f"{base}{_base(agent_id)}/ports/{port}/?{PREVIEW_PARAM}={quote(link.token, safe='')}"
    return JsonResponse({"url": url, "expires_at": rfc3339(link.expires_at)})


async def _preview_access(
    request: Request, api: ApiState, agent_id: str, port: int
) -> tuple[Principal | PreviewGrant, str | None]:
    """Who may open this preview, and the token to set as a cookie (a signed request)."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip() or len(secret) > 1000:
            raise Unauthorized("send an API key: `Authorization: Bearer <key>`")
        return await current_principal(request, api, secret.strip()), None
    token = request.query_params.get(PREVIEW_PARAM)
    if token is not None:
        return await api.runtime.computer.check_preview(agent_id, port, token), token
    cookie = request.cookies.get(PREVIEW_COOKIE)
    if cookie is not None:
        return await api.runtime.computer.check_preview(agent_id, port, cookie), None
    raise Unauthorized(
        "send an API key (`Authorization: Bearer <key>`) or open a signed preview link"
    )


def _cookie(request: Request, prefix: str, grant: PreviewGrant, token: str, now: float) -> str:
    max_age = max(1, min(COOKIE_MAX_AGE_S, int(grant.expires_at.timestamp() - now)))
    secure = "; Secure" if request.url.scheme == "https" else ""
    return (
        f"{PREVIEW_COOKIE}={token}; Path={prefix}/; Max-Age={max_age}; HttpOnly; "
        f"SameSite=Lax{secure}"
    )


@router.api_route(
    "/agents/{agent_id}/computer/ports/{port}",
    methods=["GET", "HEAD"],
    include_in_schema=False,
)
async def preview_root(agent_id: str, port: Port, request: Request) -> Response:
    """The preview's root is ``…/ports/{port}/``: relative links resolve below it."""
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"{_base(path_id('agent', agent_id))}/ports/{port}/{query}", 307)


@router.api_route(
    "/agents/{agent_id}/computer/ports/{port}/{path:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
async def preview(agent_id: str, port: Port, path: str, request: Request, api: Api) -> Response:
    """An HTTP preview of the server listening on ``port`` in the computer."""
    agent_id = path_id("agent", agent_id)
    access, token = await _preview_access(request, api, agent_id, port)
    prefix = f"{_base(agent_id)}/ports/{port}"
    try:
        stream = await api.runtime.computer.open_port(access, agent_id, port)
    except NothingListens as error:
        return nothing_listens(port, error.message)
    extra: dict[str, str] = {}
    if token is not None and isinstance(access, PreviewGrant):
        now = api.runtime.clock.now().timestamp()
        extra["set-cookie"] = _cookie(request, prefix, access, token, now)
    target = ProxyTarget(port, prefix, target_of(request, prefix, path))
    return await proxy(request, stream, target, extra_headers=extra)
