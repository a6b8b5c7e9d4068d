"""Exec overhead, wake latency and port detection of the agent's computer.

    python benchmarks/computer.py [--quick] [--runs N] [--backend bwrap|process]

The computer is a real one of the chosen backend (default ``bwrap``; ``process`` for machines
without bubblewrap), in a temporary directory, stopped at the end.

1. **Exec overhead.** ``true`` and ``echo hi`` through ``Sandbox.exec`` (console view), against
   a bare ``subprocess.run(["bash", "-c", "true"])`` and against a bare ``bwrap --unshare-all
   … bash -c true`` (a fresh sandbox per command, as an unprivileged uid when run as root).
   The four are interleaved run by run after a warm-up; median and p95 of wall time, and the
   ratio of each median to the bare subprocess's (target: ≤ 2×). The same for a session's
   view (its namespaces are built on its first command: that first exec is shown apart).
2. **Wake latency.** A warm ``true``, then ``sleep()``, then a timed ``true`` (which wakes the
   computer first): wake latency = the woken exec minus the warm one (target: ≤ 100 ms).
   ``wake()`` on its own is timed too, after another ``sleep()``.
3. **Port detection.** A background ``python3`` listens on a new port; from the moment its exec
   returns, ``status()`` is polled every 10 ms until the port is listed. Shown next to when
   the port first accepted a connection (``connect_port``, polled likewise, in a separate
   round), so the detection delay is told apart from the server's own start-up; and the cost
   of one ``status()`` call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread
from _common import fmt_ms, fmt_ratio, machine_line, median, percentile, print_table, title

from openbuda.computer._layout import ComputerLayout
from openbuda.computer.process import ProcessBackend
from openbuda.domain.errors import Unavailable
from openbuda.ports import ExecRequest, Sandbox, SandboxBackend, SandboxSpec, SandboxView
from openbuda.settings import Settings

SPEC: Final = SandboxSpec(space_id="bench", agent_id="bench")
CONSOLE: Final = SandboxView()
SESSION: Final = SandboxView(session_id="bench-session")
BARE_UID: Final = 299_999
"""The unprivileged host uid the bare ``bwrap`` baseline runs as when this script is root."""
POLL_SECONDS: Final = 0.01


def bare_bwrap_argv() -> list[str]:
    argv = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--uid",
        "0",
        "--gid",
        "0",
        "bash",
        "-c",
        "true",
    ]
    if os.geteuid() == 0:
        setpriv = ["setpriv", f"--reuid={BARE_UID}", f"--regid={BARE_UID}", "--clear-groups"]
        return setpriv + argv
    return argv


def timed_run(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


async def timed_exec(sandbox: Sandbox, command: str, view: SandboxView = CONSOLE) -> float:
    started = time.perf_counter()
    result = await sandbox.exec(ExecRequest(command=command, view=view, timeout_s=60))
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise RuntimeError(f"{command!r} failed: {result}")
    return elapsed


def open_backend(name: str, workdir: Path) -> SandboxBackend:
    layout = ComputerLayout(workdir / "computers")
    if name == "process":
        return ProcessBackend(layout)
    from openbuda.computer.bwrap import BwrapBackend

    return BwrapBackend(layout, Settings(home=workdir))


def stats_row(label: str, samples: list[float], baseline: float | None) -> list[str]:
    middle = median(samples)
    ratio = fmt_ratio(middle / baseline) if baseline else "—"
    return [label, fmt_ms(middle), fmt_ms(percentile(samples, 0.95)), ratio, str(len(samples))]


async def exec_overhead(sandbox: Sandbox, runs: int, with_bwrap: bool) -> None:
    title("1. Exec overhead (ms, wall)")
    first_session = await timed_exec(sandbox, "true", SESSION)
    kinds: dict[str, Callable[[], Awaitable[float]]] = {
        "bare subprocess bash -c true": lambda: anyio.to_thread.run_sync(
            timed_run, ["bash", "-c", "true"]
        ),
        "exec `true` (console)": lambda: timed_exec(sandbox, "true"),
        "exec `echo hi` (console)": lambda: timed_exec(sandbox, "echo hi"),
        "exec `true` (session)": lambda: timed_exec(sandbox, "true", SESSION),
    }
    if with_bwrap:
        argv = bare_bwrap_argv()
        kinds["bare bwrap … bash -c true"] = lambda: anyio.to_thread.run_sync(timed_run, argv)
    for measure in kinds.values():  # warm-up
        for _ in range(5):
            await measure()
    samples: dict[str, list[float]] = {label: [] for label in kinds}
    for _ in range(runs):
        for label, measure in kinds.items():
            samples[label].append(await measure())
    baseline = median(samples["bare subprocess bash -c true"])
    print_table(
        ["", "median", "p95", "÷ bare subprocess", "n"],
        [stats_row(label, values, baseline) for label, values in samples.items()],
    )
    print(f"first command of a new session (its namespaces built): {fmt_ms(first_session)} ms")


async def wake_latency(sandbox: Sandbox, runs: int) -> None:
    title("2. Wake latency (ms)")
    warm: list[float] = []
    woken: list[float] = []
    wake_only: list[float] = []
    for _ in range(runs):
        warm.append(await timed_exec(sandbox, "true"))
        await sandbox.sleep()
        await anyio.sleep(0.05)
        woken.append(await timed_exec(sandbox, "true"))
        await sandbox.sleep()
        await anyio.sleep(0.05)
        started = time.perf_counter()
        await sandbox.wake()
        wake_only.append(time.perf_counter() - started)
    latency = [late - early for late, early in zip(woken, warm, strict=True)]
    print_table(
        ["", "median", "p95", "n"],
        [
            [label, fmt_ms(median(values)), fmt_ms(percentile(values, 0.95)), str(len(values))]
            for label, values in (
                ("warm exec `true`", warm),
                ("exec `true` on a sleeping computer", woken),
                ("wake latency (difference)", latency),
                ("wake() alone", wake_only),
            )
        ],
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _start_listener(sandbox: Sandbox, port: int) -> tuple[str, float]:
    command = (
        "python3 -c 'import socket, time; s = socket.socket(); "
        f's.bind(("127.0.0.1", {port})); s.listen(); time.sleep(600)\' '
        "</dev/null >/dev/null 2>&1 & echo $!"
    )
    result = await sandbox.exec(ExecRequest(command=command, timeout_s=60))
    return result.stdout.strip(), time.perf_counter()


async def _poll(check: Callable[[], Awaitable[bool]], since: float) -> float:
    with anyio.fail_after(30):
        while True:
            if await check():
                return time.perf_counter() - since
            await anyio.sleep(POLL_SECONDS)


async def port_detection(sandbox: Sandbox, runs: int) -> None:
    title("3. Detecting a new listening port (ms after the starting exec returned)")
    listed: list[float] = []
    accepting: list[float] = []
    status_cost: list[float] = []
    for _ in range(runs):
        port = free_port()
        pid, since = await _start_listener(sandbox, port)

        async def is_listed(port: int = port) -> bool:
            started = time.perf_counter()
            ports = (await sandbox.status()).ports
            status_cost.append(time.perf_counter() - started)
            return port in ports

        listed.append(await _poll(is_listed, since))
        await sandbox.exec(ExecRequest(command=f"kill {pid}"))

        port = free_port()
        pid, since = await _start_listener(sandbox, port)

        async def accepts(port: int = port) -> bool:
            try:
                stream = await sandbox.connect_port(port)
            except Unavailable:
                return False
            await stream.aclose()
            return True

        accepting.append(await _poll(accepts, since))
        await sandbox.exec(ExecRequest(command=f"kill {pid}"))
    print_table(
        ["", "median", "p95", "n"],
        [
            [label, fmt_ms(median(values)), fmt_ms(percentile(values, 0.95)), str(len(values))]
            for label, values in (
                ("listed by status().ports", listed),
                ("accepting a connection (connect_port)", accepting),
                ("one status() call", status_cost),
            )
        ],
    )


async def main(args: argparse.Namespace) -> None:
    runs = args.runs or (30 if args.quick else 200)
    rounds = max(5, runs // 10)
    print(f"openbuda computer · backend {args.backend} · {machine_line()}")
    with tempfile.TemporaryDirectory(prefix="openbuda-bench-") as workdir:
        os.chmod(workdir, 0o755)
        backend = open_backend(args.backend, Path(workdir))
        try:
            sandbox = await backend.connect(SPEC)
            await exec_overhead(sandbox, runs, with_bwrap=bool(shutil.which("bwrap")))
            await wake_latency(sandbox, rounds)
            await port_detection(sandbox, rounds)
        finally:
            with anyio.CancelScope(shield=True):
                await backend.aclose()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="30 runs instead of 200")
    parser.add_argument("--runs", type=int, default=0, help="measured execs per kind")
    parser.add_argument("--backend", choices=("bwrap", "process"), default="bwrap")
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args())
