"""Spawned processes for ``openbuda.testing.cluster``: one process across its incarnations, a
group that owns several, readiness probes, and the last-resort cleanup at exit."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

__all__ = [
    "OpenbudaProcess",
    "ProcessExited",
    "ProcessGroup",
    "ReadyProbe",
    "child_environment",
    "free_port",
    "health_probe",
    "log_probe",
    "track",
    "untrack",
]

ReadyProbe = Callable[["OpenbudaProcess"], bool]
"""Whether a started process is ready to serve (called repeatedly until it says so)."""

_POLL = 0.05
_INHERITED_PREFIXES = ("OPENBUDA_", "OPENAI_", "ANTHROPIC_", "GOOGLE_", "OTEL_")


class ProcessExited(RuntimeError):
    """A spawned process exited before it was ready (the message holds its log's tail)."""


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_environment(base: Mapping[str, str], **values: str) -> dict[str, str]:
    """``base`` without openbuda's and the model providers' variables, plus ``values``.

    A child process must not pick up the configuration of whoever runs the tests (a developer's
    ``OPENBUDA_HOME`` or ``OPENAI_API_KEY``): it gets exactly what the harness gives it.
    """
    kept = {k: v for k, v in base.items() if not k.startswith(_INHERITED_PREFIXES)}
    return {**kept, **values}


# ---------------------------------------------------------------------------------------------
# Last-resort cleanup


class _Closeable(Protocol):
    close_order: int
    """Lower closes first at exit: processes (they hold connections) before servers."""

    def close(self) -> None: ...


_live: set[_Closeable] = set()
"""Strong references: something nobody closed must still be found at exit."""
_live_lock = threading.Lock()


def track(owner: _Closeable) -> None:
    with _live_lock:
        _live.add(owner)


def untrack(owner: _Closeable) -> None:
    with _live_lock:
        _live.discard(owner)


@atexit.register
def _close_leftovers() -> None:
    """Whatever a crashed test or benchmark left running."""
    with _live_lock:
        owners = sorted(_live, key=lambda owner: owner.close_order)
    for owner in owners:
        with contextlib.suppress(Exception):
            owner.close()


# ---------------------------------------------------------------------------------------------
# openbuda processes


class OpenbudaProcess:
    """One spawned process: its argv, environment and log file, across incarnations.

    ``start`` spawns it and waits for ``ready``; ``kill9`` is a machine dying (SIGKILL to the
    whole process group it leads); ``stop`` is a clean shutdown (SIGTERM, SIGKILL after a
    timeout); ``start`` again is a restart with the same arguments (a worker keeps its id).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        ready: ReadyProbe | None = None,
        ready_timeout: float = 60.0,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.cwd = cwd
        self.base_url: str | None = None
        """Where an API process listens (``http://127.0.0.1:<port>``)."""
        self.incarnations = 0
        self.kills = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._log_offset = 0

    def __repr__(self) -> str:
        state = f"pid {self._popen.pid}" if self.alive and self._popen else "not running"
        return f"<OpenbudaProcess {self.name!r} {state}>"

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"process {self.name!r} was never started")
        return self._popen.pid

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        with self._lock:
            if self.alive:
                raise RuntimeError(f"process {self.name!r} is already running")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                stamp = time.strftime("%H:%M:%S")
                header = f"\n=== {stamp} start #{self.incarnations + 1}: {' '.join(self.argv)}\n"
                log.write(header.encode())
                log.flush()
                self._log_offset = log.tell()  # the header is not the process's own output
                self._popen = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.incarnations += 1

    def start(self) -> None:
        """Spawn and wait until ``ready`` says so; ``ProcessExited`` if it dies first."""
        self.spawn()
        self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        while True:
            if not self.alive:
                raise ProcessExited(
                    f"process {self.name!r} exited with {self.returncode} before it was ready; "
                    f"its log ends with:\n{self.log_tail()}"
                )
            if self.ready is None or self.ready(self):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"process {self.name!r} was not ready after {self.ready_timeout:g} s; its "
                    f"log ends with:\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def kill9(self) -> bool:
        """SIGKILL the process and everything it started; ``False`` if it was not running."""
        with self._lock:
            if not self._signal_group(signal.SIGKILL):
                return False
            assert self._popen is not None
            self._popen.wait()
            self.kills += 1
            return True

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (``None``: not running)."""
        with self._lock:
            popen = self._popen
            if popen is None:
                return None
            if self._signal_group(signal.SIGTERM):
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    popen.wait()
            # whatever the leader left behind in its group goes too
            return popen.returncode

    def restart(self) -> None:
        """Stop cleanly if running, then start again with the same arguments."""
        self.stop()
        self.start()

    def rss_bytes(self) -> int:
        """The resident set of the running process (``VmRSS``), 0 when it is not running."""
        return self._status_bytes("VmRSS")

    def peak_rss_bytes(self) -> int:
        """The most it held resident so far (``VmHWM``), 0 when it is not running."""
        return self._status_bytes("VmHWM")

    def log_text(self, *, current: bool = False) -> str:
        """The log (``current``: only what the latest incarnation wrote, without the header)."""
        try:
            with self.log_path.open("rb") as log:
                if current:
                    log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _status_bytes(self, field: str) -> int:
        if not self.alive:
            return 0
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def _signal_group(self, signum: signal.Signals) -> bool:
        """Signal the process group this process leads, only while the leader is unreaped (so
        its id cannot have been reused by anything we did not start)."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return False
        try:
            os.killpg(popen.pid, signum)
        except ProcessLookupError:
            return False
        return True


def health_probe(url: str) -> ReadyProbe:
    """Ready once ``GET <url>`` answers 200 (an API process: ``…/v1/health``)."""

    def probe(process: OpenbudaProcess) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    return probe


def log_probe(text: str) -> ReadyProbe:
    """Ready once the running incarnation's log contains ``text``."""

    def probe(process: OpenbudaProcess) -> bool:
        return text in process.log_text(current=True)

    return probe


class ProcessGroup:
    """The processes of one test or benchmark; ``close`` stops every one still running.

    ``env`` is the environment every child gets (build it with ``child_environment``); each
    process adds its own ``OPENBUDA_HOME`` under ``directory/<name>/home`` and writes its log to
    ``directory/<name>.log``.
    """

    close_order = 0

    def __init__(
        self,
        directory: Path,
        env: Mapping[str, str],
        *,
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        self.directory = directory
        self.env = dict(env)
        self.python = python
        self.cwd = cwd
        self.processes: dict[str, OpenbudaProcess] = {}
        directory.mkdir(parents=True, exist_ok=True)
        track(self)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready: ReadyProbe | None = None,
        ready_timeout: float = 60.0,
        wait: bool = True,
    ) -> OpenbudaProcess:
        """Start any command as a member of the group (``wait``: until ``ready``)."""
        if name in self.processes:
            raise ValueError(f"a process named {name!r} exists already")
        home = self.directory / name / "home"
        home.mkdir(parents=True, exist_ok=True)
        process = OpenbudaProcess(
            name,
            argv,
            env={**self.env, "OPENBUDA_HOME": str(home), **(env or {})},
            log_path=self.directory / f"{name}.log",
            ready=ready,
            ready_timeout=ready_timeout,
            cwd=self.cwd,
        )
        self.processes[name] = process
        if wait:
            process.start()
        else:
            process.spawn()
        return process

    def api(
        self,
        name: str,
        *,
        port: int | None = None,
        workers: bool = False,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> OpenbudaProcess:
        """``openbuda serve --no-workers`` (``workers=True``: plain ``serve``, API and workers
        in one process) on 127.0.0.1; ready once ``/v1/health`` answers."""
        port = port or free_port()
        argv = [self.python, "-m", "openbuda", "serve", "--host", "127.0.0.1", "--port", str(port)]
        if not workers:
            argv.append("--no-workers")
        process = self.spawn(
            name,
            argv,
            env=env,
            ready=health_probe(f"http://127.0.0.1:{port}/v1/health"),
            wait=False,
        )
        process.base_url = f"http://127.0.0.1:{port}"
        if wait:
            process.wait_ready()
        return process

    def worker(
        self,
        name: str,
        *,
        worker_id: str | None = None,
        ready: ReadyProbe | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> OpenbudaProcess:
        """``openbuda worker --worker-id <worker_id or name>``; ``ready`` e.g.
        ``PgCluster.registered()`` (its row in ``processes``)."""
        worker_id = worker_id or name
        argv = [self.python, "-m", "openbuda", "worker", "--worker-id", worker_id]
        return self.spawn(
            name,
            argv,
            env={"OPENBUDA_WORKER_ID": worker_id, **(env or {})},
            ready=ready,
            wait=wait,
        )

    def running(self) -> Iterator[OpenbudaProcess]:
        return (p for p in self.processes.values() if p.alive)

    def close(self, timeout: float = 15.0) -> None:
        """Stop every process still running (SIGTERM at once to all, then SIGKILL)."""
        try:
            alive = list(self.running())
            for process in alive:
                process._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for process in alive:
                try:
                    remaining = max(0.0, deadline - time.monotonic())
                    if process._popen is not None:
                        process._popen.wait(remaining)
                except subprocess.TimeoutExpired:
                    process.kill9()
        finally:
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
