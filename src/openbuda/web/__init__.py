"""The web UI: plain HTML, ES modules and CSS in ``static/``, served by the API app as they are.

There is no front-end build step: the files ship as package data and ``mount_web(app)`` serves
``static/index.html`` at ``/`` and every file under ``/ui/``. The pages talk to the API under
``/v1`` with the API key the user typed (kept in ``sessionStorage``, sent as a Bearer header)
and read event streams through ``fetch``, so nothing needs a cookie.

Every UI response carries a strict Content-Security-Policy: scripts and styles only from this
origin (no inline script, no ``eval``), requests only to this origin, images also from the
``blob:`` URLs the Drive preview makes. The pages render what agents and users wrote with DOM
text nodes, never as HTML; the policy is the second wall.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "UI_HEADERS", "UI_PREFIX", "mount_web"]

STATIC_DIR: Final = Path(__file__).parent / "static"
UI_PREFIX: Final = "/ui"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

UI_HEADERS: Final = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    # The files change with the installed version; revalidating costs one 304.
    "cache-control": "no-cache",
}


class _UiFiles(StaticFiles):
    """Static files with the UI's security headers."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(UI_HEADERS)
        return response


async def _index(_request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=UI_HEADERS, media_type="text/html")


def mount_web(app: FastAPI) -> None:
    """Serve the UI: ``/`` is the page, ``/ui/…`` its scripts and styles."""
    app.add_route("/", _index, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(UI_PREFIX, _UiFiles(directory=STATIC_DIR), name="ui")
