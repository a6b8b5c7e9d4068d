"""``openbuda status``, ``openbuda worker`` and ``openbuda serve --no-workers``.

- ``status`` against a real store (SQLite and PostgreSQL) holding registered processes and
  queued, running and lease-expired tasks shows them, as tables and as ``--json``; a missing
  database or one behind the migrations is one clear line, and nothing is migrated.
- ``worker`` refuses SQLite before touching it.
- ``worker`` as a real subprocess (``python -m openbuda``) on PostgreSQL with a scripted
  OpenAI-compatible model: it registers, runs a queued task, and on SIGTERM puts the task it
  is running back to the queue and unregisters.
- ``serve --no-workers`` as a real subprocess: the API accepts a message but nothing runs it
  until a worker starts against the same database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from typer.testing import CliRunner, Result

from openbuda.cli.main import app
from openbuda.client import Client
from openbuda.domain.principal import Principal
from openbuda.domain.records import Task
from openbuda.domain.states import TaskStatus
from openbuda.ports import ProcessInfo, ReadEvents, Store
from openbuda.runtime import Runtime
from openbuda.stores import SqlStore, open_store
from openbuda.stores.migrate import upgrade_connection
from openbuda.testing import FakeClock
from openbuda.testing.openai_server import OpenAIServer, Script
from tests.acceptance.test_serve_cli import Background, _clean_env, _free_port, _wait_for
from tests.conftest import run_in_thread
from tests.harness import engine_settings, make_principal

MODEL_KEY = "model-server-key"
BOOTSTRAP_KEY = "ob_ops_bootstrap_key_0123456789abcdef"
LIVE, STALE = "wrk_status_live", "wrk_status_stale"


def invoke(*args: str, env_embedded: str | None = None) -> Result:
    """``openbuda ARGS`` in this process, without the caller's ``OPENBUDA_*`` settings."""
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith("OPENBUDA_")}
    env["COLUMNS"] = "200"
    env["OPENBUDA_EMBEDDED"] = env_embedded
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def _revisions(url: str, revision: str) -> None:
    """Migrate the database at ``url`` to ``revision`` only (an older openbuda's schema)."""

    async def run() -> None:
        store = open_store(url)
        try:
            async with store._connect(write=True) as runner:
                await runner.run_sync(lambda connection: upgrade_connection(connection, revision))
        finally:
            await store.close()

    run_in_thread(run)


# -- status ------------------------------------------------------------------------------------


@dataclass
class Seeded:
    space_id: str
    running_expired: str
    running_live: str
    queued: Task


async def _forget_processes(store: Store) -> None:
    """Unregister what earlier tests left in a shared database (it is emptied of tasks only)."""
    now = datetime.now(UTC)
    async with store.read() as tx:
        left = (await tx.cluster_status(now)).processes
    async with store.write() as tx:
        for process in left:
            await tx.release_computers(process.id, None)
            await tx.remove_process(process.id)


async def _seed(url: str, home: Path) -> Seeded:
    """Two processes (one alive, one whose heartbeat stopped an hour ago) and one space with a
    task each of them holds and one still queued. The stale process claimed its task an hour
    ago, so that task's lease ran out long since."""
    now = datetime.now(UTC)
    hour_ago = now - timedelta(hours=1)
    store = open_store(url)
    try:
        await _forget_processes(store)
        principal = await make_principal(store)
        settings = engine_settings(home, lease_seconds=30.0)
        stale = Runtime.build(settings, store, clock=FakeClock(hour_ago), worker_id=STALE)
        live = Runtime.build(settings, store, worker_id=LIVE)
        first = await live.agents.create(principal, name="first")
        second = await live.agents.create(principal, name="second")

        session = await stale.sessions.create(principal, first.id)
        expired = await stale.sessions.send(principal, session.id, "an hour ago")
        assert [t.id for t in await stale.organizer.claim(1)] == [expired.task_id]

        session = await live.sessions.create(principal, second.id)
        running = await live.sessions.send(principal, session.id, "now")
        session = await live.sessions.create(principal, second.id)
        queued = await live.sessions.send(principal, session.id, "later")
        # the oldest queued task is claimed first
        assert [t.id for t in await live.organizer.claim(1)] == [running.task_id]

        async with store.write() as tx:
            await tx.register_process(
                ProcessInfo(
                    LIVE, "worker", "host-a", 4242, "1.2.3", now - timedelta(minutes=5), now
                )
            )
            await tx.register_process(
                ProcessInfo(STALE, "api+worker", "host-b", 99, "1.2.2", hour_ago, hour_ago)
            )
        async with store.read() as tx:
            task = await tx.get_task(principal.space_id, queued.task_id)
        assert task is not None and task.status is TaskStatus.QUEUED
        return Seeded(principal.space_id, expired.task_id, running.task_id, task)
    finally:
        await store.close()


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def test_status_shows_processes_queues_and_expired_leases(store_url: str, tmp_path: Path) -> None:
    seeded = run_in_thread(lambda: _seed(store_url, tmp_path / "home"))

    document = json.loads(invoke("status", "--json", "--database-url", store_url).stdout)

    assert list(document) == [
        "now",
        "database",
        "lease_seconds",
        "processes",
        "spaces",
        "expired_leases",
        "totals",
    ]
    processes = {p["id"]: p for p in document["processes"]}
    assert set(processes) == {LIVE, STALE}
    assert [p["id"] for p in document["processes"]] == [LIVE, STALE]  # most recently seen first
    live, stale = processes[LIVE], processes[STALE]
    assert (live["kind"], live["host"], live["pid"], live["version"]) == (
        "worker",
        "host-a",
        4242,
        "1.2.3",
    )
    assert live["alive"] is True and live["seen_seconds_ago"] < 30
    assert (live["running"], live["computers"]) == (1, 1)
    assert stale["kind"] == "api+worker"
    assert stale["alive"] is False and stale["seen_seconds_ago"] >= 3600
    # it still holds its task (the reaper has not run), but its computer's lease ran out
    assert (stale["running"], stale["computers"]) == (1, 0)
    assert stale["seen_at"].endswith("Z") and _parse(stale["seen_at"]) < _parse(live["seen_at"])

    [space] = document["spaces"]
    assert space["space_id"] == seeded.space_id
    assert (space["queued"], space["running"], space["waiting"]) == (1, 2, 0)
    assert _parse(space["oldest_queued_at"]) == seeded.queued.created_at
    assert space["oldest_queued_seconds"] >= 0
    assert document["expired_leases"] == 1
    assert document["totals"] == {"processes_alive": 1, "queued": 1, "running": 2, "waiting": 0}
    assert "***" in document["database"] or "@" not in store_url

    text = invoke("status", "--database-url", store_url)
    assert text.exit_code == 0, text.stderr
    out = text.stdout
    assert "1 alive of 2 registered" in out
    assert "1 queued, 2 running, 0 waiting" in out
    assert re.search(r"expired leases\s+1 \(the reaper re-queues them\)", out), out
    live_row = next(line for line in out.splitlines() if LIVE in line)
    assert re.search(
        r"worker\s+host-a\s+4242\s+1\.2\.3\s+.*alive \(\d+ s ago\)\s+1\s+1\s*$", live_row
    )
    stale_row = next(line for line in out.splitlines() if STALE in line)
    assert re.search(r"api\+worker\s+host-b\s+99\s+.*gone \(\d+ min ago\)\s+1\s+0\s*$", stale_row)
    space_row = next(line for line in out.splitlines() if seeded.space_id in line)
    assert re.search(r"\s1\s+2\s+0\s+\d+ s ago\s*$", space_row), space_row


def test_status_of_an_empty_deployment(store_url: str, tmp_path: Path) -> None:
    async def empty() -> None:
        store = open_store(store_url)
        try:
            await _forget_processes(store)
        finally:
            await store.close()

    run_in_thread(empty)
    document = json.loads(invoke("status", "--json", "--database-url", store_url).stdout)
    assert (document["processes"], document["spaces"], document["expired_leases"]) == ([], [], 0)
    out = invoke("status", "--database-url", store_url).stdout
    assert "no processes registered" in out and "no task queued, running or waiting" in out


def test_status_without_a_database_creates_none(tmp_path: Path) -> None:
    result = invoke("status", "--home", str(tmp_path))
    assert result.exit_code == 1
    assert "no database at" in result.stderr and "openbuda migrate" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_of_an_old_schema_says_migrate_and_migrates_nothing(
    fresh_database_url: str,
) -> None:
    _revisions(fresh_database_url, "0002")
    for args in ((), ("--json",)):
        result = invoke("status", *args, "--database-url", fresh_database_url)
        assert result.exit_code == 1, result.stdout
        assert "lacks 1 migration(s) (0003): run `openbuda migrate`" in result.stderr
        assert "Traceback" not in result.stderr

    async def current() -> str | None:
        store = open_store(fresh_database_url)
        try:
            async with store._connect(write=False) as runner:
                return await runner.run_sync(
                    lambda c: MigrationContext.configure(c).get_current_revision()
                )
        finally:
            await store.close()

    assert run_in_thread(current) == "0002"


# -- worker ------------------------------------------------------------------------------------


def test_worker_refuses_sqlite_before_opening_it(tmp_path: Path) -> None:
    result = invoke("worker", "--home", str(tmp_path))
    assert result.exit_code == 2
    assert "openbuda worker needs PostgreSQL" in result.stderr
    assert "sqlite+aiosqlite:///" in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert "SQLite is refused" in invoke("worker", "--help").stdout


def test_worker_refuses_to_be_embedded() -> None:
    """An embedded process re-queues every running task at start: a worker never may."""
    result = invoke(
        "worker", "--database-url", "postgresql://nobody@127.0.0.1:1/none", env_embedded="true"
    )
    assert result.exit_code == 2
    assert "OPENBUDA_EMBEDDED=true says this process alone owns the database" in result.stderr


def test_status_of_a_newer_schema_says_which_openbuda(fresh_database_url: str) -> None:
    _revisions(fresh_database_url, "head")

    async def stamp() -> None:
        store = open_store(fresh_database_url)
        try:
            async with store._connect(write=True) as runner:
                await runner.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        finally:
            await store.close()

    run_in_thread(stamp)
    result = invoke("status", "--database-url", fresh_database_url)
    assert result.exit_code == 1
    assert "at revision '9999', newer than this openbuda knows" in result.stderr


@pytest.fixture
def processes() -> Iterator[list[Background]]:
    started: list[Background] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture
def model_server() -> Iterator[OpenAIServer]:
    """Answers ``done: <message>`` at once, and a message containing "slow" after 60 s (that
    call is in flight when a test stops its worker)."""
    script: Any = {
        "rules": [{"when": {"user_contains": "slow"}, "delay": 60, "text": "too late"}],
        "default": {"text": "done: {last_user}"},
    }
    with OpenAIServer(Script.from_json(script), api_key=MODEL_KEY) as server:
        yield server


def _engine_env(home: Path, model: OpenAIServer, **values: str) -> dict[str, str]:
    return _clean_env(
        OPENBUDA_HOME=str(home),
        OPENBUDA_MODEL="openai:scripted",
        OPENAI_BASE_URL=model.base_url,
        OPENAI_API_KEY=MODEL_KEY,
        OPENBUDA_MODEL_RETRIES="0",
        OPENBUDA_POLL_SECONDS="0.1",
        OPENBUDA_HEARTBEAT_SECONDS="0.5",
        OPENBUDA_LOG_FORMAT="json",
        OPENBUDA_COMPUTER_BACKEND="process",  # no tool runs: never probe for bubblewrap
        OPENBUDA_SECRET_KEY="ops-test-secret-key-0123456789",
        **values,
    )


def _python_m_openbuda(*args: str) -> list[str]:
    return [sys.executable, "-m", "openbuda", *args]


def _start_worker(
    processes: list[Background], logs: Path, env: dict[str, str], url: str, worker_id: str
) -> Background:
    worker = Background(
        worker_id,
        _python_m_openbuda(
            "worker", "--worker-id", worker_id, "--concurrency", "3", "--database-url", url
        ),
        env,
        logs,
    )
    processes.append(worker)
    _wait_for(lambda: " ready: " in worker.stdout or not worker.running(), 60, worker.describe)
    assert worker.running(), worker.describe()
    return worker


def _status(url: str) -> dict[str, Any]:
    done = subprocess.run(
        _python_m_openbuda("status", "--json", "--database-url", url),
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


@dataclass
class Queued:
    store: SqlStore
    runtime: Runtime
    principal: Principal
    session_id: str

    @property
    def space_id(self) -> str:
        return self.principal.space_id

    async def send(self, text: str) -> str:
        """Queue a message of the session; its task's id."""
        accepted = await self.runtime.sessions.send(self.principal, self.session_id, text)
        return accepted.task_id


@pytest.fixture
async def queue(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Queued]:
    """A migrated database, its first space and one agent's session, and a way to queue its
    messages without any engine (``Runtime.build`` starts nothing)."""
    store = open_store(fresh_database_url)
    try:
        await store.migrate()
        principal = await make_principal(store)
        runtime = Runtime.build(engine_settings(tmp_path / "test-home"), store)
        agent = await runtime.agents.create(principal, name="helper")  # the worker's model
        session = await runtime.sessions.create(principal, agent.id)
        yield Queued(store, runtime, principal, session.id)
    finally:
        await store.close()


async def _task(queued: Queued, task_id: str) -> Task:
    async with queued.store.read() as tx:
        task = await tx.get_task(queued.space_id, task_id)
    assert task is not None
    return task


async def _until(queued: Queued, task_id: str, *statuses: TaskStatus) -> Task:
    with anyio.fail_after(60):
        while (task := await _task(queued, task_id)).status not in statuses:
            await anyio.sleep(0.05)
    return task


@pytest.mark.anyio
@pytest.mark.postgres
@pytest.mark.parametrize("fresh_database_url", ["postgres"], indirect=True)
async def test_worker_runs_tasks_and_gives_them_back_on_sigterm(
    queue: Queued,
    fresh_database_url: str,
    model_server: OpenAIServer,
    processes: list[Background],
    tmp_path: Path,
) -> None:
    url = fresh_database_url
    logs = tmp_path / "logs"
    logs.mkdir()
    first = await queue.send("hello")  # queued before any worker runs

    env = _engine_env(tmp_path / "worker", model_server)
    worker = _start_worker(processes, logs, env, url, "wrk_one")
    ready = worker.stdout
    assert "worker wrk_one ready: postgresql+asyncpg://***@" in ready, ready
    assert "up to 3 task(s) at once" in ready

    done = await _until(queue, first, TaskStatus.COMPLETED, TaskStatus.FAILED)
    assert done.status is TaskStatus.COMPLETED, done
    assert done.result is not None and done.result.text == "done: hello"

    slow = await queue.send("something slow")
    await _until(queue, slow, TaskStatus.RUNNING)
    with anyio.fail_after(30):
        while not any("slow" in json.dumps(b) for b in model_server.chat_requests):
            await anyio.sleep(0.05)
    status = await anyio.to_thread.run_sync(lambda: _status(url))
    [process] = status["processes"]
    assert (process["id"], process["kind"], process["alive"]) == ("wrk_one", "worker", True)
    assert process["pid"] == worker.process.pid and process["running"] == 1
    assert status["totals"]["running"] == 1

    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.describe()
    assert "SIGTERM: stopping; 1 running task(s) go back to the queue" in worker.stderr

    task = await _task(queue, slow)
    assert task.status is TaskStatus.QUEUED and task.lease_owner is None, task
    async with queue.store.read() as tx:
        events = await tx.read_events(ReadEvents(queue.space_id, queue.session_id, task_id=task.id))
    reasons = [(e.data["status"], e.data.get("reason")) for e in events if e.type == "task.status"]
    assert reasons == [("queued", None), ("running", None), ("queued", "lease_expired")]
    after = await anyio.to_thread.run_sync(lambda: _status(url))
    assert after["processes"] == [] and after["totals"]["running"] == 0
    assert after["totals"]["queued"] == 1 and after["expired_leases"] == 0


@pytest.mark.postgres
@pytest.mark.parametrize("fresh_database_url", ["postgres"], indirect=True)
def test_serve_no_workers_leaves_tasks_to_a_worker(
    fresh_database_url: str,
    model_server: OpenAIServer,
    processes: list[Background],
    tmp_path: Path,
) -> None:
    url = fresh_database_url
    logs = tmp_path / "logs"
    logs.mkdir()
    port = _free_port()
    api = Background(
        "api",
        _python_m_openbuda("serve", "--no-workers", "--port", str(port), "--database-url", url),
        _engine_env(tmp_path / "api", model_server, OPENBUDA_BOOTSTRAP_API_KEY=BOOTSTRAP_KEY),
        logs,
    )
    processes.append(api)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert api.running(), api.describe()
        try:
            return httpx.get(f"{base}/v1/health", timeout=2, trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    _wait_for(healthy, 60, api.describe, step=0.1)

    with Client(base, BOOTSTRAP_KEY) as client:
        agent = client.agents.create("helper")
        session = client.sessions.create(agent.id)
        sent = client.sessions.send(session.id, "hello")
        assert client.tasks.get(sent.task_id).status is TaskStatus.QUEUED

        status = _status(url)
        assert [(p["kind"], p["running"]) for p in status["processes"]] == [("api", 0)]
        [space] = status["spaces"]
        assert (space["queued"], space["running"]) == (1, 0)
        assert client.tasks.get(sent.task_id).status is TaskStatus.QUEUED
        assert model_server.chat_requests == []

        worker = _start_worker(
            processes, logs, _engine_env(tmp_path / "worker", model_server), url, "wrk_two"
        )
        _wait_for(
            lambda: client.tasks.get(sent.task_id).status.is_terminal,
            60,
            lambda: f"the task to finish: {worker.describe()}",
            step=0.1,
        )
        task = client.tasks.get(sent.task_id)
        assert task.status is TaskStatus.COMPLETED and task.result is not None
        assert task.result.text == "done: hello"

    kinds = sorted((p["kind"], p["alive"]) for p in _status(url)["processes"])
    assert kinds == [("api", True), ("worker", True)]


def test_serve_no_workers_on_sqlite_warns_and_registers_as_api(
    model_server: OpenAIServer, processes: list[Background], tmp_path: Path
) -> None:
    """Nothing would ever run the tasks of an API-only server on SQLite (no worker may join
    it): it says so, and serves anyway (to look at the data, say)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    home = tmp_path / "home"
    port = _free_port()
    api = Background(
        "api",
        _python_m_openbuda("serve", "--port", str(port)),
        _engine_env(
            home, model_server, OPENBUDA_BOOTSTRAP_API_KEY=BOOTSTRAP_KEY, OPENBUDA_RUN_WORKERS="0"
        ),
        logs,
    )
    processes.append(api)
    _wait_for(lambda: "Application startup complete" in api.stderr, 60, api.describe)
    assert "--no-workers on SQLite: no process will run tasks here" in api.stderr

    status = json.loads(invoke("status", "--json", "--home", str(home)).stdout)
    [process] = status["processes"]
    assert (process["kind"], process["pid"], process["alive"]) == ("api", api.process.pid, True)


def test_an_unreachable_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    url = f"postgresql://openbuda:secret@127.0.0.1:{_free_port()}/nowhere"  # nothing listens
    done = subprocess.run(
        _python_m_openbuda("status", "--database-url", url),
        env=_clean_env(OPENBUDA_HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "error: cannot read postgresql+asyncpg://***@127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stdout + done.stderr


def test_sigterm_stops_a_worker_still_waiting_for_its_database(
    processes: list[Background], tmp_path: Path
) -> None:
    """A worker started before its database is up waits for it; a stop request meanwhile ends
    it at once and cleanly (systemd stopping a unit that never got going)."""
    url = f"postgresql://openbuda:secret@127.0.0.1:{_free_port()}/nowhere"  # nothing listens
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = Background(
        "worker",
        _python_m_openbuda("worker", "--database-url", url),
        _clean_env(OPENBUDA_HOME=str(tmp_path / "home"), OPENBUDA_LOG_FORMAT="json"),
        logs,
    )
    processes.append(worker)
    _wait_for(lambda: "starting against" in worker.stderr, 60, worker.describe)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.describe()
    assert "SIGTERM: stopping; 0 running task(s) go back to the queue" in worker.stderr
    assert "Traceback" not in worker.stderr and "secret" not in worker.stderr
    assert " ready: " not in worker.stdout
