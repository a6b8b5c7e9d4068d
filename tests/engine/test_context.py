"""Context: what the model sees of a session (``engine.context``) and how it is compacted.

Unit tests of ``build_turns``, ``choose_compaction_boundary``, ``estimate_tokens`` and
``render_for_summary`` over hand-made events, then the engine end to end: compaction with a
small ``context_token_budget``, tasks that never see messages queued after their own, steer
messages that arrive while tool calls are open, imported history.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    ModelReply,
    SystemText,
    ToolCall,
    ToolResultTurn,
    Turn,
    UserTurn,
)
from openbuda.domain.events import CONVERSATION_TYPES, EventType
from openbuda.domain.records import AgentSettings, Event
from openbuda.domain.states import TaskStatus
from openbuda.engine.context import (
    SUMMARY_INSTRUCTIONS,
    build_turns,
    choose_compaction_boundary,
    estimate_tokens,
    render_for_summary,
)
from openbuda.ports import AnyReadTx, ReadEvents, Store, StoreCapabilities, WriteTx
from openbuda.service.sessions import HistoryMessage, OnBusy
from openbuda.testing import FunctionModel, ScriptedModel, call, reply
from tests.harness import Harness, make_principal

from .helpers import all_events, holds, start_runtime, wait_for, wait_tasks

pytestmark = pytest.mark.anyio

AT = datetime(2025, 1, 1, tzinfo=UTC)
NO_RESULT = "(no result was recorded: the task stopped before this call finished)"
SUMMARY_PREFIX = "Summary of the earlier part of this conversation:\n"


# -- events by hand ---------------------------------------------------------------------------


def event(seq: int, type_: EventType, task: str | None = None, **data: Any) -> Event:
    return Event(seq, f"evt_{seq}", "ses_1", str(type_), AT, data, task)


def user(seq: int, text: str, task: str | None = None, *, steer: bool = False) -> Event:
    data: dict[str, Any] = {"role": "user", "text": text, "message_id": f"msg_{seq}"}
    if steer:
        data["steer"] = True
    return event(seq, EventType.MESSAGE, task, **data)


def assistant(seq: int, text: str, task: str | None = None) -> Event:
    return event(seq, EventType.MESSAGE, task, role="assistant", text=text, message_id=f"m{seq}")


def response(
    seq: int, task: str, text: str = "", *calls: tuple[str, str], input_seq: int | None = None
) -> Event:
    data: dict[str, Any] = {
        "text": text,
        "tool_calls": [{"call_id": cid, "name": name, "args": {}} for cid, name in calls],
    }
    if input_seq is not None:
        data["input_seq"] = input_seq
    return event(seq, EventType.MODEL_RESPONSE, task, **data)


def result(seq: int, task: str, call_id: str, output: str, status: str = "ok") -> Event:
    return event(seq, EventType.TOOL_RESULT, task, call_id=call_id, status=status, output=output)


def status(seq: int, task: str, value: str) -> Event:
    return event(seq, EventType.TASK_STATUS, task, status=value)


def a_call(call_id: str, name: str = "record") -> ToolCall:
    return ToolCall(call_id, name, {})


# -- build_turns ------------------------------------------------------------------------------


def test_a_task_becomes_user_assistant_and_tool_turns() -> None:
    events = [
        user(2, "hi", "t1"),
        status(3, "t1", "queued"),
        response(5, "t1", "let me look", ("c1", "record"), input_seq=4),
        event(6, EventType.TOOL_CALL, "t1", call_id="c1", name="record", args={}),
        result(7, "t1", "c1", "echo: x"),
        response(8, "t1", "found it", input_seq=7),
        assistant(9, "found it", "t1"),  # a task's own answer is its model.response
        event(10, EventType.TASK_RESULT, "t1", text="found it", files=[]),
    ]
    assert build_turns(events) == [
        UserTurn("hi"),
        AssistantTurn("let me look", (a_call("c1"),)),
        ToolResultTurn("c1", "record", "echo: x"),
        AssistantTurn("found it"),
    ]


def test_imported_history_is_user_and_assistant_turns() -> None:
    events = [user(2, "a"), assistant(3, "b"), user(4, "c"), assistant(5, "d"), user(6, "e", "t1")]
    assert build_turns(events, task_id="t1", task_start_seq=6) == [
        UserTurn("a"),
        AssistantTurn("b"),
        UserTurn("c"),
        AssistantTurn("d"),
        UserTurn("e"),
    ]


def test_failed_tool_results_are_errors_and_unknown_results_are_ignored() -> None:
    events = [
        user(1, "go", "t1"),
        response(2, "t1", "", ("c1", "a"), ("c2", "b"), input_seq=1),
        result(3, "t1", "c1", "boom", status="error"),
        result(4, "t1", "c2", "maybe", status="interrupted"),
        result(5, "t1", "c9", "from nowhere"),
    ]
    assert build_turns(events) == [
        UserTurn("go"),
        AssistantTurn("", (a_call("c1", "a"), a_call("c2", "b"))),
        ToolResultTurn("c1", "a", "boom", is_error=True),
        ToolResultTurn("c2", "b", "maybe", is_error=True),
    ]


def test_answers_and_questions_reach_the_model_only_as_the_tool_result() -> None:
    events = [
        user(1, "book it", "t1"),
        response(2, "t1", "", ("c1", "ask_user"), input_seq=1),
        event(3, EventType.TOOL_CALL, "t1", call_id="c1", name="ask_user", args={}),
        event(4, EventType.QUESTION, "t1", id="q_1", kind="text", prompt="Where?", call_id="c1"),
        event(5, EventType.ANSWER, "t1", question_id="q_1", call_id="c1", text="Paris", by="m"),
        result(6, "t1", "c1", "Paris"),
    ]
    assert build_turns(events) == [
        UserTurn("book it"),
        AssistantTurn("", (a_call("c1", "ask_user"),)),
        ToolResultTurn("c1", "ask_user", "Paris"),
    ]


def test_open_calls_of_a_stopped_task_get_an_error_result_before_the_next_message() -> None:
    events = [
        user(1, "first", "t1"),
        response(2, "t1", "", ("c1", "record"), input_seq=1),
        event(3, EventType.TOOL_CALL, "t1", call_id="c1", name="record", args={}),
        status(4, "t1", "cancelled"),
        user(5, "second", "t2"),
    ]
    expected: list[Turn] = [
        UserTurn("first"),
        AssistantTurn("", (a_call("c1"),)),
        ToolResultTurn("c1", "record", NO_RESULT, is_error=True),
        UserTurn("second"),
    ]
    assert build_turns(events, task_id="t2", task_start_seq=5) == expected
    # also when nothing follows (the log as the cancelled task left it)
    assert build_turns(events[:4]) == expected[:3]


def test_a_task_never_sees_tasks_queued_after_it_and_sees_earlier_ones_whole() -> None:
    # t2 and t3 were queued while t1 ran: t1's answer is stored after their messages
    events = [
        user(2, "one", "t1"),
        user(4, "two", "t2"),
        user(6, "three", "t3"),
        response(8, "t1", "answer one", input_seq=7),
        assistant(9, "answer one", "t1"),
        response(11, "t2", "answer two", input_seq=10),
    ]
    assert build_turns(events, task_id="t1", task_start_seq=2) == [
        UserTurn("one"),
        AssistantTurn("answer one"),
    ]
    assert build_turns(events, task_id="t2", task_start_seq=4) == [
        UserTurn("one"),
        AssistantTurn("answer one"),
        UserTurn("two"),
        AssistantTurn("answer two"),
    ]
    assert build_turns(events[:5], task_id="t3", task_start_seq=6) == [
        UserTurn("one"),
        AssistantTurn("answer one"),
        UserTurn("two"),
        UserTurn("three"),
    ]


def test_a_task_whose_message_was_compacted_keeps_its_place_before_later_tasks() -> None:
    # The summary covers seq <= 3 (t1's message): t1's answer, stored after t2's message, is
    # still t1's and comes before t2's turn, which must see it.
    kept = [
        user(4, "two", "t2"),
        response(6, "t1", "answer one", input_seq=5),
        assistant(7, "answer one", "t1"),
    ]
    assert build_turns(kept, task_id="t2", task_start_seq=4) == [
        AssistantTurn("answer one"),
        UserTurn("two"),
    ]


def test_a_steer_goes_after_the_response_that_had_not_seen_it() -> None:
    events = [
        user(1, "work", "t1"),
        user(3, "metric please", "t1", steer=True),  # stored while the model was thinking
        response(4, "t1", "", ("c1", "record"), input_seq=2),
        result(5, "t1", "c1", "done"),
    ]
    assert build_turns(events) == [
        UserTurn("work"),
        AssistantTurn("", (a_call("c1"),)),
        ToolResultTurn("c1", "record", "done"),
        UserTurn("metric please"),
    ]
    # the next response saw it: it stays before that response
    events.append(response(6, "t1", "in metric", input_seq=5))
    assert build_turns(events)[-2:] == [UserTurn("metric please"), AssistantTurn("in metric")]


def test_a_steer_during_open_tool_calls_goes_after_their_results() -> None:
    events = [
        user(1, "work", "t1"),
        response(2, "t1", "", ("c1", "a"), ("c2", "b"), input_seq=1),
        result(3, "t1", "c1", "one"),
        user(4, "hurry", "t1", steer=True),
        result(5, "t1", "c2", "two"),
    ]
    assert build_turns(events) == [
        UserTurn("work"),
        AssistantTurn("", (a_call("c1", "a"), a_call("c2", "b"))),
        ToolResultTurn("c1", "a", "one"),
        ToolResultTurn("c2", "b", "two"),
        UserTurn("hurry"),
    ]


def test_a_steer_seen_by_the_response_stays_before_it() -> None:
    events = [
        user(1, "work", "t1"),
        user(2, "shorter", "t1", steer=True),
        response(3, "t1", "short", input_seq=2),
    ]
    assert build_turns(events) == [UserTurn("work"), UserTurn("shorter"), AssistantTurn("short")]


# -- choose_compaction_boundary ---------------------------------------------------------------


def turns_of(size: int, count: int) -> list[Event]:
    """``count`` turns (user message, response, answer) of about ``size`` tokens each part."""
    events: list[Event] = []
    for index in range(count):
        seq = index * 3 + 1
        task = f"t{index}"
        events += [
            user(seq, "u" * size * 4, task),
            response(seq + 1, task, "a" * size * 4, input_seq=seq),
            assistant(seq + 2, "a" * size * 4, task),
        ]
    return events


def test_no_boundary_without_an_earlier_turn() -> None:
    assert choose_compaction_boundary([], keep_tokens=10, not_after_seq=5) is None
    single = turns_of(100, 1)
    assert choose_compaction_boundary(single, keep_tokens=10, not_after_seq=1) is None


def test_the_boundary_is_the_earliest_turn_whose_suffix_fits() -> None:
    events = turns_of(100, 4)  # turns start at seq 1, 4, 7, 10
    last_two = sum(estimate_tokens(e) for e in events if e.seq >= 7)
    assert choose_compaction_boundary(events, keep_tokens=last_two, not_after_seq=10) == 7
    assert choose_compaction_boundary(events, keep_tokens=last_two - 1, not_after_seq=10) == 10
    everything_but_first = sum(estimate_tokens(e) for e in events if e.seq >= 4)
    assert choose_compaction_boundary(events, keep_tokens=10**6, not_after_seq=10) == 4
    assert (
        choose_compaction_boundary(events, keep_tokens=everything_but_first, not_after_seq=10) == 4
    )


def test_when_nothing_fits_the_latest_turn_before_the_task_is_the_boundary() -> None:
    events = turns_of(100, 4)
    assert choose_compaction_boundary(events, keep_tokens=1, not_after_seq=10) == 10
    assert choose_compaction_boundary(events, keep_tokens=1, not_after_seq=9) == 7
    # turns after the task's own start are never a boundary
    assert choose_compaction_boundary(events, keep_tokens=10**6, not_after_seq=1) is None


def test_a_boundary_that_splits_a_task_is_the_last_resort() -> None:
    # t2 was queued while t1 ran: a cut at t2's message would summarise t1's message
    # without its answer
    events = [
        user(1, "one", "t1"),
        user(2, "two", "t2"),
        response(3, "t1", "answer one", input_seq=2),
        assistant(4, "answer one", "t1"),
        response(5, "t2", "answer two", input_seq=4),
        assistant(6, "answer two", "t2"),
        user(7, "three", "t3"),
    ]
    assert choose_compaction_boundary(events, keep_tokens=10**6, not_after_seq=7) == 7
    assert choose_compaction_boundary(events, keep_tokens=1, not_after_seq=7) == 7
    # when no other start is left, the context must still shrink
    assert choose_compaction_boundary(events, keep_tokens=1, not_after_seq=2) == 2


def test_steer_messages_are_never_a_boundary() -> None:
    events = [
        user(1, "x" * 400, "t1"),
        response(2, "t1", "y" * 400, input_seq=1),
        user(3, "z" * 40, "t1", steer=True),
        response(4, "t1", "w" * 40, input_seq=3),
        user(5, "v" * 40, "t2"),
    ]
    assert choose_compaction_boundary(events, keep_tokens=1, not_after_seq=5) == 5
    assert choose_compaction_boundary(events, keep_tokens=1, not_after_seq=4) is None


def test_estimate_tokens_counts_conversation_events_only() -> None:
    message = user(1, "x" * 400, "t1")
    assert 100 < estimate_tokens(message) < 130
    assert estimate_tokens(status(2, "t1", "queued")) == 0
    assert estimate_tokens(event(3, EventType.CONTEXT_COMPACTED, "t1", through_seq=2)) == 0
    assert estimate_tokens(event(4, EventType.SESSION_CREATED, title="x" * 400)) == 0


def test_render_for_summary_tells_the_turns_after_the_previous_summary() -> None:
    events = [
        user(1, "book a table", "t1"),
        response(2, "t1", "checking", ("c1", "record"), input_seq=1),
        result(3, "t1", "c1", "free at 8"),
        response(4, "t1", "8 pm is free", input_seq=3),
    ]
    text = render_for_summary("The user is Ada.", events)
    assert text.splitlines() == [
        "Summary so far:",
        "The user is Ada.",
        "",
        "New part of the conversation:",
        "User: book a table",
        "Agent: checking",
        "Agent called record with {}",
        "Result of record: free at 8",
        "Agent: 8 pm is free",
    ]
    assert render_for_summary("", events[:1]) == "User: book a table"


# -- the engine: compaction -------------------------------------------------------------------


@dataclass
class ReadLog:
    requests: list[tuple[ReadEvents, int]] = field(default_factory=list[tuple[ReadEvents, int]])
    """Every ``read_events`` of a read transaction and how many events it returned."""


class _RecordingReadTx:
    """A read transaction that records its ``read_events`` requests (everything else passes)."""

    def __init__(self, inner: AnyReadTx, log: ReadLog) -> None:
        self._inner = inner
        self._log = log

    async def read_events(self, request: ReadEvents) -> list[Event]:
        found = await self._inner.read_events(request)
        self._log.requests.append((request, len(found)))
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RecordingStore:
    """A ``Store`` whose read transactions record the event reads made through them."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.capabilities: StoreCapabilities = inner.capabilities
        self.log = ReadLog()

    def write(self) -> AbstractAsyncContextManager[WriteTx]:
        return self._inner.write()

    @asynccontextmanager
    async def _read(self) -> AsyncGenerator[AnyReadTx]:
        async with self._inner.read() as tx:
            yield cast(AnyReadTx, _RecordingReadTx(tx, self.log))

    def read(self) -> AbstractAsyncContextManager[AnyReadTx]:
        return self._read()

    async def migrate(self) -> None:
        await self._inner.migrate()

    async def close(self) -> None:
        await self._inner.close()


ENGINE_READ = frozenset(str(t) for t in CONVERSATION_TYPES)
"""The event types the agent loop reads (the services read other sets)."""


def short(label: str) -> str:
    """About 40 tokens of text."""
    return f"{label}: " + "lorem ipsum " * 12


def long(label: str) -> str:
    """About 100 tokens of text: a turn of question and answer is about 340 tokens stored."""
    return f"{label}: " + "lorem ipsum " * 33


async def test_compaction_summarises_older_turns_and_later_inputs_start_after_it(
    store: Store, tmp_path: Path
) -> None:
    model = ScriptedModel(name="test:scripted")
    recording = RecordingStore(store)
    principal = await make_principal(store)
    async with start_runtime(recording, tmp_path, {"test:scripted": model}) as runtime:
        agent = await runtime.agents.create(
            principal,
            name="a",
            instructions="Be brief.",
            model="test:scripted",
            settings=AgentSettings(context_token_budget=500),
        )
        session = await runtime.sessions.create(principal, agent.id)

        async def turn(text: str, *steps: ModelReply | str) -> str:
            model.add(*steps)
            accepted = await runtime.sessions.send(principal, session.id, text)
            task = (await wait_tasks(runtime, principal, [accepted.task_id]))[accepted.task_id]
            assert task.status is TaskStatus.COMPLETED, task.error
            return accepted.task_id

        # two turns fit in the budget of 500 tokens
        await turn(long("q1"), reply(long("a1")))
        await turn(long("q2"), reply(long("a2")))
        assert len(model.inputs) == 2
        assert not [
            e for e in await all_events(runtime, principal, session.id) if "compacted" in e.type
        ]

        # the third does not: its task first summarises the two earlier turns
        third = await turn(long("q3"), reply("SUMMARY ONE"), reply(long("a3")))
        summary_call, answer_call = model.inputs[2:4]
        assert summary_call.tools == ()
        assert summary_call.turns[0] == SystemText(SUMMARY_INSTRUCTIONS)
        rendered = summary_call.turns[1]
        assert isinstance(rendered, UserTurn)
        assert rendered.text.splitlines() == [
            f"User: {long('q1')}",
            f"Agent: {long('a1')}",
            f"User: {long('q2')}",
            f"Agent: {long('a2')}",
        ]
        events = await all_events(runtime, principal, session.id)
        compacted = [e for e in events if e.type == "context.compacted"]
        assert len(compacted) == 1 and compacted[0].task_id == third
        q3 = next(e for e in events if e.type == "message" and e.data["text"] == long("q3"))
        through = compacted[0].data["through_seq"]
        assert through == q3.seq - 1
        third_types = [e.type for e in events if e.task_id == third]
        assert third_types.index("context.compacted") < third_types.index("model.response")
        assert answer_call.turns == (
            SystemText("Be brief."),
            SystemText(SUMMARY_PREFIX + "SUMMARY ONE"),
            UserTurn(long("q3")),
        )
        async with store.read() as tx:
            context = await tx.get_context(principal.space_id, session.id)
        assert context is not None
        assert (context.summary, context.through_seq) == ("SUMMARY ONE", through)

        # the next task reads the log from the summary on, and sees the turns after it
        reads_before = len(recording.log.requests)
        await turn(long("q4"), reply(long("a4")))
        assert model.inputs[4].turns == (
            SystemText("Be brief."),
            SystemText(SUMMARY_PREFIX + "SUMMARY ONE"),
            UserTurn(long("q3")),
            AssistantTurn(long("a3")),
            UserTurn(long("q4")),
        )
        engine_reads = [
            (request, count)
            for request, count in recording.log.requests[reads_before:]
            if request.session_id == session.id and request.types == ENGINE_READ
        ]
        assert engine_reads, "the task read no events"
        first_read, first_count = engine_reads[0]
        assert first_read.after_seq == through
        after_through = [e for e in events if e.seq > through and e.type in ENGINE_READ]
        assert first_count >= len(after_through) + 1  # those, and the new message
        assert all(request.after_seq >= through for request, _ in engine_reads)

        # and the summary rolls on: the next compaction starts from the previous summary
        await turn(long("q5"), reply("SUMMARY TWO"), reply("a5"))
        rolled = model.inputs[5].turns[1]
        assert isinstance(rolled, UserTurn)
        lines = rolled.text.splitlines()
        assert lines[:4] == ["Summary so far:", "SUMMARY ONE", "", "New part of the conversation:"]
        assert f"User: {long('q3')}" in lines and f"User: {long('q4')}" in lines
        assert not any("q1" in line or "q5" in line for line in lines[4:])
        assert model.inputs[6].turns == (
            SystemText("Be brief."),
            SystemText(SUMMARY_PREFIX + "SUMMARY TWO"),
            UserTurn(long("q5")),
        )
    model.assert_all_used()


async def test_compaction_while_tasks_are_queued_keeps_every_turn(
    store: Store, tmp_path: Path
) -> None:
    """Messages queued while a task runs are stored before its answer; a compaction at the
    next task's message must neither lose that answer nor move it after the next message."""
    release = anyio.Event()

    async def answer(request: ModelInput) -> ModelReply:
        if _is_summary(request):
            # a summary that names what it covers
            return reply(
                "SUMMARY of " + " ".join(sorted(set(LABEL.findall(_visible_text(request)))))
            )
        last = request.turns[-1]
        assert isinstance(last, UserTurn)
        label = last.text.split(":")[0]
        if label == "q1":
            await release.wait()
        return reply(long(label.replace("q", "a")))

    model = FunctionModel(answer, name="test:fn")
    principal = await make_principal(store)
    async with start_runtime(store, tmp_path, {"test:fn": model}) as runtime:
        agent = await runtime.agents.create(
            principal, name="a", model="test:fn", settings=AgentSettings(context_token_budget=500)
        )
        session = await runtime.sessions.create(principal, agent.id)
        task_ids = [(await runtime.sessions.send(principal, session.id, long("q1"))).task_id]
        await wait_for(holds(lambda: len(model.inputs) == 1), what="the first model call")
        for label in ("q2", "q3"):
            task_ids.append(
                (await runtime.sessions.send(principal, session.id, long(label))).task_id
            )
        release.set()
        done = await wait_tasks(runtime, principal, task_ids)
        assert {t.status for t in done.values()} == {TaskStatus.COMPLETED}
        events = await all_events(runtime, principal, session.id)

    assert any(e.type == "context.compacted" for e in events)
    answers = [request for request in model.inputs if not _is_summary(request)]
    assert len(answers) == 3
    for index, request in enumerate(answers, start=1):
        seen = _visible_text(request)
        labels = set(LABEL.findall(seen))
        earlier = {f"q{n}" for n in range(1, index + 1)} | {f"a{n}" for n in range(1, index)}
        assert labels == earlier, f"task {index} saw {sorted(labels)}"
        # each answer after its question (the summary, first, may cover a later question
        # than the first answer kept: no cut of this log keeps whole turns on both sides)
        for n in range(1, index):
            assert seen.index(f"q{n}") < seen.index(f"a{n}"), f"task {index}"


LABEL = re.compile(r"\b[qa][1-9]\b")


def _is_summary(request: ModelInput) -> bool:
    return bool(request.turns) and request.turns[0] == SystemText(SUMMARY_INSTRUCTIONS)


def _visible_text(request: ModelInput) -> str:
    return "\n".join(repr(turn) for turn in request.turns)


# -- the engine: what each task sees ----------------------------------------------------------


async def test_queued_tasks_see_the_messages_before_their_own_only(harness: Harness) -> None:
    release = anyio.Event()

    async def slow_first(request: ModelInput) -> ModelReply:
        await release.wait()
        return reply("one")

    harness.model.add(slow_first, reply("two"), reply("three"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    first = await harness.runtime.sessions.send(harness.principal, session.id, "first")
    await harness.wait_model_called()
    await harness.runtime.sessions.send(harness.principal, session.id, "second")
    third = await harness.runtime.sessions.send(harness.principal, session.id, "third")
    release.set()
    assert (await harness.wait_task(third.task_id)).status is TaskStatus.COMPLETED
    assert (await harness.wait_task(first.task_id)).status is TaskStatus.COMPLETED

    system = SystemText("Be brief.")
    assert [request.turns for request in harness.model.inputs] == [
        (system, UserTurn("first")),
        (system, UserTurn("first"), AssistantTurn("one"), UserTurn("second")),
        (
            system,
            UserTurn("first"),
            AssistantTurn("one"),
            UserTurn("second"),
            AssistantTurn("two"),
            UserTurn("third"),
        ),
    ]


async def test_a_steer_while_a_tool_runs_comes_after_its_result(harness: Harness) -> None:
    harness.record.delay_s = 0.3
    harness.model.add(call("record", text="a"), reply("adjusted"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "work")
    await wait_for(holds(lambda: bool(harness.record.calls)), what="the tool to start")
    steer = await harness.runtime.sessions.send(
        harness.principal, session.id, "use metric units", on_busy=OnBusy.STEER
    )
    assert steer.kind == "steer"
    task = await harness.wait_task(accepted.task_id)
    assert task.status is TaskStatus.COMPLETED

    events = await harness.events(session.id, accepted.task_id)
    kinds = [(e.type, e.data.get("text")) for e in events if e.type != "task.status"]
    steer_at = kinds.index(("message", "use metric units"))
    assert kinds[steer_at - 1][0] == "tool.call" and kinds[steer_at + 1][0] == "tool.result"
    assert harness.model.inputs[1].turns == (
        SystemText("Be brief."),
        UserTurn("work"),
        AssistantTurn("", (ToolCall("call_1", "record", {"text": "a"}),)),
        ToolResultTurn("call_1", "record", "echo: a"),
        UserTurn("use metric units"),
    )


async def test_the_next_task_sees_a_cancelled_tasks_open_call_as_an_error(
    harness: Harness,
) -> None:
    harness.record.delay_s = 10
    harness.model.add(call("record", text="slow"), reply("fresh start"))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id)
    first = await harness.runtime.sessions.send(harness.principal, session.id, "first")
    await wait_for(holds(lambda: bool(harness.record.calls)), what="the tool to start")
    await harness.runtime.tasks.cancel(harness.principal, first.task_id)
    second = await harness.runtime.sessions.send(harness.principal, session.id, "second")
    assert (await harness.wait_task(second.task_id)).status is TaskStatus.COMPLETED

    assert harness.model.inputs[1].turns == (
        SystemText("Be brief."),
        UserTurn("first"),
        AssistantTurn("", (ToolCall("call_1", "record", {"text": "slow"}),)),
        ToolResultTurn("call_1", "record", NO_RESULT, is_error=True),
        UserTurn("second"),
    )
    assert "tool.result" not in await harness.types(session.id, first.task_id)


async def test_imported_history_is_the_start_of_the_conversation(harness: Harness) -> None:
    history = [
        HistoryMessage("user", "I am Ada."),
        HistoryMessage("assistant", "Hello Ada."),
        HistoryMessage("user", "I like tea."),
        HistoryMessage("assistant", "Noted."),
    ]
    harness.model.add(reply("Ada, who likes tea."))
    agent = await harness.agent()
    session = await harness.runtime.sessions.create(harness.principal, agent.id, history=history)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "Who am I?")
    assert (await harness.wait_task(accepted.task_id)).status is TaskStatus.COMPLETED
    assert harness.model.last_input.turns == (
        SystemText("Be brief."),
        UserTurn("I am Ada."),
        AssistantTurn("Hello Ada."),
        UserTurn("I like tea."),
        AssistantTurn("Noted."),
        UserTurn("Who am I?"),
    )
    messages = await harness.runtime.sessions.messages(harness.principal, session.id)
    assert [(m.role, m.text, m.task_id) for m in messages] == [
        *((item.role, item.text, None) for item in history),
        ("user", "Who am I?", accepted.task_id),
        ("assistant", "Ada, who likes tea.", accepted.task_id),
    ]


async def test_a_long_imported_history_is_compacted_by_the_first_task(harness: Harness) -> None:
    history = [
        HistoryMessage("user" if index % 2 == 0 else "assistant", short(f"h{index}"))
        for index in range(20)
    ]
    harness.model.add(reply("SUMMARY OF THE IMPORT"), reply("ok"))
    agent = await harness.agent(context_token_budget=500)
    session = await harness.runtime.sessions.create(harness.principal, agent.id, history=history)
    accepted = await harness.runtime.sessions.send(harness.principal, session.id, "next")
    assert (await harness.wait_task(accepted.task_id)).status is TaskStatus.COMPLETED

    summary_call, answer_call = harness.model.inputs
    assert _is_summary(summary_call)
    assert f"User: {short('h0')}" in _visible_text(summary_call)
    turns = answer_call.turns
    assert turns[:2] == (
        SystemText("Be brief."),
        SystemText(SUMMARY_PREFIX + "SUMMARY OF THE IMPORT"),
    )
    assert turns[-1] == UserTurn("next")
    kept = turns[2:-1]
    # the latest imported turns are kept, in order, starting with a user turn; the summary
    # covers exactly the ones before them
    assert 2 <= len(kept) < len(history)
    assert kept[0] == UserTurn(history[-len(kept)].text)
    assert kept == tuple(
        UserTurn(h.text) if h.role == "user" else AssistantTurn(h.text)
        for h in history[-len(kept) :]
    )
    summarised = _visible_text(summary_call)
    assert all(h.text in summarised for h in history[: -len(kept)])
    assert not any(h.text in summarised for h in history[-len(kept) :])
