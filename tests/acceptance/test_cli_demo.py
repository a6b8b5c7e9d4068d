"""The installed CLI runs a conversation against an OpenAI-compatible server: a question is
asked, answered from the command line, and the task completes with the model's answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from openbuda.testing.openai_server import OpenAIServer


def _openbuda() -> list[str]:
    found = shutil.which("openbuda", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "openbuda.cli.main"]


def _run(args: list[str], home: Path, base_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OPENBUDA_HOME": str(home),
        "OPENBUDA_MODEL": "openai:scripted",
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "test-key",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [*_openbuda(), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_demo_asks_a_question_and_finishes_with_the_answer(tmp_path: Path, as_json: bool) -> None:
    script = [
        {"tool_calls": [{"name": "ask_user", "arguments": {"prompt": "Which cuisine?"}}]},
        {"text": "Booked a {last_user} place for Friday."},
    ]
    with OpenAIServer(script, api_key="test-key") as server:
        done = _run(
            ["demo", "-m", "Plan a team lunch", "-a", "Thai", *(["--json"] if as_json else [])],
            tmp_path,
            server.base_url,
        )
        requests = server.chat_requests
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Which cuisine?" in done.stdout
    assert "Booked a" in done.stdout
    assert len(requests) == 2
    last_messages = requests[1]["messages"]
    assert last_messages[-1]["role"] == "tool" and last_messages[-1]["content"] == "Thai"
    credentials = json.loads((tmp_path / "credentials.json").read_text())
    assert credentials["api_key"].startswith("ob_")
    assert (tmp_path / "credentials.json").stat().st_mode & 0o777 == 0o600

    # a second run reuses the data directory, its key and its agent
    with OpenAIServer([{"text": "Hello again."}], api_key="test-key") as server:
        again = _run(["demo", "-m", "Hi"], tmp_path, server.base_url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Hello again." in again.stdout


def test_demo_without_an_answer_says_the_task_waits(tmp_path: Path) -> None:
    script = [{"tool_calls": [{"name": "ask_user", "arguments": {"prompt": "Which day?"}}]}]
    with OpenAIServer(script, api_key="test-key") as server:
        done = _run(["demo", "-m", "Plan"], tmp_path, server.base_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Which day?" in done.stdout
    assert "waits for an answer" in done.stdout


def test_demo_reports_a_failed_model_call(tmp_path: Path) -> None:
    script = [{"status": 401, "error": {"message": "bad key", "type": "auth"}}]
    with OpenAIServer(script, api_key="test-key") as server:
        done = _run(["demo", "-m", "Hi"], tmp_path, server.base_url)
    assert done.returncode == 1
    assert "task failed (model_error)" in done.stdout
    assert "bad key" in done.stdout
