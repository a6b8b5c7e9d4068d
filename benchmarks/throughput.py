"""Tasks per second in-process, and 1,000 sessions at once with a 200 ms model.

    python benchmarks/throughput.py [--quick] [--postgres URL]

On SQLite (and PostgreSQL when ``OPENBUDA_TEST_POSTGRES_URL`` or ``--postgres`` is set), through
``Runtime`` in this process (there is no HTTP API yet, so the BENCHMARKS.md target "through the
HTTP API" cannot be measured as such):

1. **Tasks per second** at 1, 10 and 100 concurrent sessions with a zero-latency model that
   takes three steps per task (a tool call, another tool call, the final answer): each client
   sends a message, waits for its task's terminal ``task.status`` (broadcaster subscription),
   and sends the next; it starts a new session every 10 tasks, so contexts stay small (this
   measures the loop; ``turn_cost.py`` measures context growth). Counted over a fixed window
   after a warm-up. CPU ms per task is this process's CPU time (all threads) in the window.
2. **1,000 sessions, one turn each, the model takes 200 ms**: every message is sent at once;
   turns per second = 1,000 / (first send → last completion), completion seen by polling the
   ``tasks`` table from a separate connection (nothing per session in this process). Variants:
   the engine limits raised to 1,000 concurrent tasks (what the target needs: at 200 ms a turn,
   400 turns/s needs ≥ 80 tasks in flight), and the defaults (64 per process, 32 per space).
3. **Memory per active session**: the 1,000 tasks are queued first, then the engine starts and
   runs them all at once; tracemalloc's peak above the baseline divided by the most tasks seen
   running at once, and what is still allocated per session once all are done (≈ 0: a finished
   or dormant session holds nothing). Peak RSS growth is printed too (coarser: the allocator
   keeps freed memory).
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from _common import (
    Backend,
    LogTally,
    SideDatabase,
    add_backend_arguments,
    backends,
    bench_settings,
    fmt_ms,
    machine_line,
    make_principal,
    median,
    percentile,
    print_table,
    title,
)
from sqlalchemy import func, select

from openbuda.domain.conversation import ModelInput, ModelReply, ToolResultTurn, ToolSpec, UserTurn
from openbuda.domain.events import EventType
from openbuda.domain.principal import Principal
from openbuda.domain.records import AgentSettings
from openbuda.domain.states import TaskStatus
from openbuda.engine.broadcaster import InProcessSubscription
from openbuda.engine.tools import ToolContext, ToolOutcome, ToolRegistry
from openbuda.ports import ModelClient
from openbuda.runtime import Runtime
from openbuda.stores import open_store
from openbuda.stores.schema import tasks
from openbuda.testing import FunctionModel, ReplyFunction, call

TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.WAITING}
)
TERMINAL_VALUES = sorted(status.value for status in TERMINAL)
TASKS_PER_SESSION = 10
NOISE_BYTES = 100 * 1024
"""How much the traced memory swings between identical bursts with nothing kept per session
(the driver's cursor weak-lists and the pool's bookkeeping): seen up to ~100 KB."""
MODEL_DELAY = 0.2
STEPS_MODEL = "test:three-steps"
SLOW_MODEL = "test:slow"


# ---------------------------------------------------------------------------------------------
# Model and tool


class Discard(list[ModelInput]):
    """Replaces ``FunctionModel.inputs``: a benchmark's model is called thousands of times and
    must not keep every input (that would be counted as memory per session)."""

    def append(self, item: ModelInput, /) -> None:
        return None


def three_steps(request: ModelInput) -> ModelReply | str:
    """A tool call, another tool call, then the final answer (by the results since the last
    user message, so any number of sessions can share the model)."""
    done = 0
    for turn in reversed(request.turns):
        if isinstance(turn, UserTurn):
            break
        if isinstance(turn, ToolResultTurn):
            done += 1
    if done < 2:
        return call("echo", text=f"lookup {done + 1}")
    return "Both lookups agree: the invoice matches the order."


async def slow_reply(_request: ModelInput) -> str:
    await anyio.sleep(MODEL_DELAY)
    return "Invoice checked: it matches the order."


def lean_model(fn: ReplyFunction, name: str) -> FunctionModel:
    model = FunctionModel(fn, name=name)
    model.inputs = Discard()
    return model


@dataclass(frozen=True, slots=True)
class EchoTool:
    """A tool that answers at once."""

    idempotent: bool = True

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="echo",
            description="Echo the text back.",
            parameters={
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        )

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        return ToolOutcome(f"echo: {args['text']}")


# ---------------------------------------------------------------------------------------------
# Part 1: tasks per second at 1, 10 and 100 concurrent sessions


@dataclass(slots=True)
class Window:
    """Opens once ``warm_tasks`` tasks finished (warm-up), closes after ``min_tasks`` more and
    ``min_seconds``; the tasks that finish inside it are counted. Clients start together, so
    completions come in waves at first: a window must hold at least one task per client."""

    clients: int
    warm_tasks: int
    min_tasks: int
    min_seconds: float
    finished: int = 0
    start: float | None = None
    end: float | None = None
    latencies: list[float] = field(default_factory=list[float])
    errors: int = 0
    cpu: float = 0.0

    def record(self, started: float, finished: float, completed: bool) -> None:
        self.finished += 1
        if self.start is None:
            if self.finished >= self.warm_tasks:
                self.start = finished
                self.cpu = time.process_time()
            return
        if self.end is not None:
            return
        if completed:
            self.latencies.append(finished - started)
        else:
            self.errors += 1
        if len(self.latencies) >= self.min_tasks and finished - self.start >= self.min_seconds:
            self.end = finished
            self.cpu = time.process_time() - self.cpu

    @property
    def rate(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return len(self.latencies) / (self.end - self.start)


async def client(runtime: Runtime, principal: Principal, agent_id: str, window: Window) -> None:
    session_id = ""
    sent = 0
    while window.end is None:
        if sent % TASKS_PER_SESSION == 0:
            session_id = (await runtime.sessions.create(principal, agent_id)).id
        subscription = runtime.broadcaster.subscribe(session_id)
        try:
            started = time.perf_counter()
            accepted = await runtime.sessions.send(principal, session_id, f"check invoice {sent}")
            status = await terminal_status(subscription, accepted.task_id)
        finally:
            await subscription.close()
        window.record(started, time.perf_counter(), status == TaskStatus.COMPLETED)
        sent += 1


async def terminal_status(subscription: InProcessSubscription, task_id: str) -> str:
    with anyio.fail_after(120):
        async for item in subscription:
            if (
                item["type"] == EventType.TASK_STATUS
                and item.get("task_id") == task_id
                and item["data"]["status"] in TERMINAL
            ):
                return str(item["data"]["status"])
    raise RuntimeError(f"the subscription ended before task {task_id!r} did")


async def tasks_per_second(
    runtime: Runtime, principal: Principal, agent_id: str, window: Window
) -> Window:
    async with anyio.create_task_group() as group:
        for _ in range(window.clients):
            group.start_soon(client, runtime, principal, agent_id, window)
    return window


# ---------------------------------------------------------------------------------------------
# Parts 2 and 3: 1,000 sessions, one turn each, a 200 ms model


class TaskCounter:
    """Counts an agent's finished tasks from a connection of its own (polling the table)."""

    def __init__(self, url: str) -> None:
        self.database = SideDatabase(url)

    async def finished(self, agent_id: str) -> tuple[int, int]:
        """(finished tasks, of which completed)."""
        statement = select(
            func.count().label("finished"),
            func.count().filter(tasks.c.status == "completed").label("completed"),
        ).where(tasks.c.agent_id == agent_id, tasks.c.status.in_(TERMINAL_VALUES))
        row = (await self.database.execute(statement))[0]
        return int(row.finished), int(row.completed)

    async def latencies(self, agent_id: str) -> list[float]:
        """Seconds from each task's creation to its end (the stored times)."""
        statement = select(tasks.c.created_at, tasks.c.finished_at).where(
            tasks.c.agent_id == agent_id, tasks.c.finished_at.is_not(None)
        )
        rows = await self.database.execute(statement)
        return [(row.finished_at - row.created_at).total_seconds() for row in rows]

    async def close(self) -> None:
        await self.database.close()


@dataclass(slots=True)
class Burst:
    label: str
    sessions: int
    seconds: float = 0.0
    send_seconds: float = 0.0
    completed: int = 0
    errors: int = 0
    peak_running: int = 0
    latencies: list[float] = field(default_factory=list[float])
    cpu: float = 0.0
    rss_growth: int = 0
    traced_peak: int = 0
    kept_per_session: float = 0.0
    kept_sessions: int = 0

    @property
    def turns_per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


async def new_sessions(
    runtime: Runtime, principal: Principal, agent_id: str, count: int
) -> list[str]:
    return [(await runtime.sessions.create(principal, agent_id)).id for _ in range(count)]


async def watch(
    runtime: Runtime, counter: TaskCounter, agent_id: str, total: int, burst: Burst
) -> None:
    """Until ``total`` tasks of the agent finished: sample running tasks and RSS."""
    rss_before = rss_bytes()
    rss_peak = rss_before
    polls = 0
    with anyio.fail_after(600):
        while True:
            burst.peak_running = max(burst.peak_running, runtime.organizer.running_count)
            rss_peak = max(rss_peak, rss_bytes())
            polls += 1
            if polls % 5 == 0:
                finished, completed = await counter.finished(agent_id)
                if finished >= total:
                    burst.completed = completed
                    burst.errors = finished - completed
                    break
            await anyio.sleep(0.004)
    burst.rss_growth = rss_peak - rss_before


async def send_all(
    runtime: Runtime, principal: Principal, session_ids: Sequence[str], burst: Burst
) -> None:
    errors = 0

    async def send(session_id: str) -> None:
        nonlocal errors
        try:
            await runtime.sessions.send(principal, session_id, "Please check invoice INV-000042.")
        except Exception:
            errors += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for session_id in session_ids:
            group.start_soon(send, session_id)
    burst.send_seconds = time.perf_counter() - started
    burst.errors += errors


async def burst_concurrent_sends(
    runtime: Runtime,
    counter: TaskCounter,
    principal: Principal,
    agent_id: str,
    sessions: int,
    label: str,
) -> Burst:
    """Every message sent at once while the engine runs."""
    burst = Burst(label, sessions)
    session_ids = await new_sessions(runtime, principal, agent_id, sessions)
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as group:
        group.start_soon(watch, runtime, counter, agent_id, sessions, burst)
        await send_all(runtime, principal, session_ids, burst)
    burst.seconds = time.perf_counter() - started
    burst.cpu = time.process_time() - cpu
    burst.latencies = await counter.latencies(agent_id)
    return burst


async def burst_prequeued(
    runtime: Runtime,
    counter: TaskCounter,
    principal: Principal,
    sessions: int,
    label: str,
    *,
    traced_rounds: int = 0,
) -> Burst:
    """The messages are stored first (engine stopped); then the engine starts and runs them all.

    Under tracemalloc it runs ``traced_rounds`` times: the peak above each round's baseline,
    divided by the tasks running at once, is the memory of an active session; the growth of
    what stays allocated after each round (a regression slope over the rounds after the first,
    which warms caches), per session, is what finished sessions keep.
    """
    traced = traced_rounds > 0
    burst = Burst(label, sessions)
    retained: list[int] = []
    for round_number in range(max(1, traced_rounds)):
        agent_id = await make_agent(runtime, principal, SLOW_MODEL, f"queued-{round_number}")
        session_ids = await new_sessions(runtime, principal, agent_id, sessions)
        await send_all(runtime, principal, session_ids, burst)
        gc.collect()
        if traced and not tracemalloc.is_tracing():
            tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0] if traced else 0
        tracemalloc.reset_peak()
        started, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as group:
            await group.start(runtime.organizer.run)
            await watch(runtime, counter, agent_id, sessions, burst)
            if round_number == 0:
                burst.seconds = time.perf_counter() - started
                burst.cpu = time.process_time() - cpu
                burst.latencies = await counter.latencies(agent_id)
            if traced:
                burst.traced_peak = max(
                    burst.traced_peak, tracemalloc.get_traced_memory()[1] - baseline
                )
            group.cancel_scope.cancel()
        if traced:
            await anyio.sleep(0.1)
            gc.collect()
            retained.append(tracemalloc.get_traced_memory()[0])
    if traced:
        tracemalloc.stop()
        # the first round warms caches; the slope over the later ones is what sessions keep
        later = retained[1:] if len(retained) > 2 else retained
        slope = statistics.linear_regression(range(len(later)), later).slope
        burst.kept_per_session = slope / sessions
        burst.kept_sessions = sessions * (len(later) - 1)
    return burst


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    concurrency: tuple[int, ...]
    warm_per_client: float
    tasks_per_client: float
    min_tasks: int
    min_seconds: float
    sessions: int
    default_limits: bool
    untraced_queued: bool
    traced_rounds: int


def engine_models() -> Callable[[str | None], ModelClient]:
    models: dict[str, ModelClient] = {
        STEPS_MODEL: lean_model(three_steps, STEPS_MODEL),
        SLOW_MODEL: lean_model(slow_reply, SLOW_MODEL),
    }
    return lambda spec: models[spec or STEPS_MODEL]


async def make_agent(
    runtime: Runtime, principal: Principal, model: str, name: str = "bench"
) -> str:
    agent = await runtime.agents.create(principal, name=name, model=model, settings=AgentSettings())
    return agent.id


async def run_backend(backend: Backend, plan: Plan, workdir: Path, tally: LogTally) -> None:
    raised = {"max_concurrent_tasks": 1_000, "max_tasks_per_space": 1_000}
    counter = TaskCounter(backend.url)
    store = open_store(backend.url)
    title(f"{backend.name}: {type(store).__name__}")
    try:
        home = workdir / f"home-{backend.name}"
        # 1. tasks per second, limits raised so that they are not what is measured
        async with Runtime.start(
            bench_settings(home, **raised),
            store=store,
            models=engine_models(),
            tools=ToolRegistry([EchoTool()]),
        ) as runtime:
            principal = await make_principal(store, "tasks-per-second")
            agent_id = await make_agent(runtime, principal, STEPS_MODEL)
            await tasks_per_second(runtime, principal, agent_id, Window(1, 1, 20, 0.5))  # warm-up
            rows: list[list[str]] = []
            for clients in plan.concurrency:
                window = await tasks_per_second(
                    runtime,
                    principal,
                    agent_id,
                    Window(
                        clients,
                        max(1, round(clients * plan.warm_per_client)),
                        max(plan.min_tasks, round(clients * plan.tasks_per_client)),
                        plan.min_seconds,
                    ),
                )
                done = len(window.latencies)
                rate = window.rate
                rows.append(
                    [
                        f"{clients}",
                        str(done),
                        f"{rate:,.1f}",
                        f"{rate * 3:,.1f}",
                        fmt_ms(median(window.latencies)),
                        fmt_ms(percentile(window.latencies, 0.99)),
                        f"{window.cpu / done * 1000:.1f}" if done else "-",
                        str(window.errors),
                    ]
                )
            title(
                f"{backend.name}: tasks per second, zero-latency model, 3 steps per task "
                "(tool call, tool call, answer)"
            )
            print_table(
                [
                    "sessions",
                    "tasks",
                    "tasks/s",
                    "model steps/s",
                    "median ms",
                    "p99 ms",
                    "cpu ms/task",
                    "errors",
                ],
                rows,
            )
            print(
                "targets: none in BENCHMARKS.md for this; peers spend 5–19 ms of CPU per turn "
                f"in their own framework code.\nengine warnings and errors: {tally.take()}"
            )

            # 2. 1,000 sessions, one turn each, 200 ms model, messages sent at once
            bursts: list[Burst] = []
            slow_principal = await make_principal(store, "one-turn-each")
            slow_agent = await make_agent(runtime, slow_principal, SLOW_MODEL)
            bursts.append(
                await burst_concurrent_sends(
                    runtime,
                    counter,
                    slow_principal,
                    slow_agent,
                    plan.sessions,
                    "all sent at once, limits 1,000/1,000",
                )
            )
        if plan.default_limits:
            async with Runtime.start(
                bench_settings(home),
                store=store,
                models=engine_models(),
                tools=ToolRegistry([EchoTool()]),
            ) as runtime:
                default_principal = await make_principal(store, "default-limits")
                default_agent = await make_agent(runtime, default_principal, SLOW_MODEL)
                bursts.append(
                    await burst_concurrent_sends(
                        runtime,
                        counter,
                        default_principal,
                        default_agent,
                        plan.sessions,
                        "all sent at once, default limits 64/32",
                    )
                )
        # 3. queued first, then the engine runs them all: throughput and memory
        for traced in (False, True) if plan.untraced_queued else (True,):
            rounds = plan.traced_rounds if traced else 0
            async with Runtime.start(
                bench_settings(home, **raised),
                store=store,
                models=engine_models(),
                tools=ToolRegistry([EchoTool()]),
                run_engine=False,
            ) as runtime:
                queued_principal = await make_principal(store, f"queued-{traced}")
                label = "queued first, then run" + (" (under tracemalloc)" if traced else "")
                bursts.append(
                    await burst_prequeued(
                        runtime,
                        counter,
                        queued_principal,
                        plan.sessions,
                        label,
                        traced_rounds=rounds,
                    )
                )
        report_bursts(backend, bursts)
        print(f"engine warnings and errors: {tally.take()}")
    finally:
        await counter.close()
        await store.close()


def report_bursts(backend: Backend, bursts: Sequence[Burst]) -> None:
    title(
        f"{backend.name}: {bursts[0].sessions:,} sessions, one turn each, the model takes "
        f"{MODEL_DELAY * 1000:.0f} ms"
    )
    rows: list[list[str]] = []
    for burst in bursts:
        rows.append(
            [
                burst.label,
                f"{burst.turns_per_second:,.0f}",
                f"{burst.seconds:.2f}",
                f"{burst.send_seconds:.2f}" if burst.send_seconds else "-",
                str(burst.peak_running),
                fmt_ms(median(burst.latencies)),
                fmt_ms(percentile(burst.latencies, 0.99)),
                f"{burst.cpu / max(burst.completed, 1) * 1000:.1f}",
                str(burst.errors),
            ]
        )
    print_table(
        [
            "run",
            "turns/s",
            "seconds",
            "sending s",
            "peak running",
            "median ms",
            "p99 ms",
            "cpu ms/turn",
            "errors",
        ],
        rows,
    )
    print(
        "median/p99: task created → finished, from the stored times. "
        "target: ≥ 400 turns/s (through the HTTP API), 0 errors."
    )
    for burst in bursts:
        if burst.traced_peak:
            per_active = burst.traced_peak / max(burst.peak_running, 1)
            per_after = burst.kept_per_session
            noise = NOISE_BYTES / max(burst.kept_sessions, 1)
            if noise > 100:
                verdict = f"too few sessions to tell (noise ±{noise:,.0f} B per session)"
            elif per_after < 100:
                verdict = "met"
            else:
                verdict = "NOT met"
            print(
                f"memory while active (tracemalloc peak above baseline / peak running): "
                f"{per_active / 1024:,.1f} KB per session ({burst.traced_peak / 1024:,.0f} KB / "
                f"{burst.peak_running}) → target ≤ 30 KB: "
                f"{'met' if per_active <= 30 * 1024 else 'NOT met'}\n"
                f"memory kept by finished sessions (growth of what stays allocated, over "
                f"{burst.kept_sessions:,} more sessions in bursts of {burst.sessions:,}): "
                f"{per_after:,.0f} B per session → target 0 when dormant: {verdict} (under "
                "100 B counts as 0: driver cursor lists and pool bookkeeping swing by about "
                "±100 KB between bursts)"
            )
        elif burst.label.startswith("queued"):
            print(
                f"peak RSS growth while running ({burst.label}): "
                f"{burst.rss_growth / 1024:,.0f} KB = "
                f"{burst.rss_growth / max(burst.peak_running, 1) / 1024:,.1f} KB per running task"
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS of this process so far: {peak / 1024:,.0f} MB")


async def main(args: argparse.Namespace) -> None:
    plan = (
        Plan(
            (1, 10, 100),
            warm_per_client=0.5,
            tasks_per_client=1.0,
            min_tasks=20,
            min_seconds=0.5,
            sessions=100,
            default_limits=False,
            untraced_queued=False,
            traced_rounds=2,
        )
        if args.quick
        else Plan(
            (1, 10, 100),
            warm_per_client=1.0,
            tasks_per_client=2.0,
            min_tasks=200,
            min_seconds=6.0,
            sessions=1_000,
            default_limits=True,
            untraced_queued=True,
            traced_rounds=4,
        )
    )
    if args.sessions:
        plan = replace(plan, sessions=args.sessions)
    print(f"openbuda throughput · {machine_line()}")
    tally = LogTally().install()
    with tempfile.TemporaryDirectory(prefix="openbuda-bench-") as workdir:
        async with backends(args, Path(workdir)) as found:
            for backend in found:
                await run_backend(backend, plan, Path(workdir), tally)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter windows and 100 sessions instead of 1,000: under a minute",
    )
    parser.add_argument("--sessions", type=int, default=0, help="sessions of the 200 ms bursts")
    add_backend_arguments(parser)
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args())
