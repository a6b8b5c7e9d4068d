"""The PostgreSQL server of ``openbuda.testing.cluster``."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Self

from openbuda.testing._processes import OpenbudaProcess, ReadyProbe, free_port, track, untrack

__all__ = ["ClusterUnavailable", "PgCluster", "ShutdownMode"]

ShutdownMode = Literal["smart", "fast", "immediate"]


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the harness (no PostgreSQL server binaries, no ``runuser``)."""


def _find_bin_dir() -> Path | None:
    """The newest installed server's ``bin`` (Debian: ``/usr/lib/postgresql/<major>/bin``),
    else the directory of ``pg_ctl`` on ``PATH``."""

    def major(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else -1

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        found = Path(candidate)
        if all((found / tool).exists() for tool in ("initdb", "pg_ctl", "psql")):
            return found
    return None


class PgCluster:
    """A PostgreSQL server in a temporary directory, on a free port of 127.0.0.1.

    Run as root (as here and in CI), ``initdb`` and ``pg_ctl`` refuse to work: they run as the
    ``postgres`` user through ``runuser``, in a directory that user owns. Run as anyone else,
    they run as that user. Authentication is ``trust`` on loopback; the server is tuned for
    throwaway data (``fsync=off``), which changes nothing about what a *process* crash
    (``restart(mode="immediate")``) exercises: WAL recovery runs all the same.
    """

    DATABASE: ClassVar[str] = "openbuda"
    close_order = 1

    def __init__(
        self,
        *,
        base_dir: Path | None = None,
        bin_dir: Path | None = None,
        max_connections: int = 300,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        found = bin_dir or _find_bin_dir()
        if found is None:
            raise ClusterUnavailable("no PostgreSQL server binaries (initdb, pg_ctl, psql)")
        self.bin_dir = found
        self._as_root = os.geteuid() == 0
        self._runuser = shutil.which("runuser") if self._as_root else None
        if self._as_root and self._runuser is None:
            raise ClusterUnavailable("running as root needs `runuser` to start PostgreSQL")
        self._owner = _postgres_user() if self._as_root else None
        self._base_parent = base_dir
        self._max_connections = max_connections
        self._settings = dict(settings or {})
        self.directory: Path | None = None
        self.port = 0
        self.restarts = 0
        self._running = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this machine cannot run a cluster, or ``None`` when it can."""
        if _find_bin_dir() is None:
            return "no PostgreSQL server binaries (initdb, pg_ctl, psql) under /usr/lib/postgresql"
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                return "running as root needs `runuser`"
            try:
                _postgres_user()
            except ClusterUnavailable as missing:
                return str(missing)
        return None

    @classmethod
    def start(
        cls,
        base_dir: Path | None = None,
        *,
        max_connections: int = 300,
        settings: Mapping[str, str] | None = None,
    ) -> PgCluster:
        """Create, start and return a cluster (``with PgCluster.start() as pg`` stops it)."""
        cluster = cls(base_dir=base_dir, max_connections=max_connections, settings=settings)
        cluster.create()
        return cluster

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self) -> None:
        """``initdb`` into a fresh temporary directory, start the server, create the database."""
        if self.directory is not None:
            raise RuntimeError("this cluster was created already")
        parent = self._base_parent
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="openbuda-pg-", dir=parent))
        self.directory = directory
        track(self)
        try:
            if self._owner is not None:
                _make_traversable(directory)
                os.chown(directory, self._owner[0], self._owner[1])
            self._as_postgres(
                [
                    str(self.bin_dir / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    "postgres",
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                timeout=120,
            )
            self.socket_dir.mkdir()
            if self._owner is not None:
                os.chown(self.socket_dir, self._owner[0], self._owner[1])
            self._write_config()
            self._start_on_a_free_port()
            self.psql(f'CREATE DATABASE "{self.DATABASE}"', database="postgres")
        except BaseException:
            self.close()
            raise

    def start_server(self) -> None:
        """Start the stopped server again on its port (clients reconnect to the same URL)."""
        if self._running:
            return
        self._pg_ctl("start", "-w", "-t", "60", "-o", f"-p {self.port}")
        self._running = True

    def _start_on_a_free_port(self) -> None:
        for attempt in range(5):
            self.port = free_port()
            try:
                self.start_server()
            except subprocess.CalledProcessError:
                if attempt == 4 or not self._port_taken():
                    raise
                continue  # someone took the port between the probe and the start
            return

    def stop_server(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server; ``immediate`` is a crash: no checkpoint, recovery at next start."""
        if not self._running:
            return
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)
        self._running = False

    def restart(self, mode: ShutdownMode = "immediate", *, down_seconds: float = 0.0) -> None:
        """Stop (by default as a crash) and start again on the same port after ``down_seconds``
        (every client connection is cut; the data survives)."""
        self.stop_server(mode)
        if down_seconds > 0:
            time.sleep(down_seconds)
        self.start_server()
        self.restarts += 1

    def close(self) -> None:
        """Stop the server and delete its directory. Safe to call twice."""
        directory, self.directory = self.directory, None
        if directory is None:
            return
        try:
            # also when a start failed half-way: a postmaster may run that we did not see start
            if self._running or (directory / "data" / "postmaster.pid").exists():
                try:
                    self._pg_ctl("stop", "-w", "-t", "30", "-m", "fast", root=directory)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                    with contextlib.suppress(subprocess.CalledProcessError):
                        self._pg_ctl("stop", "-w", "-m", "immediate", root=directory)
                self._running = False
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            untrack(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- where ---------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self._directory / "sock"

    @property
    def log_path(self) -> Path:
        """The server's log (kept across restarts)."""
        return self._directory / "postgres.log"

    @property
    def running(self) -> bool:
        return self._running

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/openbuda`` (for ``OPENBUDA_DATABASE_URL``)."""
        return self.url_for(self.DATABASE)

    def url_for(self, database: str) -> str:
        if not self.port:
            raise RuntimeError("the cluster has not been started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def _directory(self) -> Path:
        if self.directory is None:
            raise RuntimeError("the cluster has not been created (or was closed)")
        return self.directory

    # -- SQL -----------------------------------------------------------------------------------

    def psql(self, sql: str, *, database: str | None = None) -> list[list[str]]:
        """Run ``sql`` with ``psql``; the rows, each a list of column texts (NULL is ``""``)."""
        completed = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "--no-psqlrc",
                "--quiet",
                "--tuples-only",
                "--no-align",
                "--field-separator=\x1f",
                "--set=ON_ERROR_STOP=1",
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--username=postgres",
                f"--dbname={database or self.DATABASE}",
                "--command",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=_client_environment(),
        )
        if completed.returncode != 0:
            raise subprocess.CalledProcessError(
                completed.returncode, "psql", completed.stdout, completed.stderr
            )
        return [line.split("\x1f") for line in completed.stdout.splitlines() if line]

    def terminate(self, application_name_like: str) -> int:
        """``pg_terminate_backend`` every connection whose ``application_name`` is ``LIKE``
        the pattern (e.g. ``'openbuda worker w1%'``); how many were cut."""
        pattern = application_name_like.replace("'", "''")
        rows = self.psql(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name LIKE '{pattern}' AND pid <> pg_backend_pid()"
        )
        return int(rows[0][0]) if rows else 0

    def connections(self, application_name_like: str = "%") -> list[str]:
        """The ``application_name`` of each client connection matching the pattern."""
        pattern = application_name_like.replace("'", "''")
        rows = self.psql(
            "SELECT application_name FROM pg_stat_activity "
            f"WHERE backend_type = 'client backend' AND application_name LIKE '{pattern}' "
            "AND pid <> pg_backend_pid() ORDER BY application_name"
        )
        return [row[0] for row in rows]

    def registered(self, database: str | None = None) -> ReadyProbe:
        """A readiness probe: the process has its row (by pid) in ``processes`` of
        ``database`` (default: the cluster's own)."""

        def probe(process: OpenbudaProcess) -> bool:
            if not self._running:
                return False
            try:
                rows = self.psql(
                    f"SELECT count(*) FROM processes WHERE pid = {int(process.pid)}",
                    database=database,
                )
            except subprocess.CalledProcessError:  # not migrated yet, or the server restarts
                return False
            return bool(rows) and rows[0][0] != "0"

        return probe

    # -- internals -----------------------------------------------------------------------------

    def _write_config(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": str(self._max_connections),
            "shared_buffers": "'64MB'",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "on",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %a '",
            "log_connections": "off",
            **self._settings,
        }
        lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# openbuda.testing.cluster\n" + lines)

    def _port_taken(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError:
                return True
        return False

    def _pg_ctl(self, *args: str, root: Path | None = None) -> None:
        """``pg_ctl`` on the cluster under ``root`` (default: this cluster's directory)."""
        directory = root if root is not None else self._directory
        self._as_postgres(
            [
                str(self.bin_dir / "pg_ctl"),
                "--pgdata",
                str(directory / "data"),
                "--log",
                str(directory / "postgres.log"),
                *args,
            ],
            timeout=120,
        )

    def _as_postgres(self, argv: Sequence[str], *, timeout: float) -> None:
        command = list(argv)
        if self._runuser is not None:
            command = [self._runuser, "-u", "postgres", "--", *command]
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
            env=_client_environment(),
            start_new_session=True,  # a test's Ctrl-C must not reach the server through us
        )
        if completed.returncode != 0:
            raise subprocess.CalledProcessError(
                completed.returncode, command, completed.stdout, completed.stderr
            )


def _postgres_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterUnavailable("there is no `postgres` user to run PostgreSQL as") from None
    return entry.pw_uid, entry.pw_gid


def _make_traversable(directory: Path) -> None:
    """The ``postgres`` user must reach ``directory``: every parent needs its search bit."""
    for parent in directory.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise ClusterUnavailable(
                f"the postgres user cannot reach {str(directory)!r}: {str(parent)!r} is not "
                "searchable by others (pass a base_dir under /tmp)"
            )


def _client_environment() -> dict[str, str]:
    """A minimal environment for ``psql``/``pg_ctl``: no ``PG*`` variable of the caller's
    (``PGHOST``, ``PGPASSWORD``…) may redirect them."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/"}
