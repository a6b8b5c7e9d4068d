"""The README's Python quickstart runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openbuda.client import Client, Task
from openbuda.testing import ScriptedModel, call, reply
from tests.client.live_server import live_server

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_quickstart_runs(tmp_path: Path) -> None:
    blocks = [block for block in python_blocks() if "Runtime.start" in block]
    assert blocks, "the README has no embedded-library quickstart"
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[0])
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "agent asks: Which city?" in done.stdout
    assert "result: Booked for Paris." in done.stdout


def test_the_readme_sdk_example_runs_against_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [block] = [block for block in python_blocks() if "from openbuda.client import" in block]
    model = ScriptedModel([call("ask_user", prompt="Which city?"), reply("Booked Paris.")])
    with live_server(tmp_path / "server", model) as server:
        monkeypatch.setenv("OPENBUDA_HOME", str(server.home))
        monkeypatch.delenv("OPENBUDA_URL", raising=False)
        monkeypatch.delenv("OPENBUDA_API_KEY", raising=False)
        exec(compile(block, "README.md", "exec"), {})
        with server.client() as client:
            [agent] = client.agents.list().items
            [session] = client.sessions.list(agent.id).items
            task = client.tasks.list(session_id=session.id).items[0]
            waited = wait_until_done(client, task.id)
    assert waited.result is not None and waited.result.text == "Booked Paris."
    printed = capsys.readouterr().out
    assert "question" in printed and "Which city?" in printed
    model.assert_all_used()


def wait_until_done(client: Client, task_id: str) -> Task:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        task = client.tasks.get(task_id)
        if task.status.is_terminal:
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish")
