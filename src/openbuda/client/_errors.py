"""The errors the SDK raises: the server's errors as ``openbuda.domain.errors`` classes, and
the client's own (the server cannot be reached, no credentials).

::

    OpenbudaError
    ├── NotFound, Conflict, …       the class ``error_for_code`` gives for the error code,
    │                               mixed with ApiError: ``except NotFound`` works
    ├── ApiError                    any error answered by the server: status, code, message,
    │                               details
    ├── ConnectionFailed            connection_failed    the server could not be reached
    ├── InvalidResponse             invalid_response     an answer the SDK cannot read
    └── MissingCredentials          missing_credentials  no API key was found
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import httpx

from openbuda.domain.errors import OpenbudaError, error_for_code

__all__ = [
    "ApiError",
    "ConnectionFailed",
    "InvalidResponse",
    "MissingCredentials",
    "error_from_response",
]


class ApiError(OpenbudaError):
    """An error answered by the server. Every instance is also the domain class of its code
    (``NotFound``, ``SessionBusy``, …), so callers catch whichever they need."""

    status: int
    """The HTTP status code of the answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, details=details, retryable=retryable)
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.code}, HTTP {self.status})"


class ConnectionFailed(OpenbudaError):
    """The server could not be reached, or the connection broke before an answer."""

    code = "connection_failed"
    default_retryable = True

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message, details={"url": url})
        self.url = url


class InvalidResponse(OpenbudaError):
    """A successful answer that is not the JSON the SDK expects (another server, or a newer
    one that changed the contract)."""

    code = "invalid_response"


class MissingCredentials(OpenbudaError):
    """No API key was given, set in ``OPENBUDA_API_KEY`` or found in credentials.json."""

    code = "missing_credentials"


@cache
def _api_class(code: str) -> type[ApiError]:
    base = error_for_code(code)
    if base is OpenbudaError:  # a code without a class of its own, such as method_not_allowed
        return type("ApiError", (ApiError,), {"code": code, "__module__": __name__})
    namespace = {"__module__": __name__, "__doc__": base.__doc__}
    return type(base.__name__, (base, ApiError), namespace)  # pyright: ignore[reportGeneralTypeIssues]


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer: ``{"error": {code, message, details}}``, or a
    generic one built from the status when the body is not in that shape (a proxy's page)."""
    code, message, details = _fallback_code(response.status_code), "", {}
    try:
        body: Any = json.loads(response.content)
    except ValueError:
        body = None
    error: Any = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
        found: Any = error.get("details")
        if isinstance(found, dict):
            details = found
    if not message:
        text = response.text.strip()[:200] if body is None else ""
        message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if text:
            message += f": {text}"
    retryable = True if response.status_code >= 500 else None
    return _api_class(code)(
        message, status=response.status_code, details=details, retryable=retryable
    )


_STATUS_CODES = {
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


def _fallback_code(status: int) -> str:
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    return "server_error" if status >= 500 else "http_error"
