"""Drive on the wire: the files of an agent's Drive (``/v1/agents/{agent_id}/drive``) and of
the space's (``/v1/space/drive``), and saving a session into one (``POST
/v1/sessions/{session_id}/save``).

Both Drives take the same routes, built once by ``_drive_routes``. Content goes both ways as a
stream: ``GET …/files/{path}`` streams the version's blob, ``PUT …/files/{path}`` streams the
request body into the blob store (the app's JSON body limit does not apply to it; Drive's own
``drive_max_file_bytes`` and quota do, as 413 ``too_large`` / ``quota_exceeded``).

Paths come from the URL once percent-decoded by the server and are checked by
``domain.drive.drive_path`` (400 ``invalid_path``). A path that still holds a percent-encoded
``.``, ``/``, ``\\`` or NUL after that decoding was encoded twice: it is refused as well, so
that no layer decoding once more could ever read it as a traversal.
"""

from __future__ import annotations

import mimetypes
import re
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from openbuda.api._json import JsonResponse
from openbuda.api.deps import Api, Auth
from openbuda.api.errors import ERROR_RESPONSES, ErrorResponse
from openbuda.api.limits import path_id, require_json
from openbuda.api.paging import Cursor, Limit
from openbuda.api.schemas import (
    INT32_MAX,
    DriveDiffOut,
    DriveEntryOut,
    DriveRestore,
    DriveVersionOut,
    Page,
    SessionSave,
    drive_diff_json,
    drive_entry_json,
    drive_file_json,
    drive_version_json,
)
from openbuda.domain.drive import DriveRef, DriveVersion, drive_path
from openbuda.domain.errors import InvalidPath, InvalidRequest, NotFound
from openbuda.service.drive import member_actor

__all__ = ["file_path", "router"]

_DRIVE_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    **ERROR_RESPONSES,
    400: {
        "model": ErrorResponse,
        "description": "A path Drive refuses (`invalid_path`: absolute, `..`, backslash, NUL, "
        "too long, …) or a malformed request (`invalid_request`).",
    },
    413: {
        "model": ErrorResponse,
        "description": "The file is over the Drive's largest file (`too_large`), or the space's "
        "Drives would pass their quota (`quota_exceeded`).",
    },
}

router = APIRouter(prefix="/v1", tags=["drive"], responses=_DRIVE_ERRORS)

_TWICE_ENCODED: Final = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_DIFF_TYPES: Final = ("text/x-diff", "text/plain")

VersionQuery = Annotated[
    int | None,
    Query(ge=1, le=INT32_MAX, description="This version instead of the latest."),
]
Prefix = Annotated[
    str | None,
    Query(description="A folder: list what is in it (a Drive path; at most 4,096 bytes)."),
]
Recursive = Annotated[
    bool, Query(description="Every file below the folder instead of its files and folders.")
]
Before = Annotated[
    int | None,
    Query(ge=1, le=INT32_MAX, description="Only versions older than this one."),
]
FromVersion = Annotated[int, Query(alias="from", ge=1, le=INT32_MAX, description="Old version.")]
ToVersion = Annotated[
    int | None, Query(ge=1, le=INT32_MAX, description="New version (default: the latest).")
]

_BINARY: Final = {"schema": {"type": "string", "format": "binary"}}
_FILE_HEADERS: Final = {
    "ETag": {"description": "The content's sha256, quoted.", "schema": {"type": "string"}},
    "X-Drive-Version": {"description": "The version sent.", "schema": {"type": "integer"}},
}
_CONTENT_DOC: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "The content, typed by the file's name (`application/octet-stream` when "
        "the name says nothing).",
        "content": {"application/octet-stream": _BINARY, "*/*": _BINARY},
        "headers": _FILE_HEADERS,
    },
    304: {"description": "`If-None-Match` holds the content's ETag."},
}
_UPLOAD_DOC: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "description": "The raw content (streamed; any size up to the Drive's limit).",
        "content": {"application/octet-stream": _BINARY},
    }
}
_DIFF_DOC: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "The diff as JSON; with `Accept: text/x-diff` (or `text/plain`) the "
        "unified diff itself.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DriveDiffOut"}},
            "text/x-diff": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


def file_path(raw: str) -> str:
    """The Drive path of a URL's ``{path}`` (``InvalidPath`` for anything ``drive_path``
    refuses, and for what was percent-encoded twice)."""
    if _TWICE_ENCODED.search(raw):
        shown = raw[:200]
        raise InvalidPath(
            f"{shown!r}: a path must be percent-encoded once (it still holds an encoded "
            "'.', '/', '\\' or NUL)",
            details={"path": shown},
        )
    return drive_path(raw)


def _content_type(path: str) -> str:
    """The type a name suggests; compressed names (``.gz``) and unknown ones are opaque bytes."""
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if guessed is None or encoding is not None:
        return "application/octet-stream"
    return guessed


def _etag(sha256: str) -> str:
    return f'"{sha256}"'


def _file_headers(found: DriveVersion) -> dict[str, str]:
    assert found.sha256 is not None
    name = found.path.rsplit("/", 1)[-1]
    return {
        "content-length": str(found.size),
        "etag": _etag(found.sha256),
        "x-drive-version": str(found.version),
        "last-modified": found.at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "cache-control": "private, no-cache",
        "content-disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
        "x-content-type-options": "nosniff",
    }


def _not_modified(request: Request, found: DriveVersion) -> bool:
    wanted = request.headers.get("if-none-match")
    if wanted is None or found.sha256 is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    return "*" in tags or _etag(found.sha256) in tags


def _size_hint(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isascii() or not declared.isdigit():
        raise InvalidRequest(
            f"invalid Content-Length {declared[:50]!r}", details={"content_length": declared[:50]}
        )
    return int(declared)


def _wants_text(request: Request) -> str | None:
    """The text type the client asked the diff in, if it prefers one to JSON."""
    accept = request.headers.get("accept", "")
    if "application/json" in accept:
        return None
    return next((kind for kind in _DIFF_TYPES if kind in accept), None)


async def _which_drive(request: Request, api: Api, principal: Auth) -> DriveRef:
    """The Drive of the route: the agent's of ``{agent_id}``, else the Space Drive."""
    agent_id: str | None = request.path_params.get("agent_id")
    if agent_id is not None:
        agent_id = path_id("agent", agent_id)
    return await api.runtime.drive.drive(principal, agent_id)


async def _agent_id(agent_id: str) -> None:
    """Declares ``{agent_id}`` (``_which_drive`` reads it) on the agent's Drive routes."""


ThisDrive = Annotated[DriveRef, Depends(_which_drive)]


async def list_files(
    drive: ThisDrive,
    api: Api,
    prefix: Prefix = None,
    recursive: Recursive = False,
) -> JsonResponse:
    entries = await api.runtime.drive.list(drive, prefix, recursive=recursive)
    return JsonResponse(
        {"items": [drive_entry_json(entry) for entry in entries], "next_cursor": None}
    )


async def read_file(
    path: str,
    drive: ThisDrive,
    request: Request,
    api: Api,
    version: VersionQuery = None,
) -> Response:
    service = api.runtime.drive
    found = await service.version(drive, file_path(path), version)
    headers = _file_headers(found)
    if _not_modified(request, found):
        return Response(status_code=304, headers={"etag": headers["etag"]})
    found, chunks = await service.open(drive, found.path, found.version)
    return StreamingResponse(chunks, media_type=_content_type(found.path), headers=headers)


async def head_file(
    path: str,
    drive: ThisDrive,
    api: Api,
    version: VersionQuery = None,
) -> Response:
    found = await api.runtime.drive.version(drive, file_path(path), version)
    return Response(headers=_file_headers(found), media_type=_content_type(found.path))


async def write_file(
    path: str,
    drive: ThisDrive,
    request: Request,
    api: Api,
    principal: Auth,
) -> Response:
    service = api.runtime.drive
    path = file_path(path)
    size_hint = _size_hint(request)
    try:
        await service.version(drive, path)
        existed = True
    except NotFound:
        existed = False
    try:
        written = await service.write(
            drive, path, request.stream(), member_actor(principal), size_hint=size_hint
        )
    except ClientDisconnect:  # nothing was stored; nobody is left to answer
        return Response(status_code=400)
    return JsonResponse(drive_file_json(written), status_code=200 if existed else 201)


async def delete_file(path: str, drive: ThisDrive, api: Api, principal: Auth) -> JsonResponse:
    deleted = await api.runtime.drive.delete(drive, file_path(path), member_actor(principal))
    return JsonResponse(drive_file_json(deleted))


async def history(
    path: str,
    drive: ThisDrive,
    api: Api,
    limit: Limit = 50,
    before: Before = None,
    cursor: Cursor = None,
) -> JsonResponse:
    if cursor is not None:
        if not cursor.isascii() or not cursor.isdigit() or not 1 <= int(cursor) <= INT32_MAX:
            raise InvalidRequest(
                f"invalid cursor {cursor[:100]!r}", details={"cursor": cursor[:100]}
            )
        before = int(cursor)
    versions = await api.runtime.drive.history(drive, file_path(path), limit=limit, before=before)
    more = len(versions) == limit and versions[-1].version > 1
    return JsonResponse(
        {
            "items": [drive_version_json(v) for v in versions],
            "next_cursor": str(versions[-1].version) if more else None,
        }
    )


async def diff(
    path: str,
    drive: ThisDrive,
    request: Request,
    api: Api,
    from_version: FromVersion,
    to: ToVersion = None,
) -> Response:
    found = await api.runtime.drive.diff(drive, file_path(path), from_version, to)
    text_type = _wants_text(request)
    if text_type is not None:
        return PlainTextResponse(found.diff, media_type=text_type)
    return JsonResponse(drive_diff_json(found))


async def restore(
    path: str,
    body: DriveRestore,
    drive: ThisDrive,
    api: Api,
    principal: Auth,
) -> JsonResponse:
    restored = await api.runtime.drive.restore(
        drive, file_path(path), body.version, member_actor(principal)
    )
    return JsonResponse(drive_file_json(restored))


def _drive_routes(base: str, named: str, *, agent: bool) -> APIRouter:
    """The routes of one kind of Drive (``named`` goes into their summaries)."""
    routes = APIRouter(dependencies=[Depends(_agent_id)] if agent else [])
    files = f"{base}/files/{{path:path}}"
    routes.add_api_route(
        f"{base}/files",
        list_files,
        methods=["GET"],
        response_model=Page[DriveEntryOut],
        summary=f"Files and folders of {named} (in a folder: `?prefix=`)",
    )
    routes.add_api_route(
        files,
        read_file,
        methods=["GET"],
        response_class=Response,
        responses=_CONTENT_DOC,
        summary=f"Download a file of {named} (streamed; `?version=` for an older one)",
    )
    routes.add_api_route(files, head_file, methods=["HEAD"], include_in_schema=False)
    routes.add_api_route(
        files,
        write_file,
        methods=["PUT"],
        response_model=DriveEntryOut,
        responses={201: {"model": DriveEntryOut, "description": "The path was new."}},
        openapi_extra=_UPLOAD_DOC,
        summary=f"Upload a file to {named}: the body is the content (a new version)",
    )
    routes.add_api_route(
        files,
        delete_file,
        methods=["DELETE"],
        response_model=DriveEntryOut,
        summary=f"Delete a file of {named} (a restorable deletion version)",
    )
    routes.add_api_route(
        f"{base}/versions/{{path:path}}",
        history,
        methods=["GET"],
        response_model=Page[DriveVersionOut],
        summary=f"The versions of a file of {named}, newest first, with who made them",
    )
    routes.add_api_route(
        f"{base}/diff/{{path:path}}",
        diff,
        methods=["GET"],
        response_model=DriveDiffOut,
        responses=_DIFF_DOC,
        summary=f"A unified diff between two versions of a file of {named}",
    )
    routes.add_api_route(
        f"{base}/restore/{{path:path}}",
        restore,
        methods=["POST"],
        response_model=DriveEntryOut,
        dependencies=[Depends(require_json)],
        summary=f"Restore a version of a file of {named} (as a new version)",
    )
    return routes


router.include_router(_drive_routes("/agents/{agent_id}/drive", "an agent's Drive", agent=True))
router.include_router(_drive_routes("/space/drive", "the Space Drive", agent=False))


@router.post(
    "/sessions/{session_id}/save",
    response_model=DriveEntryOut,
    dependencies=[Depends(require_json)],
    summary="Save a session's transcript (or one task's result) to Drive as Markdown",
)
async def save_session(
    session_id: str, body: SessionSave, api: Api, principal: Auth
) -> JsonResponse:
    saved = await api.runtime.drive.save_session(
        principal,
        path_id("session", session_id),
        body.path,
        drive=body.drive,
        task_id=None if body.task_id is None else path_id("task", body.task_id),
    )
    return JsonResponse(drive_file_json(saved))
