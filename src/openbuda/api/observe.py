"""Watching the engine: traces, metrics and log context for task runs, model and tool calls.

Three wrappers put the ``Observer`` between the engine and what it calls, through the
injection points the runtime already has (``models=``, ``tools=``, ``Organizer.runner``):

- ``ObservedTaskRunner`` runs each claimed task inside an ``invoke_agent`` span with the task's
  ids bound to the log context, and counts how the run ended;
- ``ObservedModel`` makes each model call a ``chat {model}`` span (GenAI semantic conventions:
  ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
  ``gen_ai.usage.*``, ``gen_ai.conversation.id``) and times it; a step of the loop is the time
  from one model call to the next (or the end of the run);
- ``ObservedTool`` makes each tool call an ``execute_tool {name}`` span and times it.

Traces go to the ``TracerProvider`` given to the app, or over OTLP/HTTP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``tracer_provider_from``), else nowhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from openbuda.api import logs
from openbuda.api.metrics import Metrics
from openbuda.domain.conversation import ModelInput, ModelReply, ToolSpec
from openbuda.domain.records import Task
from openbuda.domain.states import TaskStatus
from openbuda.engine.loop import EngineDeps, TaskRunner
from openbuda.engine.tools import Tool, ToolContext, ToolOutcome
from openbuda.ports import ModelClient, TextDeltaSink
from openbuda.settings import Settings

__all__ = [
    "ObservedModel",
    "ObservedTaskRunner",
    "ObservedTool",
    "Observer",
    "tracer_provider_from",
]

log = logging.getLogger("openbuda.api")

_PROVIDERS: Final = {
    "openai": "openai",
    "openai-responses": "openai",
    "anthropic": "anthropic",
    "google": "gcp.gemini",
}


def tracer_provider_from(settings: Settings) -> TracerProvider | None:
    """An OTLP/HTTP exporting provider when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:  # pragma: no cover - depends on the installation
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http is "
            "not installed: no traces are exported"
        )
        return None
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name})
    )
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@dataclass(slots=True)
class _Run:
    """What one task run records while it goes."""

    task: Task
    step_started: float | None = None


_RUN: Final[ContextVar[_Run | None]] = ContextVar("openbuda_task_run", default=None)


class Observer:
    def __init__(self, metrics: Metrics, tracer: Tracer | None = None) -> None:
        self.metrics = metrics
        self.tracer: Tracer = tracer or trace.NoOpTracer()

    # -- wrappers ------------------------------------------------------------------------------

    def models(
        self, resolve: Callable[[str | None], ModelClient]
    ) -> Callable[[str | None], ModelClient]:
        def observed(spec: str | None) -> ModelClient:
            return ObservedModel(resolve(spec), self)

        return observed

    def tool(self, tool: Tool) -> Tool:
        return ObservedTool(tool, self)

    def runner(self, deps: EngineDeps) -> TaskRunner:
        return ObservedTaskRunner(deps, self)

    # -- steps ---------------------------------------------------------------------------------

    def step_boundary(self) -> None:
        run = _RUN.get()
        if run is None:
            return
        now = time.perf_counter()
        if run.step_started is not None:
            self.metrics.step_seconds.observe(now - run.step_started)
        run.step_started = now

    def end_steps(self, run: _Run) -> None:
        if run.step_started is not None:
            self.metrics.step_seconds.observe(time.perf_counter() - run.step_started)
            run.step_started = None


class ObservedTaskRunner(TaskRunner):
    """The engine's runner, with each run traced, timed and its ids in the log context."""

    def __init__(self, deps: EngineDeps, observer: Observer) -> None:
        super().__init__(deps)
        self.observer = observer

    async def run(self, task: Task) -> None:
        observer = self.observer
        run = _Run(task)
        run_token = _RUN.set(run)
        log_token = logs.bind(
            task_id=task.id,
            session_id=task.session_id,
            agent_id=task.agent_id,
            space_id=task.space_id,
        )
        outcome = "unknown"
        try:
            with observer.tracer.start_as_current_span(
                f"invoke_agent {task.agent_id}",
                kind=SpanKind.INTERNAL,
                attributes={
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.id": task.agent_id,
                    "gen_ai.conversation.id": task.session_id,
                    "openbuda.task.id": task.id,
                    "openbuda.space.id": task.space_id,
                },
            ) as span:
                try:
                    await super().run(task)
                    outcome = await self._outcome(task)
                    span.set_attribute("openbuda.task.status", outcome)
                except BaseException:
                    outcome = "interrupted"
                    raise
        finally:
            observer.end_steps(run)
            observer.metrics.task_runs.labels(outcome=outcome).inc()
            logs.unbind(log_token)
            _RUN.reset(run_token)

    async def _outcome(self, task: Task) -> str:
        """How the run left the task: its status now (``requeued`` when it went back)."""
        async with self.deps.store.read() as tx:
            current = await tx.get_task(task.space_id, task.id)
        if current is None:
            return "deleted"
        if current.status is TaskStatus.QUEUED:
            return "requeued"
        return current.status.value


class ObservedModel:
    """A ``ModelClient`` whose calls are spans and timed."""

    def __init__(self, inner: ModelClient, observer: Observer) -> None:
        self.inner = inner
        self.observer = observer
        self.name = inner.name

    async def respond(
        self, request: ModelInput, on_text: TextDeltaSink | None = None
    ) -> ModelReply:
        observer = self.observer
        observer.step_boundary()
        provider, _, model = self.name.partition(":")
        run = _RUN.get()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": _PROVIDERS.get(provider, provider),
            "gen_ai.system": _PROVIDERS.get(provider, provider),
            "gen_ai.request.model": model or self.name,
        }
        if run is not None:
            attributes["gen_ai.conversation.id"] = run.task.session_id
            attributes["openbuda.task.id"] = run.task.id
        started = time.perf_counter()
        outcome = "ok"
        with observer.tracer.start_as_current_span(
            f"chat {model or self.name}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                reply = await self.inner.respond(request, on_text)
            except BaseException as error:
                outcome = "error"
                span.set_attribute("error.type", getattr(error, "code", type(error).__name__))
                span.set_status(Status(StatusCode.ERROR, str(error)[:500]))
                raise
            finally:
                observer.metrics.model_seconds.labels(model=self.name, outcome=outcome).observe(
                    time.perf_counter() - started
                )
            usage = reply.usage
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            if reply.model_name:
                span.set_attribute("gen_ai.response.model", reply.model_name)
            span.set_attribute(
                "gen_ai.response.finish_reasons", ["tool_calls" if reply.tool_calls else "stop"]
            )
        tokens = observer.metrics.model_tokens
        if usage.input_tokens:
            tokens.labels(model=self.name, kind="input").inc(usage.input_tokens)
        if usage.output_tokens:
            tokens.labels(model=self.name, kind="output").inc(usage.output_tokens)
        return reply


class ObservedTool:
    """A ``Tool`` whose calls are spans and timed."""

    def __init__(self, inner: Tool, observer: Observer) -> None:
        self.inner = inner
        self.observer = observer

    @property
    def spec(self) -> ToolSpec:
        return self.inner.spec

    @property
    def idempotent(self) -> bool:
        return self.inner.idempotent

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        observer = self.observer
        name = self.inner.spec.name
        started = time.perf_counter()
        status = "error"
        with observer.tracer.start_as_current_span(
            f"execute_tool {name}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": context.call_id,
                "gen_ai.tool.type": "function",
                "gen_ai.conversation.id": context.session.id,
                "openbuda.task.id": context.task_id,
            },
        ) as span:
            try:
                outcome = await self.inner.run(context, args)
                status = outcome.status
                if outcome.status == "error":
                    span.set_status(Status(StatusCode.ERROR, outcome.output[:500]))
                    span.set_attribute("error.type", "tool_error")
                return outcome
            finally:
                observer.metrics.tool_seconds.labels(tool=name, status=status).observe(
                    time.perf_counter() - started
                )
