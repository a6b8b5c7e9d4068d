"""``openbuda serve``: the API app on uvicorn, with openbuda's logging."""

from __future__ import annotations

import logging

import uvicorn

from openbuda.api.app import create_app
from openbuda.api.logs import configure_logging
from openbuda.models import local_model_available
from openbuda.settings import Settings

__all__ = ["serve"]


def serve(settings: Settings) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    _announce_model(settings)
    app = create_app(settings, run_engine=settings.run_workers)
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


def _announce_model(settings: Settings) -> None:
    """Say which model agents without one of their own use, and how to change it."""
    log = logging.getLogger("openbuda.serve")
    model = settings.model or ("local:smollm2" if local_model_available() else None)
    if model is None:
        log.warning(
            "no model configured: tasks will fail with `no_model`. Set OPENBUDA_MODEL="
            "provider:model (openai:…, anthropic:…, google:…) with the provider's API key, "
            "OPENAI_BASE_URL for an OpenAI-compatible server, or install openbuda[local]"
        )
    elif model.startswith("local:"):
        log.warning(
            "default model %s: a small offline model for trying openbuda, weak at real work; "
            "set OPENBUDA_MODEL=provider:model and the provider's key for real work",
            model,
        )
    else:
        log.info("default model %s", model)
