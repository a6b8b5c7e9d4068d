"""``openbuda serve``: the API app on uvicorn, with openbuda's logging."""

from __future__ import annotations

import uvicorn

from openbuda.api.app import create_app
from openbuda.api.logs import configure_logging
from openbuda.settings import Settings

__all__ = ["serve"]


def serve(settings: Settings) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # openbuda.access logs each request with its ids
        proxy_headers=True,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
