"""Per-turn cost as a session's history grows, and the bytes a turn stores.

    python benchmarks/turn_cost.py [--quick] [--postgres URL]

For sessions with 10, 1,000 and 10,000 prior events, on SQLite (and PostgreSQL when
``OPENBUDA_TEST_POSTGRES_URL`` or ``--postgres`` is set), two measurements per history size:

a) **in-process turn**: ``sessions.send`` → the organizer claims the task → the loop builds the
   model input from the stored context projection → a zero-latency ``FunctionModel`` replies →
   the reply and the result are stored. Timed from ``send`` to the terminal ``task.status``
   event, received through a broadcaster subscription (event-driven, no polling).
b) **store-level turn**: append the seven events a real one-step turn writes (one write
   transaction) + read the context (``get_context`` and the conversation events after
   ``through_seq``) and build the next model input (``build_turns`` + ``build_input``).

Each in three context states, set before every turn (not timed), so that each turn starts from
the same state:

- **compacted**: what compaction leaves: a summary plus the events of the last three turns
  (``through_seq`` = last seq − 21). The figure the target is about (ARCHITECTURE §4: resuming
  costs O(context window), never O(history)).
- **at budget**: the steady state of a long session under the default ``context_token_budget``
  (24,000 tokens): a summary plus the most recent whole turns that fit in 18,000 tokens (the
  engine keeps ≤ 12,000 after a compaction and compacts past 24,000). A 10-event session never
  gets there, so compare 10,000 with 1,000 here.
- **uncompacted**: no projection (``through_seq`` = 0): every turn reads the whole history.
  Expected to grow.

The agent's own ``context_token_budget`` is raised so the engine never compacts by itself.

Histories are made of realistic turns (user message, ``task.status`` ×3, ``model.response``,
assistant message, ``task.result``: what the engine writes), bulk-appended in batches, with a
completed task row per turn. Each session serves only a few measured turns, so a history grows
by at most 10 % while it is measured. Sizes and modes are interleaved turn by turn, so that the
noise of a shared machine hits all of them alike: compare the ratios, not absolute times.

Bytes per turn: on SQLite, the growth of the pages in use after a WAL checkpoint (and a
``dbstat`` breakdown by table and index) over many turns of a 10,000-event session; on
PostgreSQL the growth of the relations. Printed next to the turn's own payload (the JSON of the
user text and of the reply).
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import asyncpg  # pyright: ignore[reportMissingTypeStubs]
from _common import (
    Backend,
    LogTally,
    SideDatabase,
    add_backend_arguments,
    backends,
    bench_settings,
    fmt_bytes,
    fmt_ms,
    fmt_ratio,
    machine_line,
    make_principal,
    median,
    percentile,
    print_table,
    title,
)
from sqlalchemy import Engine, event, make_url

from openbuda.domain.conversation import ModelInput
from openbuda.domain.events import CONVERSATION_TYPES, EventType, NewEvent
from openbuda.domain.ids import new_id
from openbuda.domain.principal import Principal
from openbuda.domain.records import AgentSettings, TaskResult
from openbuda.domain.states import TaskStatus
from openbuda.engine.broadcaster import InProcessSubscription
from openbuda.engine.context import (
    build_input,
    build_turns,
    choose_compaction_boundary,
    estimate_tokens,
)
from openbuda.engine.tools import ToolRegistry
from openbuda.ports import ContextProjection, ReadEvents, Store
from openbuda.runtime import Runtime
from openbuda.service.sessions import HistoryMessage
from openbuda.stores import open_store
from openbuda.stores.schema import tasks
from openbuda.testing import FunctionModel

SIZES = (10, 1_000, 10_000)
Mode = Literal["compacted", "budget", "uncompacted"]
MODES: tuple[Mode, ...] = ("compacted", "budget", "uncompacted")
MODE_LABELS: dict[Mode, str] = {
    "compacted": "compacted",
    "budget": "at budget",
    "uncompacted": "uncompacted",
}
TURN_EVENTS = 7
"""A one-step turn stores: user message, task.status queued and running, model.response,
assistant message, task.result, task.status completed."""
KEEP_EVENTS = 3 * TURN_EVENTS
"""Events left after the compacted range: the last three turns."""
BUDGET_KEEP_TOKENS = 18_000
"""The "at budget" state: the midpoint between what compaction keeps (budget / 2) and the
budget that triggers it (24,000 by default)."""
BUDGET_WINDOW = 3_000
"""Events read (not timed) to find the "at budget" boundary: more than 18,000 tokens' worth."""
DRIFT = 0.10
"""How much a session's history may grow while it is measured."""
APPEND_BATCH = 1_000
TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.WAITING}
)
READ_TYPES = frozenset(str(kind) for kind in CONVERSATION_TYPES)
INSTRUCTIONS = "You are a careful assistant for the accounts team. Answer briefly and precisely."
SUMMARY = (
    "The user works in the accounts team and checks supplier invoices against purchase orders. "
    * 22
).strip()
"""About 2 KB: what a compaction summary of a long session looks like."""


def json_size(value: object) -> int:
    """Bytes of ``value`` as compact JSON text, the way the store writes payloads."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def user_text(number: int) -> str:
    return (
        f"Could you check invoice INV-{number:06d} from Northwind against purchase order "
        f"PO-{number % 977:04d} and tell me whether the amounts and the VAT match?"
    )


def reply_text(number: int) -> str:
    return (
        f"Invoice INV-{number:06d} matches purchase order PO-{number % 977:04d}: 14 lines, net "
        "4,182.50 EUR, VAT 19 % = 794.68 EUR, total 4,977.18 EUR. The delivery date on the "
        "invoice (12 March) is two days after the one on the order; everything else agrees, so "
        "it can be approved once the goods receipt is booked."
    )


# ---------------------------------------------------------------------------------------------
# The bench: a runtime over one store, a model, pools of sessions


class ReplyMaker:
    """The zero-latency model's function: a unique, realistic reply per call."""

    def __init__(self) -> None:
        self.calls = 0
        self.last_input_turns = 0

    def __call__(self, request: ModelInput) -> str:
        self.calls += 1
        self.last_input_turns = len(request.turns)
        return reply_text(1_000_000 + self.calls)


@dataclass(slots=True)
class Sample:
    wall: float
    cpu: float
    prior_events: int
    input_turns: int


class Seeder:
    """Bulk-inserts the completed task rows of seeded turns through an engine of its own on the
    schema's ``tasks`` table (one statement per session instead of three per task). Seeding
    only: nothing measured goes through it."""

    def __init__(self, url: str) -> None:
        self.database = SideDatabase(url)

    async def insert_tasks(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self.database.execute(tasks.insert(), rows)

    async def close(self) -> None:
        await self.database.close()


@dataclass(slots=True)
class Bench:
    backend: Backend
    runtime: Runtime
    principal: Principal
    agent_id: str
    model: FunctionModel
    replies: ReplyMaker
    seeder: Seeder
    user_numbers: int = 0
    counter: StatementCounter | None = None

    @property
    def store(self) -> Store:
        return self.runtime.store

    def next_user_text(self) -> str:
        self.user_numbers += 1
        return user_text(2_000_000 + self.user_numbers)


@dataclass(slots=True)
class Pool:
    """Sessions with ``size`` prior events; each serves ``turns_per_session`` turns."""

    size: int
    turns_per_session: int
    sessions: list[str] = field(default_factory=list[str])
    uses: int = 0

    def take(self) -> str:
        index = self.uses // self.turns_per_session
        self.uses += 1
        return self.sessions[index]


def turns_per_session(size: int) -> int:
    return max(1, math.floor(size * DRIFT / TURN_EVENTS))


async def seed_session(bench: Bench, size: int) -> str:
    """A session of ``size`` events: imported messages, then whole turns with task rows."""
    turns = max(0, (size - 1) // TURN_EVENTS)
    pad = size - 1 - turns * TURN_EVENTS
    if pad % 2 and turns:
        turns -= 1
        pad += TURN_EVENTS
    history = [
        HistoryMessage("user" if index % 2 == 0 else "assistant", user_text(index))
        for index in range(pad)
    ]
    principal = bench.principal
    session = await bench.runtime.sessions.create(
        principal, bench.agent_id, title=f"history of {size} events", history=history
    )
    now = datetime.now(UTC)
    seq = session.last_seq
    events: list[NewEvent] = []
    seeded_tasks: list[tuple[str, str, TaskResult]] = []
    for number in range(turns):
        task_id, message_id = new_id("task"), new_id("message")
        text = reply_text(number)
        result = TaskResult(text)
        events += [
            NewEvent(
                EventType.MESSAGE,
                {"role": "user", "text": user_text(number), "message_id": message_id},
                task_id,
            ),
            NewEvent(EventType.TASK_STATUS, {"status": "queued"}, task_id),
            NewEvent(EventType.TASK_STATUS, {"status": "running"}, task_id),
            NewEvent(
                EventType.MODEL_RESPONSE,
                {"text": text, "tool_calls": [], "input_seq": seq + 3},
                task_id,
            ),
            NewEvent(
                EventType.MESSAGE,
                {"role": "assistant", "text": text, "message_id": new_id("message")},
                task_id,
            ),
            NewEvent(EventType.TASK_RESULT, result.to_json(), task_id),
            NewEvent(EventType.TASK_STATUS, {"status": "completed"}, task_id),
        ]
        seq += TURN_EVENTS
        seeded_tasks.append((task_id, message_id, result))
    space_id = principal.space_id
    async with bench.store.write() as tx:
        for start in range(0, len(events), APPEND_BATCH):
            await tx.append(space_id, session.id, events[start : start + APPEND_BATCH], now)
    await bench.seeder.insert_tasks(
        [
            {
                "id": task_id,
                "space_id": space_id,
                "agent_id": bench.agent_id,
                "session_id": session.id,
                "status": TaskStatus.COMPLETED.value,
                "message_id": message_id,
                "created_at": now,
                "started_at": now,
                "finished_at": now,
                "question": None,
                "result": json.dumps(result.to_json(), separators=(",", ":"), ensure_ascii=False),
                "error_code": None,
                "error_message": None,
                "lease_owner": None,
                "lease_until": None,
                "lease_epoch": 1,
                "steer_count": 0,
                "attempts": 1,
            }
            for task_id, message_id, result in seeded_tasks
        ]
    )
    return session.id


async def last_seq(bench: Bench, session_id: str) -> int:
    async with bench.store.read() as tx:
        session = await tx.get_session(bench.principal.space_id, session_id, datetime.now(UTC))
    assert session is not None
    return session.last_seq


async def prepare(bench: Bench, session_id: str, mode: Mode) -> int:
    """Set the context projection for the next turn (not timed); the session's last seq."""
    space_id = bench.principal.space_id
    last = await last_seq(bench, session_id)
    if mode == "uncompacted":
        return last
    if mode == "compacted":
        through = max(0, last - KEEP_EVENTS)
    else:
        through = await _budget_boundary(bench, session_id, last)
    async with bench.store.read() as tx:
        kept = await tx.read_events(
            ReadEvents(space_id, session_id, after_seq=through, types=READ_TYPES)
        )
    projection = ContextProjection(
        summary=SUMMARY if through else "",
        through_seq=through,
        tokens_after=sum(estimate_tokens(e) for e in kept),
    )
    async with bench.store.write() as tx:
        await tx.put_context(space_id, session_id, projection)
    return last


async def _budget_boundary(bench: Bench, session_id: str, last: int) -> int:
    """The ``through_seq`` that leaves the latest whole turns within 18,000 tokens."""
    start = max(0, last - BUDGET_WINDOW)
    async with bench.store.read() as tx:
        window = await tx.read_events(
            ReadEvents(bench.principal.space_id, session_id, after_seq=start, types=READ_TYPES)
        )
    if start == 0 and sum(estimate_tokens(e) for e in window) <= BUDGET_KEEP_TOKENS:
        return 0
    boundary = choose_compaction_boundary(
        window, keep_tokens=BUDGET_KEEP_TOKENS, not_after_seq=last
    )
    return 0 if boundary is None else boundary - 1


async def turn_in_process(bench: Bench, session_id: str, mode: Mode) -> Sample:
    prior = await prepare(bench, session_id, mode)
    runtime = bench.runtime
    text = bench.next_user_text()
    subscription = runtime.broadcaster.subscribe(session_id)
    try:
        if bench.counter is not None:
            bench.counter.active = True
        wall, cpu = time.perf_counter(), time.process_time()
        accepted = await runtime.sessions.send(bench.principal, session_id, text)
        status = await _terminal_status(subscription, accepted.task_id)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        if bench.counter is not None:
            bench.counter.active = False
        await subscription.close()
    if status != TaskStatus.COMPLETED:
        raise RuntimeError(f"task {accepted.task_id!r} ended {status!r}, not completed")
    bench.model.inputs.clear()
    return Sample(wall, cpu, prior, bench.replies.last_input_turns)


async def _terminal_status(subscription: InProcessSubscription, task_id: str) -> str:
    with anyio.fail_after(120):
        async for item in subscription:
            if (
                item["type"] == EventType.TASK_STATUS
                and item.get("task_id") == task_id
                and item["data"]["status"] in TERMINAL
            ):
                return str(item["data"]["status"])
    raise RuntimeError(f"the subscription ended before task {task_id!r} did")


async def turn_in_store(bench: Bench, session_id: str, mode: Mode) -> Sample:
    prior = await prepare(bench, session_id, mode)
    space_id = bench.principal.space_id
    task_id = new_id("task")
    text = reply_text(3_000_000 + prior)
    events = [
        NewEvent(
            EventType.MESSAGE,
            {"role": "user", "text": bench.next_user_text(), "message_id": new_id("message")},
            task_id,
        ),
        NewEvent(EventType.TASK_STATUS, {"status": "queued"}, task_id),
        NewEvent(EventType.TASK_STATUS, {"status": "running"}, task_id),
        NewEvent(
            EventType.MODEL_RESPONSE,
            {"text": text, "tool_calls": [], "input_seq": prior + 3},
            task_id,
        ),
        NewEvent(
            EventType.MESSAGE,
            {"role": "assistant", "text": text, "message_id": new_id("message")},
            task_id,
        ),
        NewEvent(EventType.TASK_RESULT, {"text": text, "files": []}, task_id),
        NewEvent(EventType.TASK_STATUS, {"status": "completed"}, task_id),
    ]
    store = bench.store
    wall, cpu = time.perf_counter(), time.process_time()
    async with store.write() as tx:
        await tx.append(space_id, session_id, events, datetime.now(UTC))
    async with store.read() as tx:
        context = await tx.get_context(space_id, session_id) or ContextProjection()
        stored = await tx.read_events(
            ReadEvents(space_id, session_id, after_seq=context.through_seq, types=READ_TYPES)
        )
    model_input = build_input(
        instructions=INSTRUCTIONS,
        memory=None,
        summary=context.summary,
        turns=build_turns(stored),
        tools=(),
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Sample(wall, cpu, prior, len(model_input.turns))


# ---------------------------------------------------------------------------------------------
# The measurement plan


@dataclass(frozen=True, slots=True)
class Plan:
    turns: int
    warmup: int
    full_turns: int
    full_warmup: int
    bytes_turns: int

    def count(self, mode: Mode) -> int:
        if mode == "compacted":
            return self.warmup + self.turns
        return self.full_warmup + self.full_turns

    def warm(self, mode: Mode) -> int:
        return self.warmup if mode == "compacted" else self.full_warmup


Key = tuple[str, int, Mode]
"""(measurement ``a``/``b``, history size, context mode)."""


@dataclass(slots=True)
class Results:
    samples: dict[Key, list[Sample]] = field(default_factory=dict[Key, list[Sample]])
    seeded_events: int = 0
    seed_seconds: float = 0.0

    def add(self, key: Key, sample: Sample) -> None:
        self.samples.setdefault(key, []).append(sample)


async def run_turns(bench: Bench, plan: Plan, sizes: Sequence[int]) -> Results:
    results = Results()
    pools: dict[tuple[int, Mode], Pool] = {}
    started = time.perf_counter()
    for size in sizes:
        for mode in MODES:
            pool = Pool(size, turns_per_session(size))
            needed = 2 * plan.count(mode)
            for _ in range(math.ceil(needed / pool.turns_per_session)):
                pool.sessions.append(await seed_session(bench, size))
                results.seeded_events += size
            pools[size, mode] = pool
    results.seed_seconds = time.perf_counter() - started
    print(
        f"  seeded {results.seeded_events:,} events in "
        f"{sum(len(p.sessions) for p in pools.values())} sessions in "
        f"{results.seed_seconds:.1f} s ({results.seeded_events / results.seed_seconds:,.0f} "
        "events/s)",
        flush=True,
    )
    measures: dict[str, Callable[[Bench, str, Mode], Awaitable[Sample]]] = {
        "a": turn_in_process,
        "b": turn_in_store,
    }
    rounds = max(plan.count(mode) for mode in MODES)
    for round_index in range(rounds):
        for size in sizes:
            for mode in MODES:
                if round_index >= plan.count(mode):
                    continue
                for kind, measure in measures.items():
                    session_id = pools[size, mode].take()
                    sample = await measure(bench, session_id, mode)
                    if round_index >= plan.warm(mode):
                        results.add((kind, size, mode), sample)
        if (round_index + 1) % 10 == 0:
            print(f"  … round {round_index + 1}/{rounds}", flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# Bytes per turn


@dataclass(slots=True)
class Sizes:
    total: int
    parts: dict[str, tuple[int, int]]
    """name → (bytes on pages, record bytes)."""


def sqlite_sizes(path: Path) -> Sizes:
    connection = sqlite3.connect(path, timeout=30)
    try:
        for _ in range(100):
            busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                break
            time.sleep(0.01)
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        rows = connection.execute(
            "SELECT name, SUM(pgsize), SUM(payload) FROM dbstat GROUP BY name"
        ).fetchall()
    finally:
        connection.close()
    return Sizes((pages - free) * page_size, {str(r[0]): (int(r[1]), int(r[2])) for r in rows})


def sqlite_turn_rows(path: Path, session_id: str, after_seq: int, marker: str) -> dict[str, int]:
    connection = sqlite3.connect(path, timeout=30)
    try:
        data, columns = connection.execute(
            "SELECT SUM(LENGTH(CAST(data AS BLOB))), SUM(LENGTH(CAST(session_id AS BLOB)) "
            "+ LENGTH(CAST(id AS BLOB)) + LENGTH(CAST(space_id AS BLOB)) "
            "+ LENGTH(CAST(type AS BLOB)) + COALESCE(LENGTH(CAST(task_id AS BLOB)), 0) "
            "+ LENGTH(CAST(at AS BLOB))) FROM events WHERE session_id = ? AND seq > ?",
            (session_id, after_seq),
        ).fetchone()
        copies = connection.execute(
            "SELECT COUNT(*) FROM events WHERE session_id = ? AND seq > ? AND INSTR(data, ?) > 0",
            (session_id, after_seq, marker),
        ).fetchone()[0]
        copies += connection.execute(
            "SELECT COUNT(*) FROM tasks WHERE session_id = ? AND INSTR(result, ?) > 0",
            (session_id, marker),
        ).fetchone()[0]
    finally:
        connection.close()
    return {"data": int(data), "columns": int(columns), "copies": int(copies)}


POSTGRES_RELATIONS = ("events", "tasks", "sessions")


async def postgres_sizes(url: str) -> Sizes:
    connection: Any = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        parts: dict[str, tuple[int, int]] = {}
        for name in POSTGRES_RELATIONS:
            table = await connection.fetchval("SELECT pg_table_size($1::regclass)", name)
            indexes = await connection.fetchval("SELECT pg_indexes_size($1::regclass)", name)
            parts[name] = (int(table), 0)
            parts[f"{name} (indexes)"] = (int(indexes), 0)
    finally:
        await connection.close()
    return Sizes(sum(size for size, _ in parts.values()), parts)


async def postgres_turn_rows(
    url: str, session_id: str, after_seq: int, marker: str
) -> dict[str, int]:
    connection: Any = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        row = await connection.fetchrow(
            "SELECT SUM(OCTET_LENGTH(data)), SUM(pg_column_size(e.*)) FROM events e "
            "WHERE session_id = $1 AND seq > $2",
            session_id,
            after_seq,
        )
        copies = await connection.fetchval(
            "SELECT COUNT(*) FROM events WHERE session_id = $1 AND seq > $2 "
            "AND STRPOS(data, $3) > 0",
            session_id,
            after_seq,
            marker,
        )
        copies += await connection.fetchval(
            "SELECT COUNT(*) FROM tasks WHERE session_id = $1 AND STRPOS(result, $2) > 0",
            session_id,
            marker,
        )
    finally:
        await connection.close()
    return {"data": int(row[0]), "columns": int(row[1]), "copies": int(copies)}


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(slots=True)
class BytesReport:
    turns: int
    payload: float
    before: Sizes
    after: Sizes
    rows: dict[str, int]
    statements: float
    transactions: float


class StatementCounter:
    """Counts the SQL statements (``BEGIN`` included where the driver sends one as a statement)
    and the commits of every engine of the process while ``active`` (SQLAlchemy events)."""

    def __init__(self) -> None:
        self.active = False
        self.statements = 0
        self.transactions = 0

    def _on_execute(self, *_args: Any) -> None:
        if self.active:
            self.statements += 1

    def _on_commit(self, *_args: Any) -> None:
        if self.active:
            self.transactions += 1

    def __enter__(self) -> StatementCounter:
        event.listen(Engine, "before_cursor_execute", self._on_execute)
        event.listen(Engine, "commit", self._on_commit)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._on_execute)
        event.remove(Engine, "commit", self._on_commit)


async def measure_bytes(bench: Bench, turns: int) -> BytesReport:
    backend = bench.backend
    session_id = await seed_session(bench, 10_000)
    await prepare(bench, session_id, "compacted")  # the summary is in place before "before"
    start_seq = await last_seq(bench, session_id)
    before = await _sizes(backend)
    payload = 0
    with StatementCounter() as counter:
        bench.counter = counter
        try:
            for _ in range(turns):
                await turn_in_process(bench, session_id, "compacted")
                payload += json_size(user_text(2_000_000 + bench.user_numbers))
                payload += json_size(reply_text(1_000_000 + bench.replies.calls))
        finally:
            bench.counter = None
    after = await _sizes(backend)
    marker = reply_text(1_000_000 + bench.replies.calls)[:20]
    if backend.sqlite_path is not None:
        rows = await anyio.to_thread.run_sync(
            sqlite_turn_rows, backend.sqlite_path, session_id, start_seq, marker
        )
    else:
        rows = await postgres_turn_rows(backend.url, session_id, start_seq, marker)
    return BytesReport(
        turns,
        payload / turns,
        before,
        after,
        rows,
        counter.statements / turns,
        counter.transactions / turns,
    )


async def _sizes(backend: Backend) -> Sizes:
    if backend.sqlite_path is not None:
        return await anyio.to_thread.run_sync(sqlite_sizes, backend.sqlite_path)
    return await postgres_sizes(backend.url)


# ---------------------------------------------------------------------------------------------
# Report


def report_times(backend: Backend, results: Results, sizes: Sequence[int]) -> None:
    labels = {
        "a": "in-process turn: send → stored reply → terminal task.status",
        "b": "store-level turn: append a turn's 7 events + read the context + build the input",
    }
    for kind, label in labels.items():
        title(f"{backend.name}: {label}")
        rows: list[list[str]] = []
        for mode in MODES:
            for size in sizes:
                samples = results.samples.get((kind, size, mode), [])
                walls = [s.wall for s in samples]
                priors = [s.prior_events for s in samples]
                rows.append(
                    [
                        MODE_LABELS[mode],
                        f"{size:,}",
                        f"{min(priors):,}–{max(priors):,}" if priors else "-",
                        str(round(median([s.input_turns for s in samples]))) if samples else "-",
                        str(len(samples)),
                        fmt_ms(median(walls)),
                        fmt_ms(percentile(walls, 0.9)),
                        fmt_ms(median([s.cpu for s in samples])),
                    ]
                )
        headers = ["context", "history", "prior events", "input turns", "n", "median ms"]
        print_table([*headers, "p90 ms", "cpu ms"], rows)
        for mode in MODES:
            line = f"ratios, {MODE_LABELS[mode]}: " + "; ".join(
                _ratio(results, kind, mode, size, sizes[0]) for size in sizes[1:]
            )
            if mode == "compacted":
                line += f"  → target {sizes[-1]:,} ≤ 1.5 × {sizes[0]}: " + _verdict(
                    results, kind, mode, sizes[-1], sizes[0]
                )
            if mode == "budget" and len(sizes) > 2:
                line += "; " + _ratio(results, kind, mode, sizes[-1], sizes[-2])
            print(line)
    ten = _median_wall(results, "a", sizes[0], "compacted")
    verdict = "met" if ten <= 0.005 else "NOT met"
    print(f"in-process turn at {sizes[0]} events: {fmt_ms(ten)} ms → target ≤ 5 ms: {verdict}")


def _verdict(results: Results, kind: str, mode: Mode, size: int, base: int) -> str:
    checks: list[str] = []
    for name, pick in (("wall", _wall), ("cpu", _cpu)):
        samples = results.samples.get((kind, size, mode), [])
        base_samples = results.samples.get((kind, base, mode), [])
        ratio = median([pick(s) for s in samples]) / median([pick(s) for s in base_samples])
        checks.append(f"{'met' if ratio <= 1.5 else 'NOT met'} on {name} time")
    return ", ".join(checks)


def _wall(sample: Sample) -> float:
    return sample.wall


def _cpu(sample: Sample) -> float:
    return sample.cpu


def _median_wall(results: Results, kind: str, size: int, mode: Mode) -> float:
    return median([s.wall for s in results.samples.get((kind, size, mode), [])])


def _ratio(results: Results, kind: str, mode: Mode, size: int, base: int) -> str:
    samples = results.samples.get((kind, size, mode), [])
    base_samples = results.samples.get((kind, base, mode), [])
    wall = median([s.wall for s in samples]) / median([s.wall for s in base_samples])
    cpu = median([s.cpu for s in samples]) / median([s.cpu for s in base_samples])
    return f"{size:,}/{base:,} = {fmt_ratio(wall)} (cpu {fmt_ratio(cpu)})"


def report_bytes(backend: Backend, report: BytesReport) -> None:
    title(
        f"{backend.name}: bytes stored per turn (session with 10,000 prior events, "
        f"{report.turns} in-process turns, compacted context)"
    )
    growth = (report.after.total - report.before.total) / report.turns
    payload = report.payload
    print(
        f"turn payload (JSON of the user text + JSON of the reply): {fmt_bytes(payload)}\n"
        f"SQL per turn: {report.statements:.1f} statements (BEGIN included on SQLite), "
        f"{report.transactions:.1f} commits (read and write transactions)"
    )
    what = (
        "database growth (pages in use after a WAL checkpoint)"
        if backend.sqlite_path is not None
        else "database growth (pg_table_size + pg_indexes_size of events, tasks, sessions)"
    )
    print(f"{what}: {fmt_bytes(growth)} per turn = {fmt_ratio(growth / payload)} the payload")
    rows: list[list[str]] = []
    names = sorted(set(report.before.parts) | set(report.after.parts))
    for name in names:
        on_pages = (
            report.after.parts.get(name, (0, 0))[0] - report.before.parts.get(name, (0, 0))[0]
        )
        record = report.after.parts.get(name, (0, 0))[1] - report.before.parts.get(name, (0, 0))[1]
        if abs(on_pages) < report.turns / 2 and abs(record) < report.turns / 2:
            continue
        cells = [name, fmt_bytes(on_pages / report.turns)]
        if backend.sqlite_path is not None:
            cells.append(fmt_bytes(record / report.turns))
        rows.append(cells)
    headers = ["table / index", "bytes on pages per turn"]
    if backend.sqlite_path is not None:
        headers.append("record bytes per turn")
    print_table(headers, rows)
    data = report.rows["data"] / report.turns
    columns = report.rows["columns"] / report.turns
    copies = report.rows["copies"]
    row_label = (
        "the other columns' values (ids, type, time)"
        if backend.sqlite_path is not None
        else "whole rows (pg_column_size, incl. data)"
    )
    print(
        f"events of one turn: {TURN_EVENTS} rows; their JSON data {fmt_bytes(data)} "
        f"({fmt_ratio(data / payload)} the payload); {row_label} {fmt_bytes(columns)}\n"
        f"the reply text of the last turn is stored {copies} times (rows of events and tasks "
        "that contain it)\n"
        f"target ≤ 1.5× the payload: {'met' if growth <= 1.5 * payload else 'NOT met'} "
        f"({fmt_ratio(growth / payload)}; JSON data alone {fmt_ratio(data / payload)})"
    )


# ---------------------------------------------------------------------------------------------


async def run_backend(backend: Backend, plan: Plan, sizes: Sequence[int], poll: float) -> None:
    with tempfile.TemporaryDirectory(prefix="openbuda-bench-home-") as home:
        store = open_store(backend.url)
        title(f"{backend.name}: {type(store).__name__}")
        try:
            replies = ReplyMaker()
            model = FunctionModel(replies, name="test:bench")
            async with Runtime.start(
                bench_settings(Path(home), poll_seconds=poll),
                store=store,
                models=lambda _spec: model,
                tools=ToolRegistry(),
            ) as runtime:
                principal = await make_principal(store)
                agent = await runtime.agents.create(
                    principal,
                    name="bench",
                    instructions=INSTRUCTIONS,
                    model="test:bench",
                    # never compact by itself: the projection is what each measurement sets
                    settings=AgentSettings(context_token_budget=10_000_000),
                )
                seeder = Seeder(backend.url)
                try:
                    bench = Bench(backend, runtime, principal, agent.id, model, replies, seeder)
                    results = await run_turns(bench, plan, sizes)
                    report_times(backend, results, sizes)
                    report_bytes(backend, await measure_bytes(bench, plan.bytes_turns))
                finally:
                    await seeder.close()
        finally:
            await store.close()


async def main(args: argparse.Namespace) -> None:
    plan = (
        Plan(turns=25, warmup=5, full_turns=8, full_warmup=2, bytes_turns=30)
        if args.quick
        else Plan(turns=150, warmup=10, full_turns=40, full_warmup=3, bytes_turns=150)
    )
    if args.turns:
        plan = Plan(args.turns, plan.warmup, plan.full_turns, plan.full_warmup, plan.bytes_turns)
    print(f"openbuda turn cost · {machine_line()}")
    print(
        "Context, set before every turn: compacted = summary + the last 21 events (what "
        "compaction leaves);\nat budget = summary + the latest turns within 18,000 tokens (the "
        "steady state under the default\n24,000-token budget); uncompacted = the whole history. "
        "Median of n turns after warm-up; cpu = CPU time\nof this process (all its threads; "
        "not the PostgreSQL server's). Model: zero-latency FunctionModel."
    )
    tally = LogTally().install()
    with tempfile.TemporaryDirectory(prefix="openbuda-bench-") as workdir:
        async with backends(args, Path(workdir)) as found:
            for backend in found:
                await run_backend(backend, plan, SIZES, args.poll_seconds)
                print(f"engine warnings and errors: {tally.take()}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer turns: under a minute")
    parser.add_argument("--turns", type=int, default=0, help="measured turns per size (compacted)")
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=0.02,
        help="the organizer's poll interval (a send wakes it at once anyway)",
    )
    add_backend_arguments(parser)
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args())
