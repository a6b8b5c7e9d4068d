"""The app factory: ``create_app(settings)`` is the HTTP API of API.md under ``/v1``.

::

    app = create_app(Settings())           # uvicorn.run(app) — or `openbuda serve`

The app's lifespan owns the runtime (``Runtime.start``: the store, the organizer with its
workers and reaper, the broadcaster) and, on an empty store, creates the instance owner's key
(``bootstrap``). Tests inject the parts they control (``store=``, ``clock=``, ``models=``,
``tools=``, ``tracer_provider=``) and drive the app in-process.

Also served: ``/v1/openapi.json``, ``/v1/docs``, (unauthenticated, outside the API)
``/metrics`` for Prometheus, and the web UI at ``/`` (``openbuda.web``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final

import anyio
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from starlette.requests import Request
from starlette.responses import Response

from openbuda import __version__
from openbuda.api._json import JsonResponse
from openbuda.api.access import AccessLogMiddleware
from openbuda.api.bootstrap import bootstrap_instance
from openbuda.api.deps import ApiState
from openbuda.api.errors import install_error_handlers
from openbuda.api.idempotency import IdempotencyCache
from openbuda.api.limits import BodyLimitMiddleware, RateLimiter
from openbuda.api.metrics import CONTENT_TYPE, Metrics
from openbuda.api.observe import Observer, tracer_provider_from
from openbuda.api.routes import agents, computer, drive, identity, sessions, stream, tasks
from openbuda.engine.loop import MemoryReader
from openbuda.engine.tools import Tool, ToolRegistry
from openbuda.models import resolve_model
from openbuda.ports import Clock, ModelClient, SandboxBackend, Store
from openbuda.runtime import Runtime
from openbuda.service.keys import KeyService, check_bootstrap_key
from openbuda.settings import Settings
from openbuda.web import mount_web

__all__ = ["create_app"]

PREFIX: Final = "/v1"
_IMPORT_ROUTE: Final = re.compile(r"^/v1/agents/[^/]+/sessions/?$")
_DRIVE_UPLOAD: Final = re.compile(r"^/v1/(agents/[^/]+|space)/drive/files/")

_DESCRIPTION = """\
openbuda runs AI agents in isolated **sessions** that carry out durable **tasks**.

Authenticate every request but `/v1/health` with `Authorization: Bearer <api key>`. Errors are
`{"error": {"code", "message", "details"}}`. Lists take `?limit=` (1-500, default 50) and
`?cursor=` (the previous page's `next_cursor`). POSTs that create things take an
`Idempotency-Key` header.
"""


def _print(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    clock: Clock | None = None,
    models: Callable[[str | None], ModelClient] | None = None,
    tools: Iterable[Tool] | None = None,
    memory: MemoryReader | None = None,
    run_engine: bool = True,
    tracer_provider: TracerProvider | None = None,
    metrics: Metrics | None = None,
    announce: Callable[[str], None] = _print,
    sandbox: SandboxBackend | None = None,
) -> FastAPI:
    """The API app. Without ``store`` the lifespan opens (and migrates) the settings' database;
    ``models`` resolves ``provider:model`` specs (default: the real providers); ``tools`` are
    the agents' tools (default: the built-in computer tools); ``run_engine`` false serves the
    API without running tasks here (another process does); ``sandbox`` is the computers'
    backend (default: ``open_backend(settings)``)."""
    settings = settings or Settings()
    if settings.bootstrap_api_key is not None:
        check_bootstrap_key(settings.bootstrap_api_key)  # fail now, not at the first start
    metrics = metrics or Metrics()
    own_provider = tracer_provider is None
    provider = tracer_provider or tracer_provider_from(settings)
    tracer = provider.get_tracer("openbuda", __version__) if provider is not None else None
    observer = Observer(metrics, tracer)

    def resolve(spec: str | None) -> ModelClient:
        return resolve_model(spec, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        async with (
            Runtime.start(
                settings,
                store=store,
                clock=clock,
                models=observer.models(models or resolve),
                tools=None if tools is None else ToolRegistry(observer.tool(t) for t in tools),
                memory=memory,
                run_engine=False,  # started below, once its runs are observed
                kind="api+worker" if run_engine else "api",
                sandbox=sandbox,
            ) as runtime,
            anyio.create_task_group() as engine,
        ):
            organizer = runtime.organizer
            if tools is None:  # the runtime's own tools (computer, remember, plugins), observed
                organizer.deps.tools = ToolRegistry(
                    observer.tool(t) for t in organizer.deps.tools.all()
                )
            organizer.runner = observer.runner(organizer.deps)
            await bootstrap_instance(runtime, settings, announce)
            if run_engine:
                await engine.start(organizer.run)
            app.state.openbuda = ApiState(
                settings=settings,
                runtime=runtime,
                keys=KeyService(runtime.store, runtime.clock),
                idempotency=IdempotencyCache(settings.idempotency_ttl_seconds),
                rate_limiter=(
                    RateLimiter(settings.rate_limit_per_min)
                    if settings.rate_limit_per_min
                    else None
                ),
                metrics=metrics,
            )
            try:
                yield
            finally:
                app.state.openbuda = None
                engine.cancel_scope.cancel()  # the organizer re-queues what it still runs
        if own_provider and provider is not None:
            provider.shutdown()

    app = FastAPI(
        title="openbuda",
        version=__version__,
        description=_DESCRIPTION,
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        default_response_class=JsonResponse,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        large_limit=settings.max_import_body_bytes,
        large_route=lambda method, path: method == "POST" and bool(_IMPORT_ROUTE.match(path)),
        streamed_route=lambda method, path: method == "PUT" and bool(_DRIVE_UPLOAD.match(path)),
    )
    app.add_middleware(AccessLogMiddleware, metrics=metrics)

    app.include_router(identity.health_router)
    for module in (identity, agents, sessions, stream, tasks, computer, drive):
        app.include_router(module.router)

    if settings.metrics_enabled:

        @app.get("/metrics", include_in_schema=False)
        async def prometheus(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
            state: ApiState | None = getattr(request.app.state, "openbuda", None)
            if state is not None:
                await metrics.refresh(state.runtime)
            return Response(metrics.render(), media_type=CONTENT_TYPE)

    mount_web(app)  # the web UI at `/` (openbuda.web)
    return app
