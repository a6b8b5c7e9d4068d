"""What ``Client`` and ``AsyncClient`` share around httpx: the headers of a call, reading an
answer into a model or an exception, and naming a transport failure."""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

import httpx
from pydantic import ValidationError

from openbuda import __version__
from openbuda.client._calls import Call
from openbuda.client._config import Connection
from openbuda.client._errors import (
    ConnectionFailed,
    InvalidResponse,
    MissingCredentials,
    error_from_response,
)

__all__ = ["DEFAULT_TIMEOUT", "connection_failed", "headers_for", "read_answer"]

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 30.0
USER_AGENT: Final = f"openbuda-python/{__version__}"


def headers_for(connection: Connection, call: Call[Any]) -> dict[str, str]:
    headers = dict(call.headers)
    if call.auth:
        if connection.api_key is None:
            path = str(connection.credentials_path)
            if connection.saved_url is not None:
                raise MissingCredentials(
                    f"no API key for {connection.base_url}: the key in {path!r} is for "
                    f"{connection.saved_url}; pass api_key= (--api-key) or set OPENBUDA_API_KEY",
                    details={"credentials_path": path, "saved_url": connection.saved_url},
                )
            raise MissingCredentials(
                "no API key: pass api_key= (--api-key), set OPENBUDA_API_KEY, or run "
                f"`openbuda serve` once to write {path!r}",
                details={"credentials_path": path},
            )
        headers["Authorization"] = f"Bearer {connection.api_key}"
    return headers


def read_answer(response: httpx.Response, call: Call[T]) -> T:
    """The model of a successful answer, or the typed exception of an error answer."""
    if response.status_code >= 400:
        raise error_from_response(response)
    if response.status_code == 204 or not response.content:
        return call.read(None)
    try:
        return call.read(json.loads(response.content))
    except (ValueError, ValidationError) as error:  # ValidationError is a ValueError too
        raise InvalidResponse(
            f"{call.method} {call.path} answered {response.status_code} with a body the SDK "
            f"cannot read: {_first_line(error)}",
            details={"status": response.status_code},
        ) from error


def connection_failed(base_url: str, error: httpx.TransportError) -> ConnectionFailed:
    """The SDK's error for a request that got no answer."""
    if isinstance(error, httpx.ConnectError):
        reason = _reason(error) or "connection refused"
        return ConnectionFailed(
            f"cannot reach the openbuda server at {base_url} ({reason}): "
            "is `openbuda serve` running?",
            url=base_url,
        )
    if isinstance(error, httpx.TimeoutException):
        return ConnectionFailed(
            f"the openbuda server at {base_url} did not answer in time ({type(error).__name__})",
            url=base_url,
        )
    reason = _reason(error) or type(error).__name__
    return ConnectionFailed(
        f"the connection to the openbuda server at {base_url} failed: {reason}", url=base_url
    )


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return " ".join(lines[:3])[:300]


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.rsplit("] ", 1)[-1] if text else ""
