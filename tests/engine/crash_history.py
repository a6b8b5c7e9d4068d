"""The history of a crash test run, and the invariants checked over it.

The history is everything the run left behind, read after it ended:

- the test's own record: the plan of every task, every worker incarnation (when it was started
  and reaped, how it ended, what the tasks were doing when it died) and every answer given;
- the store: every session's event log and every task row;
- the workers' logs: every model call (``<label> <step>`` per incarnation) and every tool
  execution (``<task_id>:<call_id>`` per tool and incarnation).

An event was written by the worker incarnation whose lifetime (spawned … reaped) contains its
``at``; the test process writes only the answers. ``check`` walks it all and returns the
violated invariants as readable lines (empty: all hold) plus counters of what was exercised.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from openbuda.domain.events import EventType
from openbuda.domain.records import Event, QuestionKind, Task
from openbuda.domain.states import TRANSITIONS, TaskStatus

from .crash_worker import (
    APPROVAL_TOOL,
    ONCE_TOOL,
    TOOL_NAMES,
    Plan,
    expected_reply,
    model_log,
    tool_log,
)

__all__ = ["AnswerRecord", "History", "Incarnation", "check"]

_ONCE_TOOLS = frozenset({ONCE_TOOL, APPROVAL_TOOL})
_BY_WORKER_WHILE_RUNNING = frozenset(
    {
        EventType.MODEL_RESPONSE,
        EventType.TOOL_CALL,
        EventType.TOOL_RESULT,
        EventType.QUESTION,
        EventType.MESSAGE,
        EventType.TASK_RESULT,
    }
)
_BY_TEST_WHILE_WAITING = frozenset({EventType.ANSWER, EventType.TOOL_RESULT})


@dataclass
class Incarnation:
    """One worker process, from spawn to reaping."""

    index: int
    worker_id: str
    embedded: bool
    clean: bool
    """The last run: stopped with SIGTERM once every task was terminal."""
    startup_kill: bool
    """Killed at a random moment after spawning, maybe before it was ready."""
    delay: float
    spawned_at: datetime
    ready_at: datetime | None = None
    ended_at: datetime | None = None
    returncode: int | None = None
    statuses_at_end: Counter[str] = field(default_factory=Counter[str])


@dataclass(frozen=True)
class AnswerRecord:
    task_id: str
    question_id: str
    kind: QuestionKind
    value: str | bool
    via_message: bool


@dataclass
class History:
    seed: int
    space_id: str
    plans: dict[str, Plan]
    """task id -> its plan."""
    incarnations: list[Incarnation] = field(default_factory=list[Incarnation])
    answers: list[AnswerRecord] = field(default_factory=list[AnswerRecord])
    events: dict[str, list[Event]] = field(default_factory=dict[str, list[Event]])
    """session id -> its whole log."""
    tasks: dict[str, Task] = field(default_factory=dict[str, Task])
    executions: dict[str, list[int]] = field(default_factory=dict[str, list[int]])
    """``<tool> <task_id>:<call_id>`` -> the incarnations that ran it, in order."""
    model_calls: dict[tuple[str, int], list[int]] = field(
        default_factory=dict[tuple[str, int], list[int]]
    )
    """(task label, step) -> the incarnations that made that model call."""

    def read_logs(self, logs: Path) -> None:
        for incarnation in self.incarnations:
            for tool in TOOL_NAMES:
                for line in _lines(tool_log(logs, tool, incarnation.index)):
                    key = line.split(" ", 1)[0]
                    self.executions.setdefault(f"{tool} {key}", []).append(incarnation.index)
            for line in _lines(model_log(logs, incarnation.index)):
                label, step = line.split()
                self.model_calls.setdefault((label, int(step)), []).append(incarnation.index)

    def incarnation_at(self, at: datetime) -> int | None:
        for incarnation in self.incarnations:
            ended = incarnation.ended_at
            if ended is not None and incarnation.spawned_at <= at <= ended:
                return incarnation.index
        return None


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Report:
    problems: list[str] = field(default_factory=list[str])
    counts: Counter[str] = field(default_factory=Counter[str])

    def fail(self, message: str) -> None:
        self.problems.append(message)


def check(history: History) -> Report:
    """Every invariant of the crash test over ``history``."""
    report = Report()
    _check_incarnations(history, report)
    for session_id, events in history.events.items():
        _check_log(session_id, events, report)
    by_task: dict[str, list[Event]] = {}
    for events in history.events.values():
        for event in events:
            if event.task_id is not None:
                by_task.setdefault(event.task_id, []).append(event)
    known_keys: set[str] = set()
    for task_id, plan in history.plans.items():
        _TaskCheck(history, report, task_id, plan, by_task.get(task_id, [])).run(known_keys)
    for key, runs in history.executions.items():
        if key not in known_keys:
            report.fail(f"{key} ran (incarnations {runs}) but no task asked for that call")
    _check_answers(history, by_task, report)
    return report


def _check_incarnations(history: History, report: Report) -> None:
    report.counts["incarnations"] = len(history.incarnations)
    for incarnation in history.incarnations:
        if incarnation.clean:
            if incarnation.returncode != 0:
                report.fail(
                    f"the clean run {incarnation.index} exited with {incarnation.returncode}"
                )
            continue
        report.counts["kills"] += 1
        if incarnation.ready_at is None:
            report.counts["kills before ready"] += 1
        if not incarnation.embedded:
            report.counts["non-embedded restarts"] += 1
        if incarnation.statuses_at_end[TaskStatus.WAITING] > 0:
            report.counts["kills while a task waited"] += 1
        if incarnation.statuses_at_end[TaskStatus.RUNNING] > 0:
            report.counts["kills while a task ran"] += 1


def _check_log(session_id: str, events: list[Event], report: Report) -> None:
    seqs = [event.seq for event in events]
    if seqs != list(range(1, len(events) + 1)):
        report.fail(f"session {session_id}: seqs are not 1..{len(events)}: {seqs}")
    ids = Counter(event.id for event in events)
    duplicated = [event_id for event_id, count in ids.items() if count > 1]
    if duplicated:
        report.fail(f"session {session_id}: event ids stored twice: {duplicated}")
    if not events or events[0].type != EventType.SESSION_CREATED:
        report.fail(f"session {session_id}: the log does not start with session.created")
    report.counts["events"] += len(events)


class _TaskCheck:
    """Walks one task's events in ``seq`` order, keeping the status the log says it has."""

    def __init__(
        self, history: History, report: Report, task_id: str, plan: Plan, events: list[Event]
    ) -> None:
        self.history = history
        self.report = report
        self.task_id = task_id
        self.plan = plan
        self.events = events
        self.where = f"task {task_id} ({plan.message!r})"

    def fail(self, message: str) -> None:
        self.report.fail(f"{self.where}: {message}")

    def worker_of(self, event: Event) -> int | None:
        incarnation = self.history.incarnation_at(event.at)
        if incarnation is None:
            self.fail(f"event {event.seq} {event.type} was written while no worker was alive")
        return incarnation

    def run(self, known_keys: set[str]) -> None:
        task = self.history.tasks.get(self.task_id)
        if task is None:
            self.fail("the task row is gone")
            return
        if task.status is not TaskStatus.COMPLETED:
            self.fail(f"ended {task.status.value!r} ({task.error}), not completed")
        elif task.result is None or task.result.text != self.plan.final_text:
            self.fail(f"completed with {task.result!r}, expected {self.plan.final_text!r}")
        if task.lease_owner is not None or task.question is not None:
            self.fail(f"a terminal task still holds {task.lease_owner!r} / {task.question!r}")
        events = self.events
        if (
            len(events) < 2
            or events[0].type != EventType.MESSAGE
            or events[0].data.get("text") != self.plan.message
        ):
            self.fail("the log does not start with the task's message")
            return
        self._walk(known_keys)

    def _walk(self, known_keys: set[str]) -> None:
        status: TaskStatus | None = None
        responses: list[Event] = []
        calls: dict[str, tuple[str, Event]] = {}
        """call id -> (tool name, the model.response that made it)"""
        intents: dict[str, Event] = {}
        results: dict[str, Event] = {}
        questions: Counter[str] = Counter()
        """call id -> questions asked for it"""
        in_doubt: dict[str, int] = {}
        """open call id -> how many times the task was re-queued while it was open"""
        for event in self.events[1:]:
            kind = event.type
            if kind == EventType.TASK_STATUS:
                new = TaskStatus(event.data["status"])
                if status is None and new is not TaskStatus.QUEUED:
                    self.fail(f"the first status is {new.value!r}")
                elif status is not None and new not in TRANSITIONS[status]:
                    self.fail(
                        f"event {event.seq}: illegal transition {status.value} -> {new.value}"
                    )
                if status is TaskStatus.RUNNING and new is TaskStatus.QUEUED:
                    if event.data.get("reason") != "lease_expired":
                        self.fail(f"event {event.seq}: running -> queued for {event.data}")
                    self.report.counts["re-queued after a crash"] += 1
                    for call_id in intents.keys() - results.keys():
                        in_doubt[call_id] = in_doubt.get(call_id, 0) + 1
                if new in (TaskStatus.RUNNING, TaskStatus.COMPLETED, TaskStatus.WAITING) or (
                    new is TaskStatus.QUEUED and status is TaskStatus.RUNNING
                ):
                    self.worker_of(event)
                status = new
                continue
            if status is TaskStatus.WAITING and kind in _BY_TEST_WHILE_WAITING:
                if kind == EventType.TOOL_RESULT:
                    self._result(event, calls, intents, results, in_doubt, by_answer=True)
                continue
            if status is not TaskStatus.RUNNING or kind not in _BY_WORKER_WHILE_RUNNING:
                self.fail(f"event {event.seq} {kind} {event.data} while the task is {status}")
                continue
            self.worker_of(event)
            if kind == EventType.MODEL_RESPONSE:
                self._response(event, responses, calls, results)
            elif kind == EventType.TOOL_CALL:
                call_id = str(event.data["call_id"])
                if call_id not in calls or call_id in intents:
                    self.fail(f"event {event.seq}: unexpected or repeated tool.call {call_id}")
                intents[call_id] = event
            elif kind == EventType.TOOL_RESULT:
                self._result(event, calls, intents, results, in_doubt, by_answer=False)
            elif kind == EventType.QUESTION:
                questions[str(event.data["call_id"])] += 1
        if status is not TaskStatus.COMPLETED:
            self.fail(f"the log ends with the task {status}")
        tail = [e.type for e in self.events[-3:]]
        if tail != [EventType.MESSAGE, EventType.TASK_RESULT, EventType.TASK_STATUS]:
            self.fail(f"the log ends with {tail}, not message, task.result, task.status")
        if len(responses) != len(self.plan.steps) + 1:
            self.fail(f"{len(responses)} model responses for {len(self.plan.steps) + 1} steps")
        asking = {c for c, (tool, _) in calls.items() if tool in ("ask_user", APPROVAL_TOOL)}
        if questions != Counter(asking):
            self.fail(f"questions per call {dict(questions)}, expected one for each of {asking}")
        if set(calls) != set(results):
            self.fail(f"calls without exactly one result: {sorted(set(calls) ^ set(results))}")
        for call_id, (tool, _response) in calls.items():
            if tool in TOOL_NAMES:
                key = f"{tool} {self.task_id}:{call_id}"
                known_keys.add(key)
                self._executions(key, tool, intents.get(call_id), results.get(call_id), in_doubt)
        self._model_calls(responses)

    def _response(
        self,
        event: Event,
        responses: list[Event],
        calls: dict[str, tuple[str, Event]],
        results: dict[str, Event],
    ) -> None:
        step = len(responses)
        open_calls = [call_id for call_id in calls if call_id not in results]
        if open_calls:
            self.fail(f"event {event.seq}: a model call while {open_calls} had no result")
        expected = expected_reply(self.plan, step).to_event_data()
        got = {"text": event.data.get("text"), "tool_calls": event.data.get("tool_calls")}
        if got != expected:
            self.fail(f"event {event.seq}: response {step} is {got}, expected {expected}")
        responses.append(event)
        for call in event.data.get("tool_calls") or []:
            calls[str(call["call_id"])] = (str(call["name"]), event)

    def _result(
        self,
        event: Event,
        calls: dict[str, tuple[str, Event]],
        intents: dict[str, Event],
        results: dict[str, Event],
        in_doubt: dict[str, int],
        *,
        by_answer: bool,
    ) -> None:
        call_id = str(event.data["call_id"])
        if call_id not in calls or call_id in results:
            self.fail(f"event {event.seq}: unexpected or repeated tool.result {call_id}")
            return
        results[call_id] = event
        tool = calls[call_id][0]
        status = event.data.get("status")
        if by_answer:
            if tool == APPROVAL_TOOL and status != "error":
                self.fail(f"event {event.seq}: an approval answer gave the result {event.data}")
            return
        if tool != "ask_user" and call_id not in intents:
            self.fail(f"event {event.seq}: the result of {call_id} has no tool.call before it")
        if call_id in in_doubt:
            self.report.counts[f"{tool} in doubt"] += 1
            wanted = "interrupted" if tool in _ONCE_TOOLS else "ok"
            if status != wanted:
                self.fail(f"event {event.seq}: in-doubt {tool} call {call_id} got {status!r}")
        elif status != "ok":
            self.fail(f"event {event.seq}: {tool} call {call_id} got {status!r} ({event.data})")

    def _executions(
        self,
        key: str,
        tool: str,
        intent: Event | None,
        result: Event | None,
        in_doubt: dict[str, int],
    ) -> None:
        runs = self.history.executions.get(key, [])
        call_id = key.rsplit(":", 1)[1]
        if runs and intent is None:
            self.fail(f"{key} ran in {runs} without a stored tool.call (intent) before it")
            return
        if intent is None or result is None:
            return  # a denied approval: it must not have run, which the line above checks
        intent_at = self.worker_of(intent)
        result_at = self.history.incarnation_at(result.at)
        if intent_at is not None and any(run < intent_at for run in runs):
            self.fail(f"{key} ran in {runs}, before its intent was stored (in {intent_at})")
        status = result.data.get("status")
        if tool in _ONCE_TOOLS:
            if len(runs) > 1:
                self.fail(f"non-idempotent {key} ran {len(runs)} times (incarnations {runs})")
            if runs and runs != [intent_at]:
                self.fail(
                    f"non-idempotent {key} ran in {runs}, its intent was stored in {intent_at}"
                )
            if status == "ok" and runs != [result_at]:
                self.fail(f"{key} has an ok result from {result_at} but ran in {runs}")
            if status == "interrupted":
                self.report.counts[f"{tool} in doubt {'after' if runs else 'before'} running"] += 1
            return
        if status != "ok" or not runs or runs[-1] != result_at:
            self.fail(f"idempotent {key}: result {status!r} from {result_at}, runs {runs}")
        if len(set(runs)) != len(runs):
            self.fail(f"idempotent {key} ran twice in one incarnation: {runs}")
        if len(runs) > 1 + in_doubt.get(call_id, 0):
            self.fail(
                f"idempotent {key} ran {len(runs)} times, in doubt {in_doubt.get(call_id, 0)}"
            )
        if len(runs) > 1:
            self.report.counts[f"{tool} ran again with the same key"] += 1

    def _model_calls(self, responses: list[Event]) -> None:
        label = self.plan.label
        for step, response in enumerate(responses):
            made = self.history.model_calls.get((label, step), [])
            stored_by = self.history.incarnation_at(response.at)
            if stored_by not in made:
                self.fail(f"model response {step} stored by {stored_by}, calls made in {made}")
            later = [i for i in made if stored_by is not None and i > stored_by]
            if later:
                self.fail(f"model call {step} made again in {later} after its response was stored")
            if len(made) > 1:
                self.report.counts["model calls made again"] += 1
        extra = [
            step
            for (other, step) in self.history.model_calls
            if other == label and (step >= len(responses) or step > len(self.plan.steps))
        ]
        if extra:
            self.fail(f"model calls for steps {extra}: past the plan or without a stored response")


def _check_answers(history: History, by_task: dict[str, list[Event]], report: Report) -> None:
    answered: dict[str, list[Event]] = {}
    questions: Counter[str] = Counter()
    for events in by_task.values():
        for event in events:
            if event.type == EventType.ANSWER:
                answered.setdefault(str(event.data["question_id"]), []).append(event)
            elif event.type == EventType.QUESTION:
                questions[str(event.data["id"])] += 1
    for question_id, count in questions.items():
        if count != 1 or len(answered.get(question_id, [])) != 1:
            report.fail(
                f"question {question_id}: asked {count}x, answered {len(answered.get(question_id, []))}x"
            )
    given = {answer.question_id for answer in history.answers}
    for answer in history.answers:
        stored = answered.get(answer.question_id, [])
        if len(stored) != 1 or stored[0].task_id != answer.task_id:
            report.fail(f"answer {answer} is stored {len(stored)} times")
            continue
        data: dict[str, Any] = stored[0].data
        value = {
            QuestionKind.TEXT: data.get("text"),
            QuestionKind.CHOICE: data.get("choice"),
            QuestionKind.APPROVAL: data.get("approved"),
        }[answer.kind]
        if value != answer.value:
            report.fail(f"answer {answer} is stored as {data}")
    for question_id in answered.keys() - given:
        report.fail(f"an answer to {question_id} is stored that the test never gave")
    report.counts["answers"] = len(history.answers)
    report.counts["approvals denied"] = sum(1 for a in history.answers if a.value is False)
    report.counts["questions"] = sum(questions.values())


def summary(history: History, report: Report) -> str:
    counts = ", ".join(f"{name}: {value}" for name, value in sorted(report.counts.items()))
    return f"crash test seed {history.seed}: {len(history.plans)} tasks; {counts}"


def timeline(history: History) -> str:
    """One line per incarnation: how long it took to get ready, how long it lived, its end."""
    lines: list[str] = []
    for run in history.incarnations:
        ready = (
            f"ready after {(run.ready_at - run.spawned_at).total_seconds():.2f} s"
            if run.ready_at
            else "never ready"
        )
        lived = (run.ended_at - run.spawned_at).total_seconds() if run.ended_at else float("nan")
        how = (
            "SIGTERM"
            if run.clean
            else f"SIGKILL ({'startup ' if run.startup_kill else ''}{run.delay:.2f} s)"
        )
        mode = "embedded" if run.embedded else "own id"
        statuses = " ".join(f"{k}={v}" for k, v in sorted(run.statuses_at_end.items()))
        lines.append(
            f"  #{run.index} {run.worker_id} ({mode}): {ready}, lived {lived:.2f} s, {how}; {statuses}"
        )
    return "\n".join(lines)


__all__ += ["Report", "summary", "timeline"]
