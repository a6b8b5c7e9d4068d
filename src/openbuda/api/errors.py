"""Errors on the wire: ``{"error": {"code", "message", "details"}}`` with the HTTP status from
``openbuda.domain.errors.HTTP_STATUS``, the one table from codes to statuses.

The framework's own answers (no such route, a method the route does not take, a request that
does not fit the schema) use the same shape; anything unexpected is a logged 500 ``internal``
that shows no internals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from openbuda.api._json import JsonResponse
from openbuda.domain.errors import HTTP_STATUS, OpenbudaError

__all__ = [
    "ERROR_RESPONSES",
    "ErrorBody",
    "ErrorResponse",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger("openbuda.api")

_CODE_FOR_STATUS: Final[dict[int, str]] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    code: str = Field(description="Stable error code, e.g. `not_found` or `session_busy`.")
    message: str = Field(description="What went wrong, for people.")
    details: dict[str, Any] = Field(description="Machine-readable context (may be empty).")


class ErrorResponse(BaseModel):
    error: ErrorBody


def _described(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: _described("Malformed request: bad JSON, cursor or header (`invalid_request`)."),
    401: _described("Missing, unknown, revoked or expired API key (`unauthorized`)."),
    403: _described("The key's role does not allow this (`forbidden`)."),
    404: _described("No such object in this key's space (`not_found`)."),
    409: _described(
        "Conflicts: `conflict`, `session_busy`, `question_pending`, `invalid_transition`."
    ),
    413: _described("The body is too large (`too_large`)."),
    415: _described("The body is not JSON (`unsupported_media_type`)."),
    422: _described("The request does not validate (`validation_error`)."),
    429: _described("Too many requests for this API key (`rate_limited`)."),
    503: _described("Temporarily unavailable; retry (`unavailable`)."),
}
"""Documented on every authenticated operation (OpenAPI)."""


def error_response(
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JsonResponse:
    status = status or HTTP_STATUS.get(code, 500)
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", "Bearer")
    body = {"error": {"code": code, "message": message, "details": dict(details or {})}}
    return JsonResponse(body, status_code=status, headers=all_headers)


async def _openbuda_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenbudaError)
    status = HTTP_STATUS.get(exc.code)
    if status is None:  # an internal error class (lease_lost, model_error) escaped a service
        log.error("unexpected %s error: %s", exc.code, exc.message)
        return error_response("internal", "internal error", status=500)
    headers: dict[str, str] = {}
    retry_after = exc.details.get("retry_after_s")
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    return error_response(exc.code, exc.message, exc.details, status=status, headers=headers)


def _location(loc: Sequence[Any]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = [
        {
            "loc": _location(error.get("loc", ())),
            "message": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = str((error.get("ctx") or {}).get("error", "JSON decode error"))
            return error_response(
                "invalid_request",
                f"the body is not valid JSON: {reason}",
                {"errors": errors[:1]},
            )
    first = errors[0] if errors else {"loc": [], "message": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    message = f"{where}: {first['message']}" if where else str(first["message"])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response("validation_error", message, {"errors": errors[:50]})


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_FOR_STATUS.get(exc.status_code)
    if code is None:
        code = "invalid_request" if exc.status_code < 500 else "internal"
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    elif exc.status_code == 405:
        message = "this route does not take this method"
    return error_response(code, message, status=exc.status_code, headers=dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response("internal", "internal error", status=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenbudaError, _openbuda_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
