"""Scale-out on PostgreSQL: tasks per second and accepted → first step, with 1, 2 and 4 workers.

    python benchmarks/scale_out.py [--quick] [--sessions N] [--workers 1,2,4] [--default-limits]

Every process is real and separate: PostgreSQL of its own (``openbuda.testing.cluster.PgCluster``
in a temporary directory), a model server that answers after 200 ms (``python -m
openbuda.testing.openai_server``), one ``openbuda serve --no-workers`` and N ``openbuda worker``
processes, each with its own ``OPENBUDA_HOME``. The same run also measures the single process
(``openbuda serve``, API and workers in one). Each configuration gets a fresh database.

For each configuration: N sessions (1,000; ``--quick`` 200) are created through HTTP (untimed),
then every ``POST /messages`` is sent at once (64 at a time) from this process. Each task is one
model call. Measured from the stored rows afterwards, so every figure uses the server's clock:

- **tasks/s** = N / (first task created → last task finished);
- **accepted → first step**: from the task's ``message`` event (stored with the task, in the
  transaction that accepts it) to the first event after its ``task.status running`` (here the
  model's response, stored with the answer): queueing + claim + the 200 ms model call;
- **RSS**: the peak ``VmRSS`` of each process, sampled every 100 ms during the burst.

Each process runs up to 64 tasks at once (the default; ``--concurrency``). The limits per space
and per agent, which hold across processes, are raised to 1,000: with their default of 32 every
configuration would be bound to 32 tasks at once, which is what ``--default-limits`` shows. A
process limit as high as the burst would not spread it either: the first worker to claim would
take every queued task.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # pyright: ignore[reportMissingTypeStubs]
import httpx
from _common import fmt_ms, machine_line, median, percentile, print_table, title

from openbuda.testing.cluster import (
    OpenbudaProcess,
    PgCluster,
    ProcessGroup,
    child_environment,
    free_port,
    log_probe,
)

MODEL_DELAY = 0.2
API_KEY = "bench-" + secrets.token_urlsafe(24)
SEND_CONCURRENCY = 64


@dataclass
class Result:
    label: str
    tasks: int = 0
    seconds: float = 0.0
    send_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list[float])
    rss: dict[str, int] = field(default_factory=dict[str, int])
    failed: int = 0
    claims: dict[str, int] = field(default_factory=dict[str, int])
    """Tasks each worker ran (by the ``worker`` of its ``running`` status)."""

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.seconds if self.seconds else float("nan")


@dataclass
class Config:
    label: str
    workers: int
    """Worker processes next to an API-only process; 0: one ``openbuda serve`` doing both."""


# ---------------------------------------------------------------------------------------------
# Processes


class Deployment:
    """The processes of one configuration against one fresh database."""

    def __init__(
        self, cluster: PgCluster, database: str, config: Config, group: ProcessGroup
    ) -> None:
        self.cluster = cluster
        self.database = database
        self.config = config
        self.group = group
        self.api: OpenbudaProcess | None = None
        self.workers: list[OpenbudaProcess] = []

    @property
    def url(self) -> str:
        assert self.api is not None and self.api.base_url is not None
        return self.api.base_url

    @property
    def dsn(self) -> str:
        return self.cluster.url_for(self.database)

    @property
    def processes(self) -> list[OpenbudaProcess]:
        return [p for p in (self.api, *self.workers) if p is not None and p.alive]

    async def start_api(self, *, with_workers: bool) -> None:
        name = "serve" if with_workers else "api"
        self.api = await anyio.to_thread.run_sync(
            lambda: self.group.api(name, workers=with_workers)
        )

    async def start_workers(self) -> None:
        """The configuration's workers; for the single process, ``serve`` in place of the
        API-only process (same database, so it runs what is queued)."""
        if self.config.workers == 0:
            if self.api is not None and self.api.name == "serve":
                return
            if self.api is not None:
                await anyio.to_thread.run_sync(self.api.stop)
            await self.start_api(with_workers=True)
            return
        started = [
            self.group.worker(
                f"worker{n}", ready=self.cluster.registered(self.database), wait=False
            )
            for n in range(1, self.config.workers + 1)
        ]
        for worker in started:
            await anyio.to_thread.run_sync(worker.wait_ready)
        self.workers += started


@asynccontextmanager
async def deployed(
    cluster: PgCluster, database: str, config: Config, base: dict[str, str], directory: Path
) -> AsyncGenerator[Deployment]:
    """A fresh ``database`` and a process group for ``config`` (nothing started yet)."""
    cluster.psql(f'CREATE DATABASE "{database}"', database="postgres")
    env = {**base, "OPENBUDA_DATABASE_URL": cluster.url_for(database)}
    group = ProcessGroup(directory / database, env)
    try:
        yield Deployment(cluster, database, config, group)
    finally:
        await anyio.to_thread.run_sync(group.close)
        cluster.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', database="postgres")


# ---------------------------------------------------------------------------------------------
# Bursts


async def live_burst(deployment: Deployment, sessions: int, agents: int) -> Result:
    """Everything running; every message sent at once."""
    await deployment.start_api(with_workers=deployment.config.workers == 0)
    await deployment.start_workers()
    result = Result(deployment.config.label)
    async with _client(deployment.url) as http:
        session_ids = await _create_sessions(http, sessions, agents)
        connection: Any = await asyncpg.connect(deployment.dsn)
        try:
            async with _sampling(deployment, result):
                began = time.perf_counter()
                await _send_all(http, session_ids)
                result.send_seconds = time.perf_counter() - began
                await _until_done(connection, sessions)
            await _measure(connection, result)
        finally:
            await connection.close()
    return result


async def queued_burst(deployment: Deployment, sessions: int, agents: int) -> Result:
    """Every message stored while no worker runs; then the workers start and drain the queue.
    tasks/s counts from the first claim, so it is the workers' own pace."""
    await deployment.start_api(with_workers=False)
    result = Result(deployment.config.label)
    async with _client(deployment.url) as http:
        session_ids = await _create_sessions(http, sessions, agents)
        began = time.perf_counter()
        await _send_all(http, session_ids)
        result.send_seconds = time.perf_counter() - began
    connection: Any = await asyncpg.connect(deployment.dsn)
    try:
        await deployment.start_workers()
        async with _sampling(deployment, result):
            await _until_done(connection, sessions)
        await _measure(connection, result, since="started_at")
    finally:
        await connection.close()
    return result


@asynccontextmanager
async def _client(url: str) -> AsyncGenerator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=SEND_CONCURRENCY * 2, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120,
        limits=limits,
    ) as http:
        yield http


@asynccontextmanager
async def _sampling(deployment: Deployment, result: Result) -> AsyncGenerator[None]:
    """Sample every running process's RSS until the block ends; the peaks go to ``result``."""

    async def sample() -> None:
        while True:
            for process in deployment.processes:
                result.rss[process.name] = max(result.rss.get(process.name, 0), process.rss_bytes())
            await anyio.sleep(0.1)

    async with anyio.create_task_group() as group:
        group.start_soon(sample)
        yield
        group.cancel_scope.cancel()


async def _until_done(connection: Any, sessions: int) -> None:
    while True:  # completions are seen by polling the table, as in throughput.py
        if await _terminal_count(connection) >= sessions:
            return
        await anyio.sleep(0.1)


async def _create_sessions(http: httpx.AsyncClient, count: int, agents: int) -> list[str]:
    """``count`` sessions spread over ``agents`` agents (an agent's tasks all run on the worker
    its computer is placed on)."""
    agent_ids: list[str] = []
    for n in range(agents):
        body = {"name": f"bench-{n}", "model": "openai:bench"}
        agent_ids.append((await _post(http, "/v1/agents", body, f"a{n}")).json()["id"])
    ids: list[str] = [""] * count
    limiter = anyio.CapacityLimiter(SEND_CONCURRENCY)

    async def create(index: int) -> None:
        async with limiter:
            agent_id = agent_ids[index % len(agent_ids)]
            response = await _post(http, f"/v1/agents/{agent_id}/sessions", {}, f"s{index}")
            ids[index] = response.json()["id"]

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(create, index)
    return ids


async def _send_all(http: httpx.AsyncClient, session_ids: Sequence[str]) -> None:
    limiter = anyio.CapacityLimiter(SEND_CONCURRENCY)

    async def send(session_id: str) -> None:
        async with limiter:
            await _post(http, f"/v1/sessions/{session_id}/messages", {"text": "hello"}, session_id)

    async with anyio.create_task_group() as group:
        for session_id in session_ids:
            group.start_soon(send, session_id)


async def _post(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], key: str
) -> httpx.Response:
    """POST with an ``Idempotency-Key``, again after a dropped connection (a pooled keep-alive
    connection the server closed as it was reused): the key makes the retry safe."""
    for attempt in range(5):
        try:
            response = await http.post(path, json=body, headers={"Idempotency-Key": key})
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError):
            if attempt == 4:
                raise
            await anyio.sleep(0.1)
            continue
        if response.status_code == 409 and attempt < 4:  # the first attempt is still running
            await anyio.sleep(0.2)
            continue
        response.raise_for_status()
        return response
    raise AssertionError("unreachable")


async def _terminal_count(connection: Any) -> int:
    return int(
        await connection.fetchval(
            "SELECT count(*) FROM tasks WHERE status IN ('completed', 'failed', 'cancelled')"
        )
    )


async def _measure(connection: Any, result: Result, *, since: str = "created_at") -> None:
    """Throughput (from the first task's ``since``) and accepted → first step, from the stored
    times."""
    span = await connection.fetchrow(
        f"SELECT count(*) AS n, min({since}) AS first, max(finished_at) AS last, "
        "count(*) FILTER (WHERE status <> 'completed') AS failed FROM tasks"
    )
    result.tasks = int(span["n"])
    result.failed = int(span["failed"])
    result.seconds = (span["last"] - span["first"]).total_seconds()
    rows = await connection.fetch(
        "SELECT task_id, seq, type, at, data FROM events WHERE task_id IS NOT NULL "
        "ORDER BY session_id, seq"
    )
    accepted: dict[str, Any] = {}
    running: set[str] = set()
    first_step: dict[str, Any] = {}
    for row in rows:
        task_id = row["task_id"]
        if task_id in first_step:
            continue
        if row["type"] == "message" and task_id not in accepted:
            accepted[task_id] = row["at"]
        elif task_id in running:
            first_step[task_id] = row["at"]
        elif row["type"] == "task.status":
            data = json.loads(row["data"])
            if data.get("status") == "running":
                running.add(task_id)
                worker = str(data.get("worker"))
                result.claims[worker] = result.claims.get(worker, 0) + 1
    result.latencies = [
        (first_step[t] - accepted[t]).total_seconds() for t in first_step if t in accepted
    ]


# ---------------------------------------------------------------------------------------------
# Main


async def main(args: argparse.Namespace) -> None:
    sessions = args.sessions or (200 if args.quick else 1_000)
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    configs = [Config(f"{n} worker{'s' if n > 1 else ''}", n) for n in counts]
    configs.append(Config("single process", 0))
    print(f"openbuda scale-out on PostgreSQL · {machine_line()}")
    limit = None if args.default_limits else "1000"
    print(
        f"{sessions:,} sessions, one turn each, a {MODEL_DELAY * 1000:.0f} ms model, every "
        f"POST /messages at once ({SEND_CONCURRENCY} in flight), over {args.agents} agents; "
        f"{args.concurrency} tasks at "
        "once per process, "
        + (
            "the default limits per space and agent"
            if limit is None
            else "1,000 per space and agent"
        )
    )
    live: list[Result] = []
    queued: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="openbuda-bench-scale-") as tmp:
        directory = Path(tmp)
        script = directory / "model.json"
        script.write_text(json.dumps({"default": {"text": "done", "delay": MODEL_DELAY}}))
        base = child_environment(
            os.environ,
            OPENBUDA_DRIVE_BLOBS=str(directory / "blobs"),
            OPENBUDA_SECRET_KEY=secrets.token_urlsafe(24),
            OPENBUDA_BOOTSTRAP_API_KEY=API_KEY,
            OPENBUDA_LOG_LEVEL="WARNING",
            OPENBUDA_LOG_FORMAT="text",
            OPENAI_API_KEY="bench",
        )
        base["OPENBUDA_MAX_CONCURRENT_TASKS"] = str(args.concurrency)
        if limit is not None:
            base |= {"OPENBUDA_MAX_TASKS_PER_SPACE": limit, "OPENBUDA_MAX_TASKS_PER_AGENT": limit}
        with (
            PgCluster.start(max_connections=500) as cluster,
            ProcessGroup(directory / "model", base) as models,
        ):
            model_port = free_port()
            await anyio.to_thread.run_sync(
                lambda: models.spawn(
                    "model",
                    [
                        sys.executable,
                        "-m",
                        "openbuda.testing.openai_server",
                        "--script",
                        str(script),
                        "--port",
                        str(model_port),
                    ],
                    ready=log_probe("openai_server listening"),
                )
            )
            base["OPENAI_BASE_URL"] = f"http://127.0.0.1:{model_port}/v1"
            for number, config in enumerate(configs):
                async with deployed(cluster, f"live_{number}", config, base, directory) as done:
                    live.append(await live_burst(done, sessions, args.agents))
                async with deployed(cluster, f"queued_{number}", config, base, directory) as done:
                    queued.append(await queued_burst(done, sessions, args.agents))
                print(
                    f"  {config.label}: {live[-1].tasks_per_second:,.0f} tasks/s live (p99 "
                    f"{fmt_ms(percentile(live[-1].latencies, 0.99))} ms), "
                    f"{queued[-1].tasks_per_second:,.0f} tasks/s queued first"
                )
    _print(live, queued, sessions)


def _print(live: Sequence[Result], queued: Sequence[Result], sessions: int) -> None:
    title(
        f"1. {sessions:,} sessions, one turn each ({MODEL_DELAY * 1000:.0f} ms model), every "
        "POST /messages at once, through HTTP"
    )
    _print_burst(live)
    print(
        "seconds: first task created → last task finished (stored times); median/p99: the "
        "task's message stored → its first stored step after `running`"
    )
    title(
        f"2. queued first: {sessions:,} messages stored while no worker runs, then the workers "
        "start"
    )
    _print_burst(queued)
    print(
        "seconds: first task claimed → last task finished: the workers' own pace, without the "
        "API's intake. median/p99 include the wait in the queue."
    )
    title("peak RSS per process (MB): live burst | queued first")
    print_table(
        ["configuration", "API (or serve)", "workers", "all"],
        [
            [
                a.label,
                f"{_first_rss(a)} | {_first_rss(b)}",
                f"{_worker_rss(a)} | {_worker_rss(b)}",
                f"{sum(a.rss.values()) / 2**20:,.0f} | {sum(b.rss.values()) / 2**20:,.0f}",
            ]
            for a, b in zip(live, queued, strict=True)
        ],
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS of this (client) process: {peak / 1024:,.0f} MB")


def _first_rss(result: Result) -> str:
    """The API process (``api``, or ``serve`` for the single process)."""
    values = [v for name, v in result.rss.items() if name in ("api", "serve")]
    return f"{max(values, default=0) / 2**20:,.0f}"


def _worker_rss(result: Result) -> str:
    values = [v for name, v in result.rss.items() if name.startswith("worker")]
    return " / ".join(f"{v / 2**20:,.0f}" for v in values) or "—"


def _print_burst(results: Sequence[Result]) -> None:
    print_table(
        [
            "configuration",
            "tasks/s",
            "seconds",
            "sending s",
            "median ms",
            "p99 ms",
            "tasks per worker",
            "not completed",
        ],
        [
            [
                r.label,
                f"{r.tasks_per_second:,.0f}",
                f"{r.seconds:.2f}",
                f"{r.send_seconds:.2f}",
                fmt_ms(median(r.latencies)),
                fmt_ms(percentile(r.latencies, 0.99)),
                " / ".join(str(n) for _, n in sorted(r.claims.items())) if r.claims else "—",
                str(r.failed),
            ]
            for r in results
        ],
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="200 sessions instead of 1,000")
    parser.add_argument("--sessions", type=int, default=0, help="sessions per configuration")
    parser.add_argument(
        "--workers", default="1,2,4", help="worker process counts to measure (default 1,2,4)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="tasks each process runs at once (64)"
    )
    parser.add_argument(
        "--agents",
        type=int,
        default=100,
        help="agents the sessions are spread over (100; with 1, one worker runs everything)",
    )
    parser.add_argument(
        "--default-limits",
        action="store_true",
        help="keep the default limits per space and per agent (32) instead of 1,000",
    )
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args())
