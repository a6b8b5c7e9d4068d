"""The blocking SDK's ``client.computer`` against a real server (uvicorn on a thread) with the
process backend: status, exec, the live exec stream, sleep/wake/restart and preview links."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openbuda.client import Client, ExecOutput, ExecResult
from openbuda.domain.errors import InvalidPath, NotFound
from openbuda.testing import ScriptedModel
from tests.client.live_server import LiveServer, free_port, live_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path, ScriptedModel(), computer_backend="process") as running:
        yield running


@pytest.fixture
def client(server: LiveServer) -> Iterator[Client]:
    with server.client() as client:
        yield client


def test_the_computer_from_the_blocking_client(client: Client) -> None:
    agent = client.agents.create("box")
    assert client.computer.status(agent.id).status == "stopped"
    assert client.computer.wake(agent.id).status == "running"
    result = client.computer.exec(agent.id, "echo hi; exit 5")
    assert isinstance(result, ExecResult) and (result.exit_code, result.stdout) == (5, "hi\n")
    assert client.computer.sleep(agent.id).status == "sleeping"
    assert client.computer.restart(agent.id).status == "running"
    with pytest.raises(InvalidPath):
        client.computer.exec(agent.id, "true", cwd="/nope")
    with pytest.raises(NotFound):
        client.computer.restart("agt_missing")


def test_exec_stream_yields_output_as_it_comes(client: Client) -> None:
    agent = client.agents.create("box")
    with client.computer.exec_stream(
        agent.id, "for i in 1 2 3; do echo line $i; sleep 0.1; done; echo done >&2"
    ) as stream:
        items = list(stream)
    outputs = [item for item in items if isinstance(item, ExecOutput)]
    assert isinstance(items[-1], ExecResult) and stream.result is items[-1]
    assert items[-1].exit_code == 0 and len(outputs) == len(items) - 1
    assert "".join(o.text for o in outputs if o.stream == "stdout") == ("line 1\nline 2\nline 3\n")
    assert [o.text for o in outputs if o.stream == "stderr"] == ["done\n"]
    assert len([o for o in outputs if o.stream == "stdout"]) == 3  # live, one line at a time


def test_a_preview_link_opens_in_a_plain_http_client(client: Client, server: LiveServer) -> None:
    agent = client.agents.create("box")
    port = free_port()
    client.computer.exec(
        agent.id,
        f"mkdir -p www && echo hello > www/index.html && cd www && "
        f"(python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &)",
    )
    for _ in range(300):
        if port in client.computer.status(agent.id).ports:
            break
        time.sleep(0.05)
    link = client.computer.preview_link(agent.id, port, expires_in_s=120)
    assert link.url.startswith(server.url)
    with httpx.Client() as browser:  # no API key
        page = browser.get(link.url)
        assert page.status_code == 200 and page.text == "hello\n"
        assert browser.get(link.url.split("?")[0] + "index.html").text == "hello\n"  # cookie
