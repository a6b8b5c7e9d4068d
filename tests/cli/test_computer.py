"""``openbuda computer status|exec|sleep|wake|restart`` against a real server (process
backend), through typer's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbuda.testing import ScriptedModel
from tests.cli.test_cli import as_json, ok, run
from tests.client.live_server import LiveServer, live_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path / "server", ScriptedModel(), computer_backend="process") as running:
        yield running


@pytest.fixture
def agent_id(server: LiveServer) -> str:
    created = as_json(run(server, "agents", "create", "box", "--json"))
    return str(created["id"])


def test_exec_prints_live_output_and_exits_with_the_commands_code(
    server: LiveServer, agent_id: str
) -> None:
    result = run(server, "computer", "exec", "box", "--", "echo out; echo err >&2; exit 3")
    assert result.exit_code == 3
    assert result.stdout == "out\n" and result.stderr == "err\n"

    done = ok(run(server, "computer", "exec", agent_id, "--", "mkdir", "-p", "work", "&&", "pwd"))
    assert done.stdout.strip().endswith("/agent")
    inside = ok(run(server, "computer", "exec", "box", "--cwd", "work", "--", "basename $PWD"))
    assert inside.stdout == "work\n"

    slow = run(server, "computer", "exec", "box", "--timeout", "0.3", "--", "sleep 20")
    assert slow.exit_code == 137 and "timed out" in slow.stderr

    as_data = run(server, "computer", "exec", "box", "--json", "--", "echo hi; exit 4")
    assert as_data.exit_code == 4
    assert json.loads(as_data.stdout)["stdout"] == "hi\n"


def test_exec_errors_are_one_clear_line(server: LiveServer, agent_id: str) -> None:
    missing = run(server, "computer", "exec", "box", "--cwd", "/agent/nope", "--", "true")
    assert missing.exit_code == 1
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    unknown = run(server, "computer", "status", "nobody")
    assert unknown.exit_code == 1 and "no agent has the id or name 'nobody'" in unknown.stderr


def test_status_sleep_wake_restart(server: LiveServer, agent_id: str) -> None:
    stopped = ok(run(server, "computer", "status", "box"))
    assert "stopped" in stopped.stdout and "1800 s idle" in stopped.stdout
    assert "is running" in ok(run(server, "computer", "wake", "box")).stdout
    assert "is sleeping" in ok(run(server, "computer", "sleep", "box")).stdout
    assert as_json(run(server, "computer", "status", agent_id, "--json"))["status"] == "sleeping"
    ok(run(server, "computer", "exec", "box", "--", "echo x > file.txt"))
    restarted = as_json(run(server, "computer", "restart", "box", "--json"))
    assert restarted["status"] == "running" and restarted["file_count"] == 1
    shown = ok(run(server, "computer", "status", "box"))
    assert "running" in shown.stdout and "1 files" in shown.stdout
