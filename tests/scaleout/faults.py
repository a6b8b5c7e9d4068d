"""The fault injector: a plan drawn from a seed, fired as the workload makes progress.

Each fault is due once the clients have seen a given share of the tasks end (so that faults
land while work is in flight however fast this machine is), then waits a random moment more.
The plan holds every kind at least once:

- ``kill_worker``: ``kill -9`` of a worker, restarted after a pause (shorter or longer than the
  lease: its next incarnation re-queues its tasks, or the reaper of another worker does);
- ``drop_connections``: ``pg_terminate_backend`` of every connection of a worker (its pool and
  its bus connection), one to five times in a row (an idle pooled connection that is cut is
  merely replaced; a burst also catches connections in the middle of a transaction);
- ``restart_postgres``: an immediate shutdown (a crash) of PostgreSQL, up again after a pause;
- ``kill_api``: ``kill -9`` of the API process while the clients stream, restarted after a pause.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import anyio

from openbuda.testing.cluster import OpenbudaProcess, PgCluster
from tests.scaleout.driver import Progress

__all__ = ["Fault", "FaultLog", "inject", "plan_faults"]

log = logging.getLogger("scaleout.faults")

FaultKind = Literal["kill_worker", "drop_connections", "restart_postgres", "kill_api"]
KINDS: Final[tuple[FaultKind, ...]] = (
    "kill_worker",
    "drop_connections",
    "restart_postgres",
    "kill_api",
)


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    due: float
    """The share of tasks ended (0-1) after which it fires."""
    delay: float
    """Seconds more to wait once it is due."""
    target: int
    """Which worker (an index; unused by the other kinds)."""
    pause: float
    """Seconds the victim stays down (``drop_connections``: between the cuts of a burst)."""
    repeat: int = 1
    """Cuts in a row (``drop_connections``)."""

    def describe(self, workers: Sequence[OpenbudaProcess]) -> str:
        victim = "api"
        if self.kind in ("kill_worker", "drop_connections"):
            victim = workers[self.target % len(workers)].name
        elif self.kind == "restart_postgres":
            victim = "postgres"
        if self.kind == "drop_connections":
            return f"{self.kind} {victim} ×{self.repeat}, {self.pause:.2f} s apart"
        return f"{self.kind} {victim}, down {self.pause:.1f} s"


def plan_faults(rng: random.Random, count: int, *, lease_seconds: float) -> list[Fault]:
    """``count`` faults (at least one of each kind), due between 5 % and 85 % of the work;
    none when ``count`` is 0."""
    if count <= 0:
        return []
    kinds = list(KINDS) + [rng.choice(KINDS) for _ in range(max(0, count - len(KINDS)))]
    rng.shuffle(kinds)
    dues = sorted(rng.uniform(0.05, 0.85) for _ in kinds)
    faults: list[Fault] = []
    for kind, due in zip(kinds, dues, strict=True):
        if kind == "kill_worker":  # sometimes back before its lease runs out, sometimes after
            pause = rng.uniform(0.2, lease_seconds * 1.6)
        elif kind == "restart_postgres":
            pause = rng.uniform(0.1, 2.0)
        elif kind == "drop_connections":
            pause = rng.uniform(0.02, 0.3)
        else:
            pause = rng.uniform(0.2, 1.5)
        repeat = rng.randint(1, 5) if kind == "drop_connections" else 1
        faults.append(Fault(kind, due, rng.uniform(0.0, 0.7), rng.randrange(1000), pause, repeat))
    return faults


@dataclass
class FaultLog:
    fired: list[str] = field(default_factory=list[str])
    kills: int = 0
    worker_kills: int = 0
    api_kills: int = 0
    connection_drops: int = 0
    """Connections cut by ``pg_terminate_backend``."""
    postgres_restarts: int = 0
    process_restarts: int = 0

    @property
    def restarts(self) -> int:
        return self.postgres_restarts + self.process_restarts


async def inject(
    faults: Sequence[Fault],
    progress: Progress,
    *,
    cluster: PgCluster,
    api: OpenbudaProcess,
    workers: Sequence[OpenbudaProcess],
    record: FaultLog,
) -> None:
    """Fire ``faults`` in order as ``progress`` reaches them; every victim is up at the end."""
    started = time.monotonic()
    for fault in faults:
        await progress.reached(max(1, round(fault.due * progress.total)))
        await anyio.sleep(fault.delay)
        stamp = f"{time.monotonic() - started:6.1f}s {progress.done:>3} done"
        record.fired.append(f"{stamp}  {fault.describe(workers)}")
        log.info("fault: %s", record.fired[-1])
        await _fire(fault, cluster=cluster, api=api, workers=workers, record=record)


async def _fire(
    fault: Fault,
    *,
    cluster: PgCluster,
    api: OpenbudaProcess,
    workers: Sequence[OpenbudaProcess],
    record: FaultLog,
) -> None:
    worker = workers[fault.target % len(workers)]
    match fault.kind:
        case "kill_worker":
            if await anyio.to_thread.run_sync(worker.kill9):
                record.kills += 1
                record.worker_kills += 1
            await anyio.sleep(fault.pause)
            await anyio.to_thread.run_sync(worker.start)
            record.process_restarts += 1
        case "kill_api":
            if await anyio.to_thread.run_sync(api.kill9):
                record.kills += 1
                record.api_kills += 1
            await anyio.sleep(fault.pause)
            await anyio.to_thread.run_sync(api.start)
            record.process_restarts += 1
        case "drop_connections":
            worker_id = worker.env.get("OPENBUDA_WORKER_ID", worker.name)
            for burst in range(fault.repeat):
                if burst:
                    await anyio.sleep(fault.pause)
                for pattern in (f"openbuda worker {worker_id}", f"openbuda bus {worker_id}"):
                    cut = await anyio.to_thread.run_sync(cluster.terminate, pattern)
                    record.connection_drops += cut
        case "restart_postgres":
            await anyio.to_thread.run_sync(
                lambda: cluster.restart("immediate", down_seconds=fault.pause)
            )
            record.postgres_restarts += 1
