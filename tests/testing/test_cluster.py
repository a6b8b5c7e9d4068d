"""The deployment harness: a PostgreSQL server of its own, and process groups."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # pyright: ignore[reportMissingTypeStubs]
import httpx
import pytest

from openbuda.testing.cluster import (
    OpenbudaProcess,
    PgCluster,
    ProcessExited,
    ProcessGroup,
    child_environment,
    free_port,
    health_probe,
    log_probe,
)

unavailable = PgCluster.unavailable_reason()
needs_postgres = pytest.mark.skipif(unavailable is not None, reason=unavailable or "")

BROKEN = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
"""What asyncpg raises on a connection the server cut (which one depends on timing)."""
READY_THEN_SLEEP = "import time; print('rea' + 'dy', flush=True); time.sleep(600)"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    if unavailable is not None:
        pytest.skip(unavailable)
    with PgCluster.start() as started:
        yield started


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def _wait_gone(pid: int) -> bool:
    """Whether ``pid`` disappears (its new parent reaps it) within a generous bound."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return False


# -- PostgreSQL --------------------------------------------------------------------------------


@needs_postgres
def test_cluster_serves_sql_on_its_own_port(cluster: PgCluster) -> None:
    assert cluster.url == f"postgresql://postgres@127.0.0.1:{cluster.port}/openbuda"
    assert cluster.psql("SELECT current_database(), 1 + 1") == [["openbuda", "2"]]
    assert cluster.psql("SELECT NULL::text, 'a'") == [["", "a"]]
    assert cluster.directory is not None
    assert (cluster.directory / "data" / "PG_VERSION").exists()
    if os.geteuid() == 0:  # run as the postgres user, never as root
        assert cluster.psql("SELECT current_setting('data_directory') IS NOT NULL")
        owner = (cluster.directory / "data").stat().st_uid
        assert owner != 0


@needs_postgres
@pytest.mark.anyio
async def test_terminate_cuts_only_matching_connections(cluster: PgCluster) -> None:
    def connect(name: str) -> Any:
        return asyncpg.connect(cluster.url, server_settings={"application_name": name})

    victim_a = await connect("openbuda worker w1")
    victim_b = await connect("openbuda bus w1-xyz")
    bystander = await connect("openbuda worker w10")
    try:
        assert cluster.connections("openbuda %") == [
            "openbuda bus w1-xyz",
            "openbuda worker w1",
            "openbuda worker w10",
        ]
        assert cluster.terminate("openbuda worker w1") == 1
        assert cluster.terminate("openbuda bus w1%") == 1
        assert cluster.terminate("nothing%") == 0
        for victim in (victim_a, victim_b):
            with pytest.raises(BROKEN):
                await victim.fetchval("SELECT 1")
        assert await bystander.fetchval("SELECT 1") == 1
        assert cluster.terminate("it's got a quote%") == 0  # quoted, not SQL
    finally:
        for connection in (victim_a, victim_b, bystander):
            await connection.close(timeout=5)


@needs_postgres
@pytest.mark.anyio
async def test_restart_immediate_keeps_committed_data_and_the_port(cluster: PgCluster) -> None:
    cluster.psql("CREATE TABLE IF NOT EXISTS kept (n int); INSERT INTO kept VALUES (7)")
    before = await asyncpg.connect(cluster.url)
    port = cluster.port
    restarts = cluster.restarts
    try:
        cluster.restart("immediate", down_seconds=0.1)
        assert cluster.running
        assert cluster.port == port
        assert cluster.restarts == restarts + 1
        with pytest.raises(BROKEN):
            await before.fetchval("SELECT 1")
        assert cluster.psql("SELECT n FROM kept") == [["7"]]
        assert "database system was interrupted" in cluster.log_path.read_text()
    finally:
        before.terminate()


@needs_postgres
def test_registered_probes_the_processes_table(cluster: PgCluster) -> None:
    class Fake(OpenbudaProcess):
        @property
        def pid(self) -> int:
            return 4242

    fake = Fake("w", ["true"], env={}, log_path=Path("/dev/null"))
    registered = cluster.registered()
    elsewhere = cluster.registered("other")
    cluster.psql("DROP TABLE IF EXISTS processes")
    cluster.psql('DROP DATABASE IF EXISTS "other"', database="postgres")
    cluster.psql('CREATE DATABASE "other"', database="postgres")
    assert not registered(fake)  # no table yet: not ready, no error
    cluster.psql("CREATE TABLE processes (id text, pid int)")
    assert not registered(fake)
    cluster.psql("INSERT INTO processes VALUES ('w', 4242)")
    assert registered(fake)
    assert not elsewhere(fake)
    cluster.psql("CREATE TABLE processes (id text, pid int)", database="other")
    cluster.psql("INSERT INTO processes VALUES ('w', 4242)", database="other")
    assert elsewhere(fake)
    cluster.psql("DROP TABLE processes")


def test_close_stops_the_server_and_removes_everything() -> None:
    if unavailable is not None:
        pytest.skip(unavailable)
    cluster = PgCluster.start()
    directory = cluster.directory
    port = cluster.port
    assert directory is not None
    cluster.restart("immediate")  # the postmaster of a restart goes too
    postmaster = int((directory / "data" / "postmaster.pid").read_text().split()[0])
    cluster.close()
    cluster.close()  # twice is fine
    assert not directory.exists()
    assert not cluster.running
    assert _wait_gone(postmaster)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# -- processes ---------------------------------------------------------------------------------


@pytest.fixture
def group(tmp_path: Path) -> Iterator[ProcessGroup]:
    with ProcessGroup(tmp_path / "procs", child_environment(os.environ)) as opened:
        yield opened


def test_spawned_process_is_ready_killed_and_restarted(group: ProcessGroup) -> None:
    process = group.spawn(
        "trivial", [sys.executable, "-c", READY_THEN_SLEEP], ready=log_probe("ready")
    )
    first_pid = process.pid
    assert process.alive
    assert process.rss_bytes() > 0
    assert process.peak_rss_bytes() >= process.rss_bytes()
    assert process.kill9()
    assert not process.alive
    assert process.returncode == -signal.SIGKILL
    assert not process.kill9()  # already dead: nothing signalled
    assert process.rss_bytes() == 0
    process.start()
    assert process.pid != first_pid
    assert process.incarnations == 2
    assert process.kills == 1
    log = process.log_text()
    assert log.count("=== ") == 2
    assert log.count("ready") == 2
    assert process.log_text(current=True).count("ready") == 1
    assert process.stop() == -signal.SIGTERM
    assert not process.alive


def test_kill9_takes_the_children_along(group: ProcessGroup) -> None:
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print('child', child.pid, flush=True); time.sleep(600)"
    )
    process = group.spawn("parent", [sys.executable, "-c", script], ready=log_probe("child "))
    child_pid = int(process.log_text(current=True).split("child ")[1].split()[0])
    assert not _gone(child_pid)
    process.kill9()
    assert _wait_gone(child_pid)


def test_a_process_that_dies_before_it_is_ready_says_why(group: ProcessGroup) -> None:
    with pytest.raises(ProcessExited, match="no such luck"):
        group.spawn(
            "doomed",
            [sys.executable, "-c", "import sys; sys.exit('no such luck')"],
            ready=log_probe("never"),
        )


def test_ready_timeout(group: ProcessGroup) -> None:
    process = group.spawn(
        "slow", [sys.executable, "-c", READY_THEN_SLEEP], ready=lambda _: False, wait=False
    )
    with pytest.raises(TimeoutError, match="'slow' was not ready"):
        process.wait_ready(timeout=0.2)


def test_health_probe_and_homes(group: ProcessGroup, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "v1").mkdir(parents=True)
    (site / "v1" / "health").write_text("ok")
    port = free_port()
    process = group.spawn(
        "web",
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(site)],
        ready=health_probe(f"http://127.0.0.1:{port}/v1/health"),
    )
    assert httpx.get(f"http://127.0.0.1:{port}/v1/health").text == "ok"
    assert process.env["OPENBUDA_HOME"] == str(group.directory / "web" / "home")
    assert Path(process.env["OPENBUDA_HOME"]).is_dir()
    with pytest.raises(ValueError, match="exists already"):
        group.spawn("web", ["true"])


def test_close_stops_every_process(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path / "procs", child_environment(os.environ))
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('rea' + 'dy', flush=True); time.sleep(600)"
    )
    polite = group.spawn(
        "polite", [sys.executable, "-c", READY_THEN_SLEEP], ready=log_probe("ready")
    )
    deaf = group.spawn("deaf", [sys.executable, "-c", stubborn], ready=log_probe("ready"))
    group.close(timeout=1)
    assert not polite.alive
    assert polite.returncode == -signal.SIGTERM
    assert not deaf.alive
    assert deaf.returncode == -signal.SIGKILL


def test_child_environment_drops_the_callers_configuration() -> None:
    base = {"PATH": "/bin", "OPENBUDA_HOME": "/home/me", "OPENAI_API_KEY": "sk-real", "X": "1"}
    env = child_environment(base, OPENBUDA_HOME="/tmp/h")
    assert env == {"PATH": "/bin", "X": "1", "OPENBUDA_HOME": "/tmp/h"}


def test_group_api_and_worker_commands(group: ProcessGroup) -> None:
    """The argv of the openbuda processes (spawned without waiting: the command may not exist
    in this build, which is not what this test is about)."""
    api = group.api("api", port=8123, wait=False)
    worker = group.worker("w1", wait=False)
    try:
        assert api.argv[1:] == [
            "-m",
            "openbuda",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "8123",
            "--no-workers",
        ]
        assert api.base_url == "http://127.0.0.1:8123"
        assert worker.argv[1:] == ["-m", "openbuda", "worker", "--worker-id", "w1"]
        assert worker.env["OPENBUDA_WORKER_ID"] == "w1"
    finally:
        api.kill9()
        worker.kill9()
