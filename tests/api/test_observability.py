"""Metrics at ``/metrics``, traces of model and tool calls (GenAI conventions), and structured
logs carrying task and session ids."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.api.conftest import Api, make_api

from openbuda.api.logs import ContextFilter, JsonFormatter, TextFormatter, bind, configure_logging
from openbuda.api.observe import tracer_provider_from
from openbuda.domain.errors import ModelError
from openbuda.ports import Store
from openbuda.settings import Settings
from openbuda.testing import ScriptedModel, call, reply

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def run_span_ended(api: Api) -> None:
    """Wait for the run's span: it ends just after the task's last write, which wait_task sees."""
    with anyio.fail_after(5):
        while not any(s.name.startswith("invoke_agent ") for s in api.spans.get_finished_spans()):
            await anyio.sleep(0.01)


async def test_metrics(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    api.model.add(call("record", text="x"), reply("done", input_tokens=12, output_tokens=3))
    accepted = await api.send(session["id"], "go")
    await api.wait_task(accepted["task_id"])
    waiting = await api.session((await api.agent(name="asker"))["id"])
    api.model.add(call("ask_user", prompt="?"))
    await api.wait_task((await api.send(waiting["id"], "ask"))["task_id"])

    response = await api.client_for(None).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("openbuda_tasks", (("status", "completed"),))] == 1
    assert found[("openbuda_tasks", (("status", "waiting"),))] == 1
    assert found[("openbuda_tasks", (("status", "queued"),))] == 0
    assert found[("openbuda_queue_depth", ())] == 0
    assert found[("openbuda_active_sessions", (("state", "waiting"),))] == 1
    assert found[("openbuda_active_sessions", (("state", "working"),))] == 0
    assert found[("openbuda_worker_running_tasks", ())] == 0
    model = (("model", "test:scripted"), ("outcome", "ok"))
    assert found[("openbuda_model_call_duration_seconds_count", model)] == 3
    assert found[("openbuda_step_duration_seconds_count", ())] == 3
    assert (
        found[("openbuda_tool_call_duration_seconds_count", (("status", "ok"), ("tool", "record")))]
        == 1
    )
    assert (
        found[("openbuda_model_tokens_total", (("kind", "input"), ("model", "test:scripted")))]
        == 12
    )
    assert found[("openbuda_task_runs_total", (("outcome", "completed"),))] == 1
    assert found[("openbuda_task_runs_total", (("outcome", "waiting"),))] == 1
    requests = (
        ("method", "POST"),
        ("route", "/v1/sessions/{session_id}/messages"),
        ("status", "202"),
    )
    assert found[("openbuda_http_requests_total", requests)] == 2
    assert "/metrics" not in (await api.client.get("/v1/openapi.json")).text


async def test_traces_follow_the_genai_conventions(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    api.model.add(call("record", text="x"), reply("done", input_tokens=7, output_tokens=2))
    accepted = await api.send(session["id"], "go")
    await api.wait_task(accepted["task_id"])
    await run_span_ended(api)
    spans = api.spans.get_finished_spans()
    by_name = {span.name: span for span in spans}
    run = next(span for span in spans if span.name.startswith("invoke_agent "))
    chats = [span for span in spans if span.name == "chat scripted"]
    tool = by_name["execute_tool record"]
    assert len(chats) == 2
    assert run.attributes is not None and run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run.attributes["gen_ai.conversation.id"] == session["id"]
    assert run.attributes["openbuda.task.id"] == accepted["task_id"]
    assert run.attributes["openbuda.task.status"] == "completed"
    last = chats[-1].attributes
    assert last is not None
    assert last["gen_ai.operation.name"] == "chat"
    assert last["gen_ai.provider.name"] == "test"
    assert last["gen_ai.request.model"] == "scripted"
    assert last["gen_ai.usage.input_tokens"] == 7
    assert last["gen_ai.usage.output_tokens"] == 2
    assert last["gen_ai.conversation.id"] == session["id"]
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "record"
    assert tool.attributes["gen_ai.tool.call.id"]
    assert run.context is not None
    for child in (*chats, tool):
        assert child.parent is not None and child.parent.span_id == run.context.span_id
        assert child.context is not None and child.context.trace_id == run.context.trace_id


async def test_a_failing_model_call_is_an_error_span(api: Api) -> None:
    session = await api.session((await api.agent())["id"])
    api.model.add(ModelError("provider down", retryable=False))
    accepted = await api.send(session["id"], "go")
    task = await api.wait_task(accepted["task_id"])
    assert task["status"] == "failed" and task["error"]["code"] == "model_error"
    chat = next(span for span in api.spans.get_finished_spans() if span.name.startswith("chat"))
    assert chat.attributes is not None and chat.attributes["error.type"] == "model_error"
    assert chat.status.status_code.name == "ERROR"


async def test_tasks_recovered_at_start_are_observed(store: Store, tmp_path: Path) -> None:
    task_id = ""
    async for api in make_api(store, tmp_path, run_engine=False):  # an API-only process
        session = await api.session((await api.agent())["id"])
        task_id = (await api.send(session["id"], "later"))["task_id"]
        assert (await api.client.get(f"/v1/tasks/{task_id}")).json()["status"] == "queued"
    model = ScriptedModel([reply("done at last")], name="test:scripted")
    async for api in make_api(store, tmp_path, model=model):
        assert (await api.wait_task(task_id))["status"] == "completed"
        await run_span_ended(api)
        runs = [s for s in api.spans.get_finished_spans() if s.name.startswith("invoke_agent")]
        assert len(runs) == 1 and runs[0].attributes is not None
        assert runs[0].attributes["openbuda.task.id"] == task_id


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger("openbuda")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_logs_carry_task_session_and_request_ids(api: Api, captured: io.StringIO) -> None:
    session = await api.session((await api.agent())["id"])
    api.model.add(ModelError("flaky"), reply("ok"))  # a retry the engine logs
    response = await api.client.post(
        f"/v1/sessions/{session['id']}/messages",
        json={"text": "go"},
        headers={"X-Request-ID": "req-123"},
    )
    assert response.headers["x-request-id"] == "req-123"
    accepted = response.json()
    await api.wait_task(accepted["task_id"])
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    retry = next(line for line in lines if "model call failed" in line["message"])
    assert retry["task_id"] == accepted["task_id"]
    assert retry["session_id"] == session["id"]
    assert retry["level"] == "warning" and retry["logger"] == "openbuda.engine"
    access = next(
        line
        for line in lines
        if line["logger"] == "openbuda.access" and line.get("request_id") == "req-123"
    )
    assert access["status"] == 202 and access["session_id"] == session["id"]
    assert access["route"] == "/v1/sessions/{session_id}/messages"
    assert access["key_id"].startswith("key_") and access["duration_ms"] >= 0


def test_log_formats() -> None:
    record = logging.makeLogRecord({"name": "openbuda.x", "msg": "hello %s", "args": ("you",)})
    token = bind(task_id="tsk_1")
    try:
        ContextFilter().filter(record)
    finally:
        from openbuda.api.logs import unbind

        unbind(token)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hello you" and entry["task_id"] == "tsk_1"
    assert entry["ts"].endswith("Z")
    assert TextFormatter().format(record).endswith("hello you  task_id=tsk_1")
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        handler = configure_logging(level="debug", stream=stream)
        assert isinstance(handler.formatter, JsonFormatter)  # StringIO is no terminal
        logging.getLogger("openbuda.test").debug("configured")
        assert json.loads(stream.getvalue())["message"] == "configured"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_traces_are_exported_over_otlp_when_an_endpoint_is_set() -> None:
    received: list[tuple[str, str, int]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            received.append((self.path, self.headers.get("Content-Type", ""), length))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        assert tracer_provider_from(Settings(otel_exporter_otlp_endpoint=None)) is None
        provider = tracer_provider_from(Settings(otel_exporter_otlp_endpoint=endpoint))
        assert provider is not None
        with provider.get_tracer("test").start_as_current_span("chat model"):
            pass
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    assert received and received[0][0] == "/v1/traces"
    assert received[0][1] == "application/x-protobuf" and received[0][2] > 0
