"""Change detection after a tool call: an Agent Drive of 10,000 files with 10 changed.

    python benchmarks/drive_sync.py [--files 10000] [--changed 10] [--runs 9] [--kib 4]
                                    [--postgres URL] [--no-postgres] [--no-sqlite]

``--files`` files of about ``--kib`` KiB (random bytes) in 100 folders are written straight into
the agent's ``/agent`` on the host (``process`` computer backend, local blob store), with a file
time long past. Then, with ``DriveSync`` as the engine calls it:

- **first import**: the first ``after_tool``: every file hashed, stored and committed (once);
- **scan**: ``WorkingCopy.scan`` alone; **scan + compare**: the scan compared with the index
  (``drive.sync.compare``), the part every tool call pays;
- **after_tool, no change**: nothing changed since the last sync;
- **after_tool, N changed**: ``--changed`` files rewritten (new content, same size) just before,
  so that many are hashed, stored and committed as versions (other files each run);
- **after_tool, racy**: the call right after that, which hashes the N again (their file times
  are too recent to trust: see ``drive.sync``), finding them unchanged;
- **before_tool, no change**: the pull when Drive has nothing new (one query).

Medians of ``--runs`` runs after one warm-up, wall and this process's CPU time, in ms.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread
from _common import (
    add_backend_arguments,
    backends,
    fmt_ms,
    machine_line,
    median,
    print_table,
    title,
)

from openbuda.clock import SystemClock
from openbuda.computer import ComputerLayout, Computers, ProcessBackend
from openbuda.domain.drive import DriveRef
from openbuda.domain.records import AgentSettings, Role
from openbuda.drive.blobs import LocalBlobStore
from openbuda.drive.sync import DriveSync, SyncIndex, compare
from openbuda.engine.broadcaster import InProcessBroadcaster
from openbuda.engine.tools import ToolContext
from openbuda.ports import NewAgent, NewSession
from openbuda.service.deps import ServiceDeps
from openbuda.service.drive import DriveLimits, DriveService
from openbuda.stores import open_store

OLD = 1_600_000_000


def make_files(root: Path, count: int, size: int) -> list[Path]:
    paths: list[Path] = []
    for index in range(count):
        folder = root / f"dir{index % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"file{index:05d}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    age(paths)
    return paths


def age(paths: list[Path]) -> None:
    for path in paths:
        os.utime(path, ns=(OLD * 10**9, OLD * 10**9))


def rewrite(paths: list[Path]) -> None:
    for path in paths:
        size = path.stat().st_size
        with path.open("r+b") as handle:
            handle.write(os.urandom(size))


async def timed(call: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await call()
    return time.perf_counter() - wall, time.process_time() - cpu


async def measure(url: str, workdir: Path, args: argparse.Namespace) -> list[list[str]]:
    store = open_store(url)
    await store.migrate()
    rows: list[list[str]] = []
    backend = ProcessBackend(ComputerLayout(workdir / "computers"))
    try:
        now = datetime.now(UTC)
        async with store.write() as tx:
            space = await tx.create_space("bench", now)
            await tx.create_member(space.id, "owner", Role.OWNER, now)
            agent = await tx.create_agent(
                NewAgent(space.id, "bench", settings=AgentSettings()), now
            )
            session = await tx.create_session(NewSession(space.id, agent.id), now)
        deps = ServiceDeps(store, SystemClock(), InProcessBroadcaster())
        blobs = await anyio.to_thread.run_sync(LocalBlobStore, workdir / "blobs")
        drive = DriveService(deps, blobs, DriveLimits())
        computers = Computers(backend)
        sandbox = await computers.get(agent)
        sync = DriveSync(drive, computers, workdir / "computers")
        context = ToolContext(agent, session, "tsk_bench", "call_1")
        agent_dir = ComputerLayout(workdir / "computers").agent_files(agent.id)
        paths = await anyio.to_thread.run_sync(make_files, agent_dir, args.files, args.kib * 1024)

        def row(name: str, samples: list[tuple[float, float]]) -> None:
            rows.append(
                [
                    name,
                    fmt_ms(median([w for w, _ in samples])),
                    fmt_ms(median([c for _, c in samples])),
                ]
            )

        first = await timed(lambda: sync.after_tool(context))
        row(f"first import ({args.files:,} files)", [first])

        copy = await sandbox.working_copy("agent")
        index_path = sync.index_path(DriveRef(space.id, agent.id))
        index = await anyio.to_thread.run_sync(SyncIndex.load, index_path)

        async def scan() -> None:
            await anyio.to_thread.run_sync(copy.scan)

        async def scan_compare() -> None:
            scanned = await anyio.to_thread.run_sync(copy.scan)
            compare(scanned, index)

        samples: dict[str, list[tuple[float, float]]] = {
            key: [] for key in ("scan", "compare", "none", "changed", "racy", "before")
        }
        for run in range(args.runs + 1):
            measured = {
                "scan": await timed(scan),
                "compare": await timed(scan_compare),
                "none": await timed(lambda: sync.after_tool(context)),
                "before": await timed(lambda: sync.before_tool(context)),
            }
            batch = paths[run * args.changed : (run + 1) * args.changed]
            await anyio.to_thread.run_sync(rewrite, batch)
            measured["changed"] = await timed(lambda: sync.after_tool(context))
            measured["racy"] = await timed(lambda: sync.after_tool(context))
            await anyio.to_thread.run_sync(age, batch)
            await sync.after_tool(context)  # the old file times, taken in (hashes the N once)
            index = await anyio.to_thread.run_sync(SyncIndex.load, index_path)
            if run:  # the first run warms up
                for key, value in measured.items():
                    samples[key].append(value)
        row("scan", samples["scan"])
        row("scan + compare", samples["compare"])
        row("after_tool, no change", samples["none"])
        row(f"after_tool, {args.changed} changed", samples["changed"])
        row(f"after_tool right after (the {args.changed} racy)", samples["racy"])
        row("before_tool, no change", samples["before"])
    finally:
        await backend.aclose()
        await store.close()
    return rows


async def amain(args: argparse.Namespace) -> None:
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="openbuda-drive-sync-") as temp:
        workdir = Path(temp)
        async with backends(args, workdir) as found:
            for backend in found:
                title(
                    f"{backend.name}: {args.files:,} files of {args.kib} KiB, "
                    f"{args.changed} changed, median of {args.runs} runs"
                )
                rows = await measure(backend.url, workdir / backend.name, args)
                print_table(["", "wall ms", "cpu ms"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--kib", type=int, default=4)
    add_backend_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    anyio.run(amain, args)


if __name__ == "__main__":
    main()
