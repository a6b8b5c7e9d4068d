"""The computer's routes through the SDK, in-process, over the process backend: status, wake,
sleep, restart, exec (JSON and SSE), the HTTP preview proxy against servers started inside the
computer, and signed preview links."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from tests.api.conftest import assert_error, sse_messages
from tests.client.live_server import API_KEY, free_port, in_process, server_settings

from openbuda.api import create_app
from openbuda.client import (
    Agent,
    AsyncClient,
    ComputerStatus,
    ExecOutput,
    ExecResult,
)
from openbuda.computer import ComputerLayout
from openbuda.domain.errors import InvalidPath, NotFound, Unavailable, ValidationFailed
from openbuda.ports import Sandbox, SandboxBackend, SandboxCapabilities, SandboxSpec
from openbuda.runtime import Runtime
from openbuda.settings import Settings
from openbuda.testing import ScriptedModel, call, reply

pytestmark = pytest.mark.anyio

BASE = "http://openbuda.test"
ECHO_SERVER = """\
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
        code = int(self.path.split("/")[2]) if self.path.startswith("/status/") else 200
        data = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("set-cookie", "app=1; Path=/")
        if self.path.startswith("/chunked"):
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for piece in (data[:10], data[10:]):
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(piece), piece))
            self.wfile.write(b"0\\r\\n\\r\\n")
            return
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


@dataclass
class World:
    client: AsyncClient
    http: httpx.AsyncClient
    """The same app without an API key (what a browser sends)."""
    runtime: Runtime
    settings: Settings
    model: ScriptedModel

    @property
    def layout(self) -> ComputerLayout:
        return ComputerLayout(self.settings.resolved_computer_dir())

    async def serve(self, agent: Agent, command: str) -> int:
        """Start ``command {port}`` in the background in the computer; the port, once open."""
        port = free_port()
        await self.client.computer.exec(agent.id, f"{command} {port} >/dev/null 2>&1 &")
        with anyio.fail_after(15):
            while port not in (await self.client.computer.status(agent.id)).ports:
                await anyio.sleep(0.05)
        return port


class BrokenBackend:
    """A backend whose computers cannot start (no bubblewrap, no disk...)."""

    @property
    def name(self) -> str:
        return "broken"

    @property
    def capabilities(self) -> SandboxCapabilities:
        return SandboxCapabilities(isolated=True, freeze=True, internet=False, disk_quota=False)

    async def connect(self, spec: SandboxSpec) -> Sandbox:
        raise OSError(f"cannot start the computer of {spec.agent_id}")

    async def aclose(self) -> None:
        return None


async def running_world(
    home: Path, sandbox: SandboxBackend | None = None, **overrides: Any
) -> AsyncIterator[World]:
    model = ScriptedModel()
    settings = server_settings(home, computer_backend="process", **overrides)
    app = create_app(
        settings, models=lambda _spec: model, announce=lambda _text: None, sandbox=sandbox
    )
    async with (
        in_process(app) as transport,
        AsyncClient(BASE, API_KEY, transport=transport) as client,
        httpx.AsyncClient(transport=transport, base_url=BASE) as http,
    ):
        yield World(client, http, app.state.openbuda.runtime, settings, model)
    model.assert_all_used()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for running in running_world(tmp_path):
        yield running


@pytest.fixture
async def agent(world: World) -> Agent:
    return await world.client.agents.create("box", settings={"sleep_timeout_s": 900})


def authorized() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


# -- status and lifecycle ---------------------------------------------------------------------


async def test_status_wake_sleep_restart(world: World, agent: Agent) -> None:
    raw = await world.http.get(f"/v1/agents/{agent.id}/computer", headers=authorized())
    assert raw.status_code == 200
    assert raw.json() == {
        "status": "stopped",
        "cpu_percent": 0.0,
        "memory_bytes": 0,
        "disk_bytes": 0,
        "file_count": 0,
        "ports": [],
        "sleep_timeout_s": 900,
    }
    computer = world.client.computer
    woken = await computer.wake(agent.id)
    assert isinstance(woken, ComputerStatus) and woken.status == "running"
    assert (await computer.sleep(agent.id)).status == "sleeping"
    assert (await computer.status(agent.id)).status == "sleeping"
    assert (await computer.wake(agent.id)).status == "running"
    await computer.exec(agent.id, "echo hello > hello.txt; echo x > $TMPDIR/t")
    restarted = await computer.restart(agent.id)
    assert restarted.status == "running" and restarted.file_count == 1
    assert (await computer.exec(agent.id, "cat hello.txt; ls $TMPDIR")).stdout == "hello\n"


async def test_another_spaces_agent_is_a_404(world: World, agent: Agent) -> None:
    created = await world.client.spaces.create("elsewhere")
    assert created.api_key.secret is not None
    headers = {"Authorization": f"Bearer {created.api_key.secret}"}
    base = f"/v1/agents/{agent.id}/computer"
    for method, path, body in (
        ("GET", base, None),
        ("POST", f"{base}/wake", None),
        ("POST", f"{base}/sleep", None),
        ("POST", f"{base}/restart", None),
        ("POST", f"{base}/exec", {"command": "id"}),
        ("POST", f"{base}/ports/8000/link", None),
        ("GET", f"{base}/ports/8000/", None),
    ):
        response = await world.http.request(method, path, json=body, headers=headers)
        assert_error(response, 404, "not_found")
    assert world.runtime.computers.running(agent.id) is None
    with pytest.raises(NotFound):
        await world.client.computer.status("agt_doesnotexist")


async def test_a_computer_that_cannot_start_is_a_503(tmp_path: Path) -> None:
    async for world in running_world(tmp_path, sandbox=BrokenBackend()):
        agent = await world.client.agents.create("box")
        with pytest.raises(Unavailable, match="cannot start"):
            await world.client.computer.exec(agent.id, "true")
        response = await world.http.post(
            f"/v1/agents/{agent.id}/computer/exec", json={"command": "true"}, headers=authorized()
        )
        assert_error(response, 503, "unavailable")
        with pytest.raises(Unavailable):
            await world.client.computer.wake(agent.id)
        assert (await world.client.computer.status(agent.id)).status == "stopped"


# -- exec -------------------------------------------------------------------------------------


async def test_exec_answers_200_whenever_the_command_ran(world: World, agent: Agent) -> None:
    computer = world.client.computer
    result = await computer.exec(agent.id, "echo out; echo err >&2; exit 7")
    assert isinstance(result, ExecResult)
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert result.limit is None and not result.timed_out and result.stdout_bytes == 4
    await computer.exec(agent.id, "mkdir sub")
    assert (await computer.exec(agent.id, "basename $PWD", cwd="sub")).stdout == "sub\n"
    slow = await computer.exec(agent.id, "sleep 20", timeout_s=0.3)
    assert slow.timed_out and slow.limit == "timeout" and slow.exit_code == 137

    raw = await world.http.post(
        f"/v1/agents/{agent.id}/computer/exec", json={"command": "exit 1"}, headers=authorized()
    )
    assert raw.status_code == 200
    assert set(raw.json()) >= {"exit_code", "stdout", "stderr", "timed_out", "duration_ms", "limit"}


async def test_exec_refuses_bad_requests(world: World, agent: Agent) -> None:
    computer = world.client.computer
    with pytest.raises(InvalidPath, match="does not exist"):
        await computer.exec(agent.id, "true", cwd="/agent/missing")
    with pytest.raises(InvalidPath):
        await computer.exec(agent.id, "true", cwd="/etc")
    with pytest.raises(ValidationFailed):
        await computer.exec(agent.id, "")
    with pytest.raises(ValidationFailed):
        await computer.exec(agent.id, "true", timeout_s=-1)
    response = await world.http.post(
        f"/v1/agents/{agent.id}/computer/exec",
        json={"command": "true", "extra": 1},
        headers=authorized(),
    )
    assert_error(response, 422, "validation_error")


async def test_exec_streams_output_then_the_result(world: World, agent: Agent) -> None:
    items: list[ExecOutput | ExecResult] = []
    async with world.client.computer.exec_stream(
        agent.id, "echo one; sleep 0.2; echo two >&2; echo three; exit 2"
    ) as stream:
        async for item in stream:
            items.append(item)
    *outputs, last = items
    assert isinstance(last, ExecResult) and last.exit_code == 2 and stream.result == last
    assert all(isinstance(item, ExecOutput) for item in outputs)
    text = {
        name: "".join(i.text for i in outputs if isinstance(i, ExecOutput) and i.stream == name)
        for name in ("stdout", "stderr")
    }
    assert text == {"stdout": "one\nthree\n", "stderr": "two\n"}
    assert last.stdout == "one\nthree\n"

    response = await world.http.post(
        f"/v1/agents/{agent.id}/computer/exec",
        json={"command": "printf 'a\\nb'"},
        headers={**authorized(), "Accept": "text/event-stream"},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    messages = [m for m in sse_messages(response.text) if "event" in m]
    *output, exit_message = messages
    assert {m["event"] for m in output} == {"output"}
    assert "".join(m["data"]["text"] for m in output) == "a\nb"
    assert {m["data"]["stream"] for m in output} == {"stdout"}
    assert exit_message["event"] == "exit" and exit_message["data"]["exit_code"] == 0
    assert all("id" not in m for m in messages)


async def test_a_streamed_exec_checks_the_request_before_streaming(
    world: World, agent: Agent
) -> None:
    response = await world.http.post(
        f"/v1/agents/{agent.id}/computer/exec",
        json={"command": "true", "cwd": "/agent/missing"},
        headers={**authorized(), "Accept": "text/event-stream"},
    )
    assert_error(response, 400, "invalid_path")

    async def drain() -> None:
        async with world.client.computer.exec_stream(agent.id, "true", cwd="nope") as stream:
            async for _item in stream:
                pass

    with pytest.raises(InvalidPath):
        await drain()


# -- previews ---------------------------------------------------------------------------------


async def echo_server(world: World, agent: Agent) -> int:
    (world.layout.agent_files(agent.id)).mkdir(parents=True, exist_ok=True)
    (world.layout.agent_files(agent.id) / "echo.py").write_text(ECHO_SERVER)
    return await world.serve(agent, "python3 echo.py")


async def test_the_preview_proxies_requests_to_a_server_in_the_computer(
    world: World, agent: Agent
) -> None:
    port = await echo_server(world, agent)
    base = f"/v1/agents/{agent.id}/computer/ports/{port}"
    response = await world.http.post(
        f"{base}/api/items%2Fx?q=1&openbuda_preview=zzz&b=2",
        content=b'{"name": "x"}',
        headers={
            **authorized(),
            "Content-Type": "application/json",
            "Cookie": "theme=dark; openbuda_preview=secret",
            "X-Custom": "yes",
        },
    )
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["method"] == "POST" and echoed["body"] == '{"name": "x"}'
    assert echoed["path"] == "/api/items%2Fx?q=1&b=2"
    headers = echoed["headers"]
    assert "authorization" not in headers  # the API key never reaches the page
    assert headers["cookie"] == "theme=dark"
    assert headers["x-custom"] == "yes" and headers["connection"] == "close"
    assert headers["host"] == f"localhost:{port}"
    assert headers["x-forwarded-prefix"] == base
    assert response.headers["set-cookie"] == "app=1; Path=/"

    missing = await world.http.get(f"{base}/status/404", headers=authorized())
    assert missing.status_code == 404 and missing.json()["path"] == "/status/404"
    chunked = await world.http.get(f"{base}/chunked", headers=authorized())
    assert chunked.status_code == 200 and chunked.json()["path"] == "/chunked"
    head = await world.http.head(f"{base}/", headers=authorized())
    assert head.status_code == 200 and head.content == b""

    root = await world.http.get(f"{base}?x=1", headers=authorized())
    assert root.status_code == 307 and root.headers["location"] == f"{base}/?x=1"


async def test_a_static_site_through_a_signed_link(world: World, agent: Agent) -> None:
    site = world.layout.agent_files(agent.id) / "site"
    site.mkdir(parents=True)
    (site / "index.html").write_text('<link rel="stylesheet" href="style.css"><h1>Hi</h1>')
    (site / "style.css").write_text("h1 { color: red }")
    port = await world.serve(agent, "cd site && exec python3 -m http.server --bind 127.0.0.1")

    link = await world.client.computer.preview_link(agent.id, port)
    assert link.expires_at > datetime.now(UTC)
    url = urlsplit(link.url)
    prefix = f"/v1/agents/{agent.id}/computer/ports/{port}"
    assert f"{url.scheme}://{url.netloc}" == BASE and url.path == f"{prefix}/"
    page = await world.http.get(f"{url.path}?{url.query}")  # no API key: the link opens it
    assert page.status_code == 200 and "<h1>Hi</h1>" in page.text
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("openbuda_preview=") and f"Path={prefix}/;" in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    token = cookie.split(";", 1)[0].split("=", 1)[1]

    asset = await world.http.get(f"{prefix}/style.css")  # the jar sends it, as a browser does
    assert asset.status_code == 200 and asset.text == "h1 { color: red }"
    assert "set-cookie" not in asset.headers
    assert world.http.cookies.get("openbuda_preview") == token

    world.http.cookies.clear()
    anonymous = await world.http.get(f"{prefix}/style.css")
    assert_error(anonymous, 401, "unauthorized")
    again = await world.http.get(
        f"{prefix}/style.css", headers={"Cookie": f"openbuda_preview={token}"}
    )
    assert again.status_code == 200
    world.http.cookies.clear()
    elsewhere = await world.http.get(
        f"/v1/agents/{agent.id}/computer/ports/{port + 1}/",
        headers={"Cookie": f"openbuda_preview={token}"},
    )
    assert_error(elsewhere, 401, "unauthorized")


async def test_signed_links_are_checked(world: World, agent: Agent) -> None:
    port = await echo_server(world, agent)
    link = await world.client.computer.preview_link(agent.id, port, expires_in_s=60)
    token = urlsplit(link.url).query.split("=", 1)[1]
    prefix = f"/v1/agents/{agent.id}/computer/ports"
    ok = await world.http.get(f"{prefix}/{port}/x", params={"openbuda_preview": token})
    assert ok.status_code == 200 and ok.json()["path"] == "/x"
    world.http.cookies.clear()  # what follows is checked on the query's token alone

    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    other_port = await world.http.get(f"{prefix}/{port + 1}/", params={"openbuda_preview": token})
    assert_error(other_port, 401, "unauthorized")
    bad = await world.http.get(f"{prefix}/{port}/", params={"openbuda_preview": tampered})
    assert_error(bad, 401, "unauthorized")
    by_cookie = await world.http.get(
        f"{prefix}/{port}/", headers={"Cookie": f"openbuda_preview={tampered}"}
    )
    assert_error(by_cookie, 401, "unauthorized")
    other = await world.client.agents.create("other")
    elsewhere = await world.http.get(
        f"/v1/agents/{other.id}/computer/ports/{port}/", params={"openbuda_preview": token}
    )
    assert_error(elsewhere, 401, "unauthorized")

    space_id = token.split(".", 1)[0]
    past = int(datetime.now(UTC).timestamp()) - 5
    expired = await world.runtime.computer._link(space_id, agent.id, port, past)
    answer = await world.http.get(f"{prefix}/{port}/", params={"openbuda_preview": expired.token})
    error = assert_error(answer, 401, "unauthorized")
    assert "expired" in error["message"]

    wrong_key = await world.http.get(f"{prefix}/{port}/", headers={"Authorization": "Bearer nope"})
    assert_error(wrong_key, 401, "unauthorized")
    with pytest.raises(ValidationFailed):
        await world.client.computer.preview_link(agent.id, port, expires_in_s=24 * 3600 + 1)
    too_high = await world.http.post(f"{prefix}/70000/link", headers=authorized())
    assert_error(too_high, 422, "validation_error")


async def test_nothing_listening_is_a_502(world: World, agent: Agent) -> None:
    port = free_port()
    response = await world.http.get(
        f"/v1/agents/{agent.id}/computer/ports/{port}/", headers=authorized()
    )
    error = assert_error(response, 502, "bad_gateway")
    assert error["details"] == {"port": port}


async def test_openapi_documents_the_computer_routes(world: World) -> None:
    document = json.loads((await world.http.get("/v1/openapi.json")).text)
    paths = document["paths"]
    for path in (
        "/v1/agents/{agent_id}/computer",
        "/v1/agents/{agent_id}/computer/wake",
        "/v1/agents/{agent_id}/computer/sleep",
        "/v1/agents/{agent_id}/computer/restart",
        "/v1/agents/{agent_id}/computer/exec",
        "/v1/agents/{agent_id}/computer/ports/{port}/link",
    ):
        assert path in paths, path
    streamed = paths["/v1/agents/{agent_id}/computer/exec"]["post"]["responses"]["200"]
    assert set(streamed["content"]) == {"application/json", "text/event-stream"}


async def test_a_quiet_streamed_exec_sends_heartbeats(tmp_path: Path) -> None:
    async for world in running_world(tmp_path, sse_heartbeat_seconds=0.1):
        agent = await world.client.agents.create("box")
        response = await world.http.post(
            f"/v1/agents/{agent.id}/computer/exec",
            json={"command": "sleep 0.6; echo late"},
            headers={**authorized(), "Accept": "text/event-stream"},
        )
        messages = sse_messages(response.text)
        assert sum(1 for m in messages if "comment" in m) >= 3
        assert [m["event"] for m in messages if "event" in m] == ["output", "exit"]


async def test_the_agent_and_its_members_share_the_computer(world: World, agent: Agent) -> None:
    world.model.add(
        call("write_file", path="notes.md", content="from the agent"),
        call("shell", command="echo $((6 * 7))"),
        reply("Written."),
    )
    session = await world.client.sessions.create(agent.id)
    accepted = await world.client.sessions.send(session.id, "write a note")
    async with world.client.sessions.stream(
        session.id, after=session.last_seq, until_idle=True
    ) as stream:
        events = [event async for event in stream]
    task = await world.client.tasks.get(accepted.task_id)
    assert task.result is not None and task.result.files == ["/agent/notes.md"]
    outputs = [e.data for e in events if e.type == "tool.output"]
    assert outputs == [{"call_id": "call_2", "stream": "stdout", "text": "42\n"}]
    results = [e.data for e in events if e.type == "tool.result"]
    assert results[1]["output"] == "exit code 0\n--- stdout ---\n42"
    assert (await world.client.computer.exec(agent.id, "cat notes.md")).stdout == "from the agent"
