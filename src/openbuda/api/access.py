"""One log line and two metrics per request, with a request id.

The request id is the client's ``X-Request-ID`` (when it is short and printable) or a new
one; it is bound to the log context while the request runs and returned in the response. The
access log line names the route and the ids in its path (``session_id``, ``task_id`` …) and the
API key that asked.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openbuda.api import logs
from openbuda.api.metrics import Metrics

__all__ = ["AccessLogMiddleware"]

log = logging.getLogger("openbuda.access")

_REQUEST_ID: Final = re.compile(r"^[\x21-\x7e]{1,128}$")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = logs.bind(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route(scope)
            method: str = scope["method"]
            self.metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.http_seconds.labels(method=method, route=route).observe(elapsed)
            extra: dict[str, Any] = {
                "method": method,
                "path": scope["path"],
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
            }
            for name, value in (scope.get("path_params") or {}).items():
                extra[name] = str(value)
            key_id = (scope.get("state") or {}).get("key_id")
            if key_id:
                extra["key_id"] = key_id
            log.info("%s %s %s", method, scope["path"], status, extra=extra)
            logs.unbind(token)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return secrets.token_hex(8)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "unmatched"
