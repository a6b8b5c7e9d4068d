"""The invariants of the fault suite, checked over what was recorded and what was stored.

Inputs: the clients' records (accepted messages, every SSE event each connection delivered),
the database's ``tasks`` and ``events`` rows, and the effect log. Output: violations, each a
kind and a detail naming the session, task and seq, so a failure says where to look.

The checks:

- every accepted message has its task, its ``message`` event, and the task ended ``completed``
  with the answer the plan calls for; no task the clients did not cause;
- a session's log is gapless from 1; no event twice (a message, a call's intent or result, a
  question, a model step, a result or a terminal status); a task's terminal status is its last
  event; statuses follow the transition table; messages are in the order they were accepted;
  a session runs one task at a time;
- a task is never run by two workers at once: the epochs of its ``running`` events increase,
  every side effect was made by the worker whose lease covered the call's ``tool.call`` event,
  and before that lease was given up;
- no side effect twice for one idempotency key; one for every ``ok`` result of the tool;
- every SSE client saw each stored event exactly once, in order, as stored.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg  # pyright: ignore[reportMissingTypeStubs]

from tests.scaleout.effects import EffectLine
from tests.scaleout.model import Plan

__all__ = [
    "Accepted",
    "ClientRecord",
    "Received",
    "Stored",
    "StoredEvent",
    "StoredTask",
    "Violation",
    "check",
    "read_stored",
]

TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})
TRANSITIONS: Final = {
    None: {"queued"},
    "queued": {"running", "cancelled"},
    "running": {"queued", "waiting", "completed", "failed", "cancelled"},
    "waiting": {"queued", "cancelled"},
}
UNIQUE_PER_TASK: Final = {
    "tool.call": "call_id",
    "tool.result": "call_id",
    "question": "id",
}


@dataclass(frozen=True, slots=True)
class Received:
    """A stored event as one SSE connection delivered it."""

    connection: int
    seq: int
    event_id: str
    type: str
    task_id: str | None
    data: dict[str, Any]
    arrived: float = 0.0
    """``time.time()`` when it arrived."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message the API accepted (202), in the order the client got the answers."""

    tag: str
    message_id: str
    task_id: str


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """What one session's client did and saw."""

    index: int
    session_id: str
    plans: list[Plan]
    accepted: list[Accepted]
    received: list[Received]
    """Every stored event every connection of its SSE stream delivered, duplicates included."""


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    session_id: str
    seq: int
    event_id: str
    type: str
    task_id: str | None
    at: datetime
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredTask:
    task_id: str
    session_id: str
    status: str
    message_id: str | None
    result: dict[str, Any] | None
    error: str | None


@dataclass
class Stored:
    tasks: dict[str, StoredTask] = field(default_factory=dict[str, StoredTask])
    events: dict[str, list[StoredEvent]] = field(default_factory=dict[str, list[StoredEvent]])
    """Each session's log in seq order."""

    @property
    def event_count(self) -> int:
        return sum(len(log) for log in self.events.values())


async def read_stored(dsn: str) -> Stored:
    """Every task and event of the database (one test space)."""
    connection: Any = await asyncpg.connect(dsn)
    try:
        stored = Stored()
        for row in await connection.fetch(
            "SELECT id, session_id, status, message_id, result, error_code, error_message "
            "FROM tasks"
        ):
            error = f"{row['error_code']}: {row['error_message']}" if row["error_code"] else None
            stored.tasks[row["id"]] = StoredTask(
                row["id"],
                row["session_id"],
                row["status"],
                row["message_id"],
                json.loads(row["result"]) if row["result"] else None,
                error,
            )
        for row in await connection.fetch(
            "SELECT session_id, seq, id, type, task_id, at, data FROM events "
            "ORDER BY session_id, seq"
        ):
            stored.events.setdefault(row["session_id"], []).append(
                StoredEvent(
                    row["session_id"],
                    row["seq"],
                    row["id"],
                    row["type"],
                    row["task_id"],
                    row["at"],
                    json.loads(row["data"]),
                )
            )
        return stored
    finally:
        await connection.close()


@dataclass(frozen=True, slots=True)
class _Span:
    """A task's time under one lease: from its ``running`` event to its next status."""

    task_id: str
    worker: str | None
    epoch: int | None
    start: StoredEvent
    end: StoredEvent | None


class _Checker:
    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, detail))


def check(
    clients: Sequence[ClientRecord], stored: Stored, effects: Sequence[EffectLine]
) -> list[Violation]:
    checker = _Checker()
    spans: dict[str, list[_Span]] = {}
    call_events: dict[tuple[str, str], StoredEvent] = {}
    results: dict[tuple[str, str], StoredEvent] = {}
    for session_id, log in stored.events.items():
        _check_log(checker, session_id, log, spans, call_events, results)
    for client in clients:
        _check_client(checker, client, stored)
    known_tasks = {a.task_id for client in clients for a in client.accepted}
    for task in stored.tasks.values():
        if task.task_id not in known_tasks:
            checker.add("unexpected task", f"{task.task_id} in {task.session_id} ({task.status})")
    _check_effects(checker, effects, spans, call_events, results)
    return checker.violations


# -- the stored log ----------------------------------------------------------------------------


def _check_log(
    checker: _Checker,
    session_id: str,
    log: Sequence[StoredEvent],
    spans: dict[str, list[_Span]],
    call_events: dict[tuple[str, str], StoredEvent],
    results: dict[tuple[str, str], StoredEvent],
) -> None:
    seqs = [e.seq for e in log]
    if seqs != list(range(1, len(log) + 1)):
        checker.add("log gap", f"{session_id}: seqs {_ranges(seqs)}")
    by_task: dict[str, list[StoredEvent]] = defaultdict(list)
    message_ids = Counter(str(e.data.get("message_id")) for e in log if e.type == "message")
    for message_id, count in message_ids.items():
        if count > 1:
            checker.add("duplicate event", f"{session_id}: message {message_id} stored {count}×")
    for event in log:
        if event.task_id is not None:
            by_task[event.task_id].append(event)
    for task_id, events in by_task.items():
        _check_task_events(checker, session_id, task_id, events, spans)
        for event in events:
            if event.type == "tool.call":
                call_events[(task_id, str(event.data.get("call_id")))] = event
            elif event.type == "tool.result":
                results[(task_id, str(event.data.get("call_id")))] = event
    # one task at a time: a task starts running only after the previous one ended
    order = sorted(by_task, key=lambda t: by_task[t][0].seq)
    for before, after in itertools.pairwise(order):
        ended = next((e.seq for e in by_task[before] if _status(e) in TERMINAL), None)
        started = next((e.seq for e in by_task[after] if _status(e) == "running"), None)
        if ended is not None and started is not None and started < ended:
            checker.add(
                "two tasks at once",
                f"{session_id}: {after} ran at seq {started} before {before} ended at {ended}",
            )


def _status(event: StoredEvent) -> str | None:
    return str(event.data.get("status")) if event.type == "task.status" else None


def _check_task_events(
    checker: _Checker,
    session_id: str,
    task_id: str,
    events: Sequence[StoredEvent],
    spans: dict[str, list[_Span]],
) -> None:
    where = f"{session_id} task {task_id}"
    for kind, key in UNIQUE_PER_TASK.items():
        counts = Counter(str(e.data.get(key)) for e in events if e.type == kind)
        for value, count in counts.items():
            if count > 1:
                checker.add("duplicate event", f"{where}: {kind} {value} stored {count}×")
    steps = Counter(
        tuple(str(c.get("call_id")) for c in e.data.get("tool_calls") or [])
        for e in events
        if e.type == "model.response"
    )
    for calls, count in steps.items():
        if count > 1:
            checker.add("duplicate event", f"{where}: model.response {calls} stored {count}×")
    for kind in ("task.result",):
        count = sum(1 for e in events if e.type == kind)
        if count > 1:
            checker.add("duplicate event", f"{where}: {kind} stored {count}×")
    status: str | None = None
    epoch: int | None = None
    task_spans = spans.setdefault(task_id, [])
    open_span: StoredEvent | None = None
    for event in events:
        new = _status(event)
        if new is None:
            if status in TERMINAL:
                checker.add("event after the end", f"{where}: {event.type} at seq {event.seq}")
            continue
        if new not in TRANSITIONS.get(status, set()):
            checker.add("bad transition", f"{where}: {status} -> {new} at seq {event.seq}")
        if open_span is not None:
            task_spans.append(_span(task_id, open_span, event))
            open_span = None
        if new == "running":
            open_span = event
            this_epoch = event.data.get("epoch")
            if not isinstance(this_epoch, int):
                checker.add("running without epoch", f"{where}: seq {event.seq} {event.data}")
            elif epoch is not None and this_epoch <= epoch:
                checker.add(
                    "epoch did not increase", f"{where}: {epoch} then {this_epoch} at {event.seq}"
                )
            else:
                epoch = this_epoch
        status = new
    if open_span is not None:
        task_spans.append(_span(task_id, open_span, None))


def _span(task_id: str, start: StoredEvent, end: StoredEvent | None) -> _Span:
    worker = start.data.get("worker")
    epoch = start.data.get("epoch")
    return _Span(
        task_id,
        str(worker) if worker is not None else None,
        epoch if isinstance(epoch, int) else None,
        start,
        end,
    )


# -- what the clients saw ----------------------------------------------------------------------


def _check_client(checker: _Checker, client: ClientRecord, stored: Stored) -> None:
    where = f"s{client.index:03d} {client.session_id}"
    log = stored.events.get(client.session_id, [])
    by_seq = {e.seq: e for e in log}
    # the messages: each accepted one has its task, in the order accepted
    tags = [a.tag for a in client.accepted]
    if len(tags) != len(client.plans) or len(set(tags)) != len(tags):
        checker.add("lost message", f"{where}: accepted {tags} for {len(client.plans)} plans")
    plans = {plan.tag: plan for plan in client.plans}
    user_messages = [e for e in log if e.type == "message" and e.data.get("role") == "user"]
    stored_order = [str(e.data.get("message_id")) for e in user_messages]
    accepted_order = [a.message_id for a in client.accepted]
    if stored_order != accepted_order:
        checker.add("message order", f"{where}: stored {stored_order}, accepted {accepted_order}")
    for accepted in client.accepted:
        task = stored.tasks.get(accepted.task_id)
        if task is None:
            checker.add("lost task", f"{where}: {accepted.tag} -> {accepted.task_id} not stored")
            continue
        if task.message_id != accepted.message_id:
            checker.add("lost task", f"{where}: {accepted.task_id} has message {task.message_id}")
        message_events = [
            e for e in user_messages if e.data.get("message_id") == accepted.message_id
        ]
        if len(message_events) != 1 or message_events[0].task_id != accepted.task_id:
            checker.add("lost message", f"{where}: {accepted.tag} events {message_events}")
        if task.status != "completed":
            error = (task.error or "").splitlines()[0][:300] if task.error else ""
            checker.add(
                "not completed", f"{where}: {accepted.tag} {task.task_id} {task.status} {error}"
            )
            continue
        plan = plans.get(accepted.tag, Plan(accepted.tag, ()))
        text = (task.result or {}).get("text")
        if text != plan.final_text:
            checker.add("wrong result", f"{where}: {accepted.tag} {task.task_id} said {text!r}")
    # the stream: every stored event exactly once, in order, as stored
    seen = Counter(r.seq for r in client.received)
    for seq, count in seen.items():
        if count > 1:
            checker.add("SSE duplicate", f"{where}: seq {seq} delivered {count}×")
    missing = [seq for seq in by_seq if seq not in seen]
    if missing:
        checker.add("SSE missed", f"{where}: seqs {_ranges(missing)} never delivered")
    delivered = [r.seq for r in client.received]
    if delivered != sorted(delivered):
        checker.add("SSE order", f"{where}: delivered out of order: {_first_disorder(delivered)}")
    for received in client.received:
        original = by_seq.get(received.seq)
        if original is None:
            checker.add("SSE phantom", f"{where}: seq {received.seq} is not stored")
        elif (original.event_id, original.type) != (received.event_id, received.type):
            checker.add(
                "SSE mismatch",
                f"{where}: seq {received.seq} delivered {received.type} {received.event_id}, "
                f"stored {original.type} {original.event_id}",
            )


# -- side effects ------------------------------------------------------------------------------


def _check_effects(
    checker: _Checker,
    effects: Sequence[EffectLine],
    spans: dict[str, list[_Span]],
    call_events: dict[tuple[str, str], StoredEvent],
    results: dict[tuple[str, str], StoredEvent],
) -> None:
    by_key: dict[str, list[EffectLine]] = defaultdict(list)
    for line in effects:
        by_key[line.key].append(line)
    for key, lines in by_key.items():
        if len(lines) > 1:
            runs = ", ".join(f"{line.worker_id} pid {line.pid}" for line in lines)
            checker.add("effect twice", f"{key}: {runs}")
    for (task_id, call_id), result in results.items():
        call = call_events.get((task_id, call_id))
        if call is None or call.data.get("name") != "effect":
            continue
        made = len(by_key.get(f"{task_id}:{call_id}", []))
        if result.data.get("status") == "ok" and made != 1:
            checker.add("effect count", f"{task_id}:{call_id} ok with {made} effect(s)")
    for key, lines in by_key.items():
        line = lines[0]
        call = call_events.get((line.task_id, line.call_id))
        if call is None:
            checker.add("effect without intent", f"{key} by {line.worker_id}: no tool.call stored")
            continue
        span = _span_of(spans.get(line.task_id, []), call)
        if span is None:
            checker.add("effect outside a lease", f"{key}: tool.call seq {call.seq} not running")
            continue
        for made in lines:
            if span.worker is not None and made.worker_id != span.worker:
                checker.add(
                    "two workers at once",
                    f"{key}: made by {made.worker_id}, the lease (epoch {span.epoch}) was "
                    f"{span.worker}'s",
                )
            if span.end is not None and made.at > span.end.at.timestamp():
                late = made.at - span.end.at.timestamp()
                checker.add(
                    "two workers at once",
                    f"{key}: made by {made.worker_id} {late:.3f} s after its lease ended "
                    f"(seq {span.end.seq} {_status(span.end)})",
                )


def _span_of(task_spans: Iterable[_Span], event: StoredEvent) -> _Span | None:
    for span in task_spans:
        if span.start.seq < event.seq and (span.end is None or event.seq < span.end.seq):
            return span
    return None


def _ranges(values: Iterable[int]) -> str:
    ordered = sorted(values)
    parts: list[str] = []
    start = prev = None
    for value in ordered:
        if start is None:
            start = prev = value
        elif prev is not None and value == prev + 1:
            prev = value
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = value
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    text = ",".join(parts)
    return text if len(text) <= 200 else text[:200] + "…"


def _first_disorder(values: Sequence[int]) -> str:
    for index in range(1, len(values)):
        if values[index] < values[index - 1]:
            return f"{values[index - 1]} then {values[index]} (delivery {index})"
    return "?"
