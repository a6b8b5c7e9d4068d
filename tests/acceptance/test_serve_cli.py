"""Acceptance: ``openbuda serve`` as a real subprocess, driven by the installed CLI, with a
scripted OpenAI-compatible model server (``python -m openbuda.testing.openai_server``) as
another subprocess.

- A conversation: ``agents create``, ``chat`` through a choice question answered inline, then
  ``send --wait`` to a question nobody answers, ``inbox``, ``answer``, ``tasks show`` and the
  result; human output and ``--json``.
- A crash: while a task's model call is in flight the server is SIGKILLed, restarted on the
  same data directory, and the task finishes; the ``chat`` that was following it reconnects and
  prints every event once; the task's events show the ``lease_expired`` re-queue, which happened
  at the restart (not after the 30 s lease), and the session's events are seqs 1..n.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

MODEL_KEY = "model-server-key"
BOOTSTRAP_KEY = "ob_acceptance_bootstrap_key_0123456789"
WORKER_ID = "wrk_acceptance"
LEASE_SECONDS = 30.0  # the default, stated: recovery must not wait for it
MODEL_DELAY = 8.0  # seconds the model call cut by the kill would have taken


def _openbuda() -> list[str]:
    found = shutil.which("openbuda", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "openbuda.cli.main"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy"})


def _clean_env(**values: str) -> dict[str, str]:
    """The environment without the caller's openbuda or OpenAI settings, plus ``values``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENBUDA_", "OPENAI_")) and k.lower() not in _PROXY_VARIABLES
    }
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    env.update(values)
    return env


def _wait_for(
    condition: Callable[[], bool], timeout: float, what: Callable[[], str], step: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what()}")
        time.sleep(step)


class Background:
    """A subprocess whose stdout and stderr go to files (never an unread pipe)."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.out_path = logs / f"{name}.out"
        self.err_path = logs / f"{name}.err"
        self._files: list[IO[str]] = []
        out = self._open(self.out_path)
        err = self._open(self.err_path)
        try:
            self.process = subprocess.Popen(
                list(command), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        except BaseException:
            self._close_files()
            raise

    def _open(self, path: Path) -> IO[str]:
        handle = path.open("a", encoding="utf-8")
        self._files.append(handle)
        return handle

    def _close_files(self) -> None:
        for handle in self._files:
            handle.close()
        self._files.clear()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        return f"{self.name} (exit {self.process.poll()}): ...{self.stderr[-3000:]}"

    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.running():
            self.process.kill()
        self.process.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still runs after {timeout} s: {self.describe()}")

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL if it does not end in ``timeout``; close the log files."""
        try:
            if self.running():
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            self.process.wait(timeout=10)
        finally:
            self._close_files()


@pytest.fixture
def processes() -> Iterator[list[Background]]:
    """Every background process a test starts; all stopped at the end, whatever happened."""
    started: list[Background] = []
    try:
        yield started
    finally:
        errors: list[BaseException] = []
        for process in reversed(started):
            try:
                process.stop()
            except BaseException as error:  # stop the others anyway
                errors.append(error)
        if errors:
            raise errors[0]


class Stack:
    """A model server and an ``openbuda serve`` on one data directory, restartable."""

    def __init__(self, tmp_path: Path, processes: list[Background], script: object) -> None:
        self.tmp_path = tmp_path
        self.processes = processes
        self.home = tmp_path / "home"
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        script_path = tmp_path / "script.json"
        script_path.write_text(json.dumps(script), encoding="utf-8")
        self.model = self._start(
            "model",
            [
                sys.executable,
                *("-m", "openbuda.testing.openai_server"),
                *("--script", str(script_path)),
                *("--port", "0", "--api-key", MODEL_KEY),
            ],
            _clean_env(),
        )
        _wait_for(
            lambda: "listening on" in self.model.stdout or not self.model.running(),
            30,
            self.model.describe,
        )
        found = re.search(r"listening on (\S+)", self.model.stdout)
        assert found is not None, self.model.describe()
        self.model_url = found.group(1)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.serves: list[Background] = []

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> Background:
        process = Background(name, command, env, self.logs)
        self.processes.append(process)
        return process

    def serve(self, **extra: str) -> Background:
        """Start ``openbuda serve`` and wait until it answers ``/v1/health``."""
        env = _clean_env(
            OPENBUDA_HOME=str(self.home),
            OPENBUDA_MODEL="openai:scripted",
            OPENAI_BASE_URL=self.model_url,
            OPENAI_API_KEY=MODEL_KEY,
            OPENBUDA_WORKER_ID=WORKER_ID,
            OPENBUDA_LEASE_SECONDS=str(LEASE_SECONDS),
            OPENBUDA_MODEL_RETRIES="0",  # a script mistake fails at once, not after backoff
            OPENBUDA_LOG_FORMAT="json",
            **extra,
        )
        server = self._start(
            f"serve{len(self.serves) + 1}",
            [*_openbuda(), "serve", "--port", str(self.port)],
            env,
        )
        self.serves.append(server)
        _wait_for(lambda: self._healthy(server), 60, server.describe, step=0.1)
        return server

    def _healthy(self, server: Background) -> bool:
        if not server.running():
            pytest.fail(f"openbuda serve ended: {server.describe()}")
        try:
            response = httpx.get(f"{self.url}/v1/health", timeout=2, trust_env=False)
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.json()["status"] == "ok"


class Cli:
    """The installed ``openbuda`` command, pointed at the server by ``env``."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def command(self, *args: str) -> list[str]:
        return [*_openbuda(), *args]

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*args),
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == expect, (
            f"openbuda {' '.join(args)}: exit {done.returncode}, expected {expect}\n"
            f"stdout: {done.stdout}\nstderr: {done.stderr}"
        )
        return done

    def json(self, *args: str, expect: int = 0) -> Any:
        done = self.run(*args, "--json", expect=expect)
        try:
            return json.loads(done.stdout)
        except ValueError:
            pytest.fail(f"openbuda {' '.join(args)} --json: not JSON\n{done.stdout}{done.stderr}")


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["at"])).timestamp()


def _stored_events(url: str, api_key: str, session_id: str) -> list[dict[str, Any]]:
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {api_key}"}, trust_env=False
    ) as client:
        response = client.get(f"/v1/sessions/{session_id}/events", params={"limit": 500})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["next_cursor"] is None
    return list(body["items"])


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The complete JSON lines of ``text`` (a line still being written is left out)."""
    lines = text.split("\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


# ---------------------------------------------------------------------------------------------


def test_a_conversation_with_questions_through_the_cli(
    tmp_path: Path, processes: list[Background]
) -> None:
    script = [
        {
            "tool_calls": [
                {
                    "name": "ask_user",
                    "arguments": {
                        "prompt": "Which cuisine?",
                        "kind": "choice",
                        "options": ["Thai", "Pizza", "Sushi"],
                    },
                }
            ]
        },
        {"text": "Booked a {last_tool_result} place for Friday."},
        {"tool_calls": [{"name": "ask_user", "arguments": {"prompt": "Which dessert?"}}]},
        {"text": "Added {last_tool_result} for dessert."},
    ]
    stack = Stack(tmp_path, processes, script)
    server = stack.serve()  # no bootstrap key: it makes one, prints it, saves credentials.json

    credentials_path = stack.home / "credentials.json"
    credentials = json.loads(credentials_path.read_text(encoding="utf-8"))
    assert credentials["url"] == stack.url
    assert credentials_path.stat().st_mode & 0o777 == 0o600
    assert "shown once" in server.stdout and credentials["api_key"] in server.stdout
    # the CLI finds the server and its key in $OPENBUDA_HOME/credentials.json
    cli = Cli(_clean_env(OPENBUDA_HOME=str(stack.home)))

    created = cli.run("agents", "create", "planner", "--description", "Plans team events")
    found = re.search(r"created agent planner \((agt_\w+)\)", created.stdout)
    assert found is not None, created.stdout
    agent_id = found.group(1)
    agents = cli.json("agents", "list")
    assert [(a["id"], a["name"], a["description"]) for a in agents] == [
        (agent_id, "planner", "Plans team events")
    ]

    # chat: the choice question is asked inline and answered by its number
    chat = cli.run("chat", "--agent", "planner", "-m", "Plan a team lunch", "-a", "2")
    out = chat.stdout
    found = re.search(rf"session (ses_\w+) · agent {agent_id}", out)
    assert found is not None, out
    session_id = found.group(1)
    assert "agent asks: Which cuisine?" in out
    assert "  1. Thai\n  2. Pizza\n  3. Sushi" in out
    assert "(answering '2')" in out
    assert "Booked a Pizza place for Friday." in out
    assert out.index("Which cuisine?") < out.index("Booked a Pizza")

    # send --wait: a text question nobody here answers; the task waits (exit 3); with --json
    # stdout is the task's JSON alone, the question is told on stderr
    sent = cli.run("send", "And a dessert?", "--session", session_id, "--wait", "--json", expect=3)
    assert "agent asks: Which dessert?" in sent.stderr
    waiting = json.loads(sent.stdout)
    task_id = waiting["id"]
    assert waiting["session_id"] == session_id
    assert waiting["status"] == "waiting"
    assert waiting["question"]["kind"] == "text"
    assert waiting["question"]["prompt"] == "Which dessert?"

    # the inbox lists it, in both forms
    inbox = cli.json("inbox")
    assert [(t["id"], t["question"]["prompt"]) for t in inbox] == [(task_id, "Which dessert?")]
    shown = cli.run("inbox").stdout
    assert task_id in shown and session_id in shown and "Which dessert?" in shown
    assert "openbuda answer TASK ANSWER" in shown

    answered = cli.run("answer", task_id, "Tiramisu")
    assert re.fullmatch(
        rf"answered: task {task_id} is (queued|running|completed)\n", answered.stdout
    ), answered.stdout

    task: dict[str, Any] = {}

    def completed() -> bool:
        nonlocal task
        task = cli.json("tasks", "show", task_id)
        return task["status"] not in ("queued", "running")

    _wait_for(completed, 30, lambda: f"task {task_id} to finish: {task}", step=0.2)
    assert task["status"] == "completed", task
    assert task["result"] == {"text": "Added Tiramisu for dessert.", "files": []}
    assert task["question"] is None and task["error"] is None
    human = cli.run("tasks", "show", task_id).stdout
    assert re.search(r"status\s+completed", human), human
    assert "result\nAdded Tiramisu for dessert." in human

    # a second answer is refused with one clear line, not a traceback
    again = cli.run("answer", task_id, "Cake", expect=1)
    assert "has no open question (it is completed)" in again.stderr
    assert "Traceback" not in again.stderr
    again_json = json.loads(cli.run("answer", task_id, "Cake", "--json", expect=1).stderr)
    assert again_json["error"]["code"] == "conflict"

    assert "inbox is empty" in cli.run("inbox").stdout
    conversation = cli.json("sessions", "show", session_id)
    assert conversation["status"] == "idle" and conversation["task_count"] == 2
    assert [(m["role"], m["text"]) for m in conversation["messages"]] == [
        ("user", "Plan a team lunch"),
        ("user", "Pizza"),  # answers are the user's words in the conversation
        ("assistant", "Booked a Pizza place for Friday."),
        ("user", "And a dessert?"),
        ("user", "Tiramisu"),
        ("assistant", "Added Tiramisu for dessert."),
    ]
    events = _stored_events(stack.url, credentials["api_key"], session_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize(
    "embedded",
    [
        pytest.param(True, id="embedded"),  # the default: a start re-queues every running task
        pytest.param(False, id="worker-id"),  # only what this OPENBUDA_WORKER_ID held
    ],
)
def test_a_task_survives_sigkill_of_the_server(
    tmp_path: Path, processes: list[Background], embedded: bool
) -> None:
    report = "Report for {last_tool_result} is ready."
    script = {
        "replies": [
            {"tool_calls": [{"name": "ask_user", "arguments": {"prompt": "Which city?"}}]},
            # the call after the answer is slow, and cut by the kill; the retry answers at once
            # (were the kill to come before this call, the retry would only take longer)
            {"delay": MODEL_DELAY, "text": report},
        ],
        "default": {"text": report},
    }
    stack = Stack(tmp_path, processes, script)
    extra = {"OPENBUDA_BOOTSTRAP_API_KEY": BOOTSTRAP_KEY, "OPENBUDA_EMBEDDED": str(embedded)}
    first = stack.serve(**extra)
    # the CLI is given the URL and key; its own home is empty
    (tmp_path / "cli-home").mkdir()
    cli = Cli(
        _clean_env(
            OPENBUDA_URL=stack.url,
            OPENBUDA_API_KEY=BOOTSTRAP_KEY,
            OPENBUDA_HOME=str(tmp_path / "cli-home"),
        )
    )
    agent = cli.json("agents", "create", "reporter")
    assert agent["name"] == "reporter" and agent["id"].startswith("agt_")

    # chat follows the task and answers its question; it keeps following across the crash
    chat = Background(
        "chat",
        cli.command(
            "chat", "--agent", "reporter", "-m", "Write the report", "-a", "Paris", "--json"
        ),
        cli.env,
        stack.logs,
    )
    processes.append(chat)

    def running_again() -> bool:
        statuses = [e for e in _json_lines(chat.stdout) if e["type"] == "task.status"]
        return [e["data"]["status"] for e in statuses][-2:] == ["queued", "running"] and any(
            e["data"]["status"] == "waiting" for e in statuses
        )

    _wait_for(running_again, 30, lambda: f"the answered task to run: {chat.describe()}")
    task_id = next(e["task_id"] for e in _json_lines(chat.stdout) if e["type"] == "question")
    shown = cli.json("tasks", "show", task_id)
    assert shown["status"] == "running" and shown["result"] is None, shown
    time.sleep(0.3)  # the model call is in flight (it takes MODEL_DELAY)

    assert first.running()
    killed_at = time.time()
    first.kill()
    assert first.process.returncode == -signal.SIGKILL
    assert chat.running()  # the CLI is reconnecting, not failing

    second = stack.serve(**extra)
    restarted_at = time.time()
    assert chat.wait(timeout=30) == 0, chat.describe()
    finished_at = time.time()

    # the task finished, as the CLI shows it
    task = cli.json("tasks", "show", task_id)
    assert task["status"] == "completed", task
    assert task["result"] == {"text": "Report for Paris is ready.", "files": []}
    human = cli.run("tasks", "show", task_id).stdout
    assert re.search(r"status\s+completed", human) and "Report for Paris is ready." in human

    # the restarted server re-queued it at once, long before the lease would have expired
    assert "re-queued 1 task(s) left running by an earlier process" in second.stderr
    events = _stored_events(stack.url, BOOTSTRAP_KEY, task["session_id"])
    mine = [e for e in events if e.get("task_id") == task_id]
    statuses = [
        (e["data"]["status"], e["data"].get("reason")) for e in mine if e["type"] == "task.status"
    ]
    assert statuses == [
        ("queued", None),
        ("running", None),
        ("waiting", "question"),
        ("queued", "answered"),
        ("running", None),
        ("queued", "lease_expired"),
        ("running", None),
        ("completed", None),
    ]
    requeued = next(e for e in mine if e["data"].get("reason") == "lease_expired")
    assert killed_at < _at(requeued) < restarted_at + 1
    assert _at(requeued) - killed_at < LEASE_SECONDS / 3
    assert finished_at - killed_at < MODEL_DELAY + 15
    # one model response per model call that came back; the killed one left nothing behind
    assert [e["data"]["text"] for e in mine if e["type"] == "model.response"] == [
        "",
        "Report for Paris is ready.",
    ]
    assert [e["type"] for e in mine[-3:]] == ["message", "task.result", "task.status"]

    # no event lost or duplicated: seqs 1..n, distinct ids, and the CLI printed each stored
    # event exactly once across its reconnection
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({e["id"] for e in events}) == len(events)
    printed = [e for e in _json_lines(chat.stdout) if e["seq"] is not None]
    assert [e["id"] for e in printed] == [e["id"] for e in events]
    # text deltas are ephemeral: the CLI shows those streamed while it was connected (under
    # load it may reconnect only after the retry streamed them all), so the text's tail
    streamed = "".join(
        e["data"]["text"] for e in _json_lines(chat.stdout) if e["type"] == "text.delta"
    )
    assert "Report for Paris is ready.".endswith(streamed)
