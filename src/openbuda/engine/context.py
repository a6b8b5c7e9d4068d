"""What the model sees: one session's context projection turned into a ``ModelInput``.

The order is fixed (ARCHITECTURE §3): the agent's instructions, the memory index and the
context summary as system messages; then the session's turns in order: each user message's
text verbatim as one user message, each model response with its tool calls, each tool result
(an ``ask_user`` answer is its call's result).

The input is built from the stored projection only: the rolling summary plus the events after
``through_seq``. It never reads the whole history, so its cost does not grow with the session.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    SystemText,
    ToolCall,
    ToolResultTurn,
    ToolSpec,
    Turn,
    UserTurn,
)
from openbuda.domain.events import EventType
from openbuda.domain.records import Event

__all__ = [
    "SUMMARY_INSTRUCTIONS",
    "build_input",
    "build_turns",
    "choose_compaction_boundary",
    "estimate_tokens",
    "render_for_summary",
]

_NO_RESULT = "(no result was recorded: the task stopped before this call finished)"

SUMMARY_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an AI agent. "
    "Rewrite the summary so that it includes the new part of the conversation. Keep every fact, "
    "decision, name, number, open question and commitment; drop small talk. Answer with the "
    "summary only."
)


def estimate_tokens(event: Event) -> int:
    """A cheap token estimate of a conversation event (about four characters a token)."""
    if event.type not in _COUNTED:
        return 0
    return len(json.dumps(event.data, separators=(",", ":"), ensure_ascii=False)) // 4 + 1


_COUNTED = frozenset(
    {
        EventType.MESSAGE,
        EventType.MODEL_RESPONSE,
        EventType.TOOL_CALL,
        EventType.TOOL_RESULT,
        EventType.ANSWER,
        EventType.QUESTION,
    }
)


@dataclass
class _Builder:
    turns: list[Turn]
    pending: dict[str, str]
    deferred: list[UserTurn]

    def user(self, text: str) -> None:
        if self.pending:
            self.deferred.append(UserTurn(text))
        else:
            self.turns.append(UserTurn(text))

    def close_pending(self) -> None:
        for call_id, name in self.pending.items():
            self.turns.append(ToolResultTurn(call_id, name, _NO_RESULT, is_error=True))
        self.pending.clear()
        self.flush()

    def flush(self) -> None:
        self.turns.extend(self.deferred)
        self.deferred.clear()


def build_turns(
    events: Sequence[Event], *, task_id: str | None = None, task_start_seq: int | None = None
) -> list[Turn]:
    """The conversation turns of ``events`` (one session's, in ``seq`` order).

    Each task's events come as one block, in the order the tasks started (their messages'
    ``seq``). When building for a task, the tasks queued after it are left out: a task never
    sees messages queued after its own. User messages that arrive while tool calls are open are
    placed after their results.
    """
    builder = _Builder([], {}, [])
    held: list[Event] = []
    starts: dict[str, int] = {}
    for event in events:
        if event.task_id is not None:
            if _opens_task(event):
                starts[event.task_id] = event.seq
            else:
                # A task starts with its message. When the summary covers that message, the
                # task started before every event here: its later events (stored after the
                # messages of tasks queued behind it) still come first.
                starts.setdefault(event.task_id, 0)

    def turn_order(event: Event) -> tuple[int, int]:
        # Tasks of a session run one at a time: a task's events belong after the tasks started
        # before it, even when a later task's message was stored while it ran.
        return (starts[event.task_id] if event.task_id is not None else event.seq, event.seq)

    for event in sorted(events, key=turn_order):
        if (
            task_start_seq is not None
            and event.task_id is not None
            and event.task_id != task_id
            and starts[event.task_id] > task_start_seq
        ):
            continue
        data = event.data
        match event.type:
            case EventType.MESSAGE:
                if data.get("role") == "user" and data.get("steer"):
                    held.append(event)
                elif data.get("role") == "user":
                    builder.user(str(data.get("text", "")))
                elif event.task_id is None:
                    # imported history; a task's own assistant text is its model.response
                    builder.close_pending()
                    builder.turns.append(AssistantTurn(str(data.get("text", ""))))
            case EventType.MODEL_RESPONSE:
                builder.close_pending()
                # a steer message reaches the model at the first call made after it was stored
                seen = int(data.get("input_seq", event.seq))
                for message in [m for m in held if m.seq <= seen]:
                    builder.user(str(message.data.get("text", "")))
                later = [m for m in held if m.seq > seen]
                held.clear()
                calls = tuple(
                    ToolCall(str(c["call_id"]), str(c["name"]), dict(c.get("args") or {}))
                    for c in data.get("tool_calls") or []
                )
                builder.turns.append(AssistantTurn(str(data.get("text") or ""), calls))
                builder.pending = {call.call_id: call.name for call in calls}
                for message in later:
                    builder.user(str(message.data.get("text", "")))
            case EventType.TOOL_RESULT:
                call_id = str(data.get("call_id"))
                name = builder.pending.pop(call_id, None)
                if name is not None:
                    builder.turns.append(
                        ToolResultTurn(
                            call_id,
                            name,
                            str(data.get("output", "")),
                            is_error=data.get("status") != "ok",
                        )
                    )
                    if not builder.pending:
                        builder.flush()
            case _:
                pass
    builder.close_pending()
    for message in held:
        builder.user(str(message.data.get("text", "")))
    return builder.turns


def _opens_task(event: Event) -> bool:
    """The user message that started its task (not a steer message given to it later)."""
    return (
        event.type == EventType.MESSAGE
        and event.data.get("role") == "user"
        and not event.data.get("steer")
    )


def build_input(
    *,
    instructions: str,
    memory: str | None,
    summary: str,
    turns: Sequence[Turn],
    tools: Sequence[ToolSpec],
) -> ModelInput:
    system: list[Turn] = []
    if instructions.strip():
        system.append(SystemText(instructions))
    if memory and memory.strip():
        system.append(SystemText("Your memory index (MEMORY.md):\n" + memory))
    if summary.strip():
        system.append(SystemText("Summary of the earlier part of this conversation:\n" + summary))
    return ModelInput(turns=(*system, *turns), tools=tuple(tools))


def choose_compaction_boundary(
    events: Sequence[Event], *, keep_tokens: int, not_after_seq: int
) -> int | None:
    """The ``seq`` of the turn start from which events are kept, or ``None`` if none fits.

    Turns start at user messages. The boundary is the earliest turn start (at or before
    ``not_after_seq``, the current task's start) whose suffix fits in ``keep_tokens``; when no
    suffix fits, the latest turn start before the current task, so at least one older turn is
    compacted. Everything before the boundary goes into the summary.
    """
    if not events:
        return None
    first = events[0].seq
    starts = [
        e.seq
        for e in events
        if e.type == EventType.MESSAGE
        and e.data.get("role") == "user"
        and not e.data.get("steer")
        and first < e.seq <= not_after_seq
    ]
    if not starts:
        return None
    # A turn start that splits another task (a message queued while that task ran, before its
    # answer was stored) would summarise the task's message without its answer: use such a
    # start only when there is no other, so that the context stays bounded.
    spans: dict[str, tuple[int, int]] = {}
    for event in events:
        if event.task_id is not None:
            first_seq, _ = spans.get(event.task_id, (event.seq, event.seq))
            spans[event.task_id] = (first_seq, event.seq)
    whole = _outside_spans(starts, spans.values())
    starts = whole or starts
    totals: dict[int, int] = {}
    suffix = 0
    for event in reversed(events):
        suffix += estimate_tokens(event)
        totals[event.seq] = suffix
    for start in starts:
        if totals[start] <= keep_tokens:
            return start
    return starts[-1]


def _outside_spans(starts: Sequence[int], spans: Iterable[tuple[int, int]]) -> list[int]:
    """The ``starts`` (in their order) that lie in no span ``(lo, hi]``: one sweep over the
    spans sorted by ``lo``, O(n log n) rather than every start against every span."""
    ordered = sorted(spans)
    outside: set[int] = set()
    reach: int | None = None  # the highest ``hi`` among the spans with ``lo`` < the start
    index = 0
    for start in sorted(starts):
        while index < len(ordered) and ordered[index][0] < start:
            hi = ordered[index][1]
            reach = hi if reach is None else max(reach, hi)
            index += 1
        if reach is None or reach < start:
            outside.add(start)
    return [start for start in starts if start in outside]


def render_for_summary(previous_summary: str, events: Sequence[Event]) -> str:
    """The text a summarising model call reads: the summary so far and the new turns."""
    lines: list[str] = []
    if previous_summary.strip():
        lines += ["Summary so far:", previous_summary, "", "New part of the conversation:"]
    for turn in build_turns(events):
        match turn:
            case UserTurn(text=text):
                lines.append(f"User: {text}")
            case AssistantTurn(text=text, tool_calls=calls):
                if text:
                    lines.append(f"Agent: {text}")
                for call in calls:
                    lines.append(f"Agent called {call.name} with {json.dumps(call.args)}")
            case ToolResultTurn(name=name, output=output):
                lines.append(f"Result of {name}: {output[:2000]}")
            case _:
                pass
    return "\n".join(lines)
