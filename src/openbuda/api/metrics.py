"""Prometheus metrics, served at ``/metrics``.

=============================================  ======================================================
``openbuda_tasks{status}``                      tasks in the store by status (all spaces)
``openbuda_queue_depth``                        queued tasks in the store
``openbuda_active_sessions{state}``             sessions with a queued/running task (``working``)
                                                or a question open (``waiting``)
``openbuda_worker_running_tasks``               task runs this process holds now
``openbuda_stream_subscribers``                 event streams this process serves now
``openbuda_step_duration_seconds``              one step of the agent loop: a model call and the
                                                tool calls of its reply
``openbuda_model_call_duration_seconds{model,outcome}``  one model call
``openbuda_model_tokens_total{model,kind}``     tokens in (``input``) and out (``output``)
``openbuda_tool_call_duration_seconds{tool,status}``     one tool call
``openbuda_task_runs_total{outcome}``           runs of a task by this process, by how they ended
``openbuda_http_requests_total{method,route,status}``    requests answered
``openbuda_http_request_duration_seconds{method,route}``  time to answer (streams: their length)
=============================================  ======================================================

The store gauges are read at scrape time (at most once per ``store_refresh_seconds``); the rest
is counted by this process. Each app has its own registry.
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from openbuda.runtime import Runtime
from openbuda.stores.stats import read_stats

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
_SECONDS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        store_refresh_seconds: float = 5.0,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.store_refresh_seconds = store_refresh_seconds
        self._refreshed_at: float | None = None
        r = self.registry
        self.tasks = Gauge(
            "openbuda_tasks", "Tasks in the store by status.", ["status"], registry=r
        )
        self.queue_depth = Gauge("openbuda_queue_depth", "Queued tasks in the store.", registry=r)
        self.active_sessions = Gauge(
            "openbuda_active_sessions",
            "Sessions with a queued or running task (working) or an open question (waiting).",
            ["state"],
            registry=r,
        )
        self.running_here = Gauge(
            "openbuda_worker_running_tasks", "Task runs this process holds.", registry=r
        )
        self.stream_subscribers = Gauge(
            "openbuda_stream_subscribers", "Event streams this process serves.", registry=r
        )
        self.step_seconds = Histogram(
            "openbuda_step_duration_seconds",
            "One step of the agent loop: a model call and the tool calls of its reply.",
            buckets=_SECONDS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "openbuda_model_call_duration_seconds",
            "One model call.",
            ["model", "outcome"],
            buckets=_SECONDS,
            registry=r,
        )
        self.model_tokens = Counter(
            "openbuda_model_tokens", "Model tokens by direction.", ["model", "kind"], registry=r
        )
        self.tool_seconds = Histogram(
            "openbuda_tool_call_duration_seconds",
            "One tool call.",
            ["tool", "status"],
            buckets=_SECONDS,
            registry=r,
        )
        self.task_runs = Counter(
            "openbuda_task_runs", "Runs of a task by this process.", ["outcome"], registry=r
        )
        self.http_requests = Counter(
            "openbuda_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "openbuda_http_request_duration_seconds",
            "Time to answer an HTTP request (an event stream: its length).",
            ["method", "route"],
            buckets=_SECONDS,
            registry=r,
        )

    async def refresh(self, runtime: Runtime) -> None:
        """Read the store gauges, unless they were read less than the refresh interval ago."""
        self.running_here.set(runtime.organizer.running_count)
        self.stream_subscribers.set(runtime.broadcaster.subscriber_count())
        now = time.monotonic()
        if self._refreshed_at is not None and now - self._refreshed_at < self.store_refresh_seconds:
            return
        stats = await read_stats(runtime.store)
        self._refreshed_at = now
        if stats is None:
            return
        for status, count in stats.tasks_by_status.items():
            self.tasks.labels(status=status).set(count)
        self.queue_depth.set(stats.tasks_by_status.get("queued", 0))
        self.active_sessions.labels(state="working").set(stats.working_sessions)
        self.active_sessions.labels(state="waiting").set(stats.waiting_sessions)

    def render(self) -> bytes:
        return generate_latest(self.registry)
