"""The durable agent loop (ARCHITECTURE §3): one claimed task, run until it stops.

The session log *is* the workflow history. Every step is stored before it is acted on:

1. build the model input from this session only (``engine.context``);
2. call the model, store its response as one ``model.response`` event;
3. for each tool call store ``tool.call`` (the intent), run the tool, store ``tool.result``;
4. ``ask_user`` (and a tool that needs approval) stores a ``question`` and moves the task to
   ``waiting``, giving up its lease: nothing is held until the answer re-queues it;
5. a response without tool calls completes the task.

A run starts from whatever the log says, so any worker can continue any task after a crash:
completed steps are read, never re-run; a ``tool.call`` without its result is *in doubt* (an
idempotent tool runs again with the same key, any other gets an ``interrupted`` result); a model
call whose response was never stored is simply made again. Every write is fenced by the lease
epoch, so a worker that lost its lease can no longer write.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import anyio

from openbuda.domain.conversation import ModelInput, ModelReply, SystemText, ToolCall, UserTurn
from openbuda.domain.errors import LeaseLost, ModelError, NoModel, OpenbudaError
from openbuda.domain.events import CONVERSATION_TYPES, EventType, NewEvent
from openbuda.domain.ids import new_id
from openbuda.domain.records import (
    Agent,
    Event,
    Question,
    QuestionKind,
    Session,
    Task,
    TaskError,
    TaskResult,
)
from openbuda.domain.states import TaskStatus
from openbuda.engine.context import (
    SUMMARY_INSTRUCTIONS,
    build_input,
    build_turns,
    choose_compaction_boundary,
    estimate_tokens,
    render_for_summary,
)
from openbuda.engine.tools import (
    ASK_USER,
    NoToolHooks,
    Tool,
    ToolContext,
    ToolHooks,
    ToolOutcome,
    ToolRegistry,
    check_args,
)
from openbuda.ports import (
    Broadcaster,
    Clock,
    ContextProjection,
    Fence,
    ModelClient,
    ReadEvents,
    Store,
    TaskChange,
    WriteTx,
)
from openbuda.service.transitions import transition
from openbuda.settings import Settings

__all__ = ["EngineDeps", "MemoryReader", "TaskRunner"]

log = logging.getLogger("openbuda.engine")

MemoryReader = Callable[[Agent], Awaitable[str | None]]
"""Reads the agent's memory index (``MEMORY.md``) once when a task starts or resumes."""

TOOL_OUTPUT_CAP = 64 * 1024
_READ_TYPES = frozenset(str(t) for t in CONVERSATION_TYPES)


async def _no_memory(_agent: Agent) -> str | None:
    return None


@dataclass(slots=True)
class EngineDeps:
    store: Store
    clock: Clock
    broadcaster: Broadcaster
    settings: Settings
    models: Callable[[str | None], ModelClient]
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    memory: MemoryReader = field(default=_no_memory)
    hooks: ToolHooks = field(default_factory=NoToolHooks)
    """Around every tool call: the Drive working-copy sync."""


class _Stop(Exception):
    """The run is over (waiting, finished, or the lease is gone)."""


class TaskRunner:
    """Runs claimed tasks. Stateless between runs: everything it needs is in the store."""

    def __init__(self, deps: EngineDeps) -> None:
        self.deps = deps

    async def run(self, task: Task) -> None:
        """Run ``task`` (claimed by this worker: ``running`` with its lease) until it stops."""
        run = _Run(self.deps, task)
        try:
            await run.execute()
        except _Stop:
            pass
        except LeaseLost:
            log.info("task %s: lease lost, another worker or a cancel took over", task.id)


class _Run:
    def __init__(self, deps: EngineDeps, task: Task) -> None:
        self.deps = deps
        self.task = task
        self.space_id = task.space_id
        self.session_id = task.session_id
        self.fence = Fence(task.id, task.lease_epoch)
        self.events: list[Event] = []
        self.last_seq = 0
        self.summary = ""
        self.through_seq = 0
        self.task_start_seq: int | None = None
        self.memory: str | None = None
        self.tokens = 0
        """Token estimate of ``events``, kept up to date as events arrive."""

    # -- the loop ------------------------------------------------------------------------------

    async def execute(self) -> None:
        deps = self.deps
        async with deps.store.read() as tx:
            agent = await tx.get_agent(self.space_id, self.task.agent_id)
            session = await tx.get_session(self.space_id, self.session_id, deps.clock.now())
            context = await tx.get_context(self.space_id, self.session_id)
            if agent is None or session is None:
                raise _Stop
            context = context or ContextProjection()
            self.summary, self.through_seq = context.summary, context.through_seq
            self.events = await tx.read_events(
                ReadEvents(
                    self.space_id, self.session_id, after_seq=self.through_seq, types=_READ_TYPES
                )
            )
        self.agent: Agent = agent
        self.session: Session = session
        self.last_seq = self.events[-1].seq if self.events else self.through_seq
        self.tokens = sum(estimate_tokens(e) for e in self.events)
        self.task_start_seq = next((e.seq for e in self.events if e.task_id == self.task.id), None)
        self.tools = deps.tools.for_agent(agent)
        self.tool_specs = deps.tools.specs_for(agent)
        model = deps.models(agent.model)
        self.memory = await deps.memory(agent)  # once per run: a stable context prefix
        fresh = True  # the events were just read
        while True:
            if not fresh:
                await self._refresh()
            fresh = False
            mine = [e for e in self.events if e.task_id == self.task.id]
            responses = [e for e in mine if e.type == EventType.MODEL_RESPONSE]
            if responses and await self._resolve_calls(responses[-1], mine):
                continue
            if responses and not responses[-1].data.get("tool_calls"):
                # A final answer is stored but the task did not complete: the process stopped in
                # between (or a steer message arrived). Complete with it; never ask again.
                final = responses[-1]
                seen = int(final.data.get("input_seq", final.seq))
                if await self._complete(ModelReply(str(final.data.get("text") or "")), seen):
                    raise _Stop
            if len(responses) >= agent.settings.max_steps:
                await self._fail(
                    "max_steps",
                    f"the task made {len(responses)} model calls without finishing "
                    f"(the agent's max_steps is {agent.settings.max_steps})",
                )
            await self._maybe_compact(model)
            request = self._input()
            input_seq = self.last_seq
            reply = await self._call_model(model, request)
            response = NewEvent(
                EventType.MODEL_RESPONSE,
                {**reply.to_event_data(), "input_seq": input_seq},
                self.task.id,
            )
            if reply.tool_calls:
                await self._write([response])
            elif await self._complete(reply, input_seq, response):
                raise _Stop

    def _input(self) -> ModelInput:
        turns = build_turns(self.events, task_id=self.task.id, task_start_seq=self.task_start_seq)
        return build_input(
            instructions=self.agent.instructions,
            memory=self.memory,
            summary=self.summary,
            turns=turns,
            tools=self.tool_specs,
        )

    # -- the log -------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Read what others appended since our last look (a steer message, say)."""
        async with self.deps.store.read() as tx:
            new = await tx.read_events(
                ReadEvents(
                    self.space_id, self.session_id, after_seq=self.last_seq, types=_READ_TYPES
                )
            )
        self._take(new)

    def _take(self, stored: Sequence[Event]) -> None:
        for event in stored:
            if event.seq > self.last_seq:
                if event.type in _READ_TYPES:
                    self.events.append(event)
                    self.tokens += estimate_tokens(event)
                self.last_seq = event.seq

    async def _write(self, events: list[NewEvent]) -> list[Event]:
        """Append events fenced by our lease, then publish them."""
        async with self.deps.store.write() as tx:
            stored = await tx.append(
                self.space_id, self.session_id, events, self.deps.clock.now(), fence=self.fence
            )
        if stored and stored[0].seq != self.last_seq + 1:  # others appended in between
            await self._refresh()
        else:
            self._take(stored)
        await self._publish(stored)
        return stored

    async def _publish(self, events: Sequence[Event]) -> None:
        for event in events:
            await self.deps.broadcaster.publish(self.session_id, event.to_json())

    async def _transition(
        self,
        tx: WriteTx,
        target: TaskStatus,
        *,
        reason: str | None = None,
        before: list[NewEvent] | None = None,
        **fields: Any,
    ) -> list[Event]:
        change = TaskChange(
            self.space_id,
            self.task.id,
            frozenset({TaskStatus.RUNNING}),
            target,
            self.deps.clock.now(),
            fence=self.fence,
            clear_lease=True,
            **fields,
        )
        outcome = await transition(
            tx, change, session_id=self.session_id, reason=reason, before=before
        )
        if outcome is None:
            raise LeaseLost(f"task {self.task.id!r} is no longer ours")
        return outcome[1]

    # -- tool calls ----------------------------------------------------------------------------

    async def _resolve_calls(self, response: Event, mine: list[Event]) -> bool:
        """Run the open tool calls of the last response; ``True`` when any remained."""
        calls = [
            ToolCall(str(c["call_id"]), str(c["name"]), dict(c.get("args") or {}))
            for c in response.data.get("tool_calls") or []
        ]
        results = {str(e.data["call_id"]) for e in mine if e.type == EventType.TOOL_RESULT}
        open_calls = [call for call in calls if call.call_id not in results]
        if not open_calls:
            return False
        intents = {str(e.data["call_id"]) for e in mine if e.type == EventType.TOOL_CALL}
        approved = {
            str(e.data.get("call_id"))
            for e in mine
            if e.type == EventType.ANSWER and e.data.get("approved") is True
        }
        for call in open_calls:
            await self._resolve_call(call, call.call_id in intents, call.call_id in approved)
        return True

    async def _resolve_call(self, call: ToolCall, in_doubt: bool, approved: bool) -> None:
        if call.name == ASK_USER:
            await self._ask_user(call)
            return
        tool = self.tools.get(call.name)
        if tool is None:
            await self._result(call, "error", f"there is no tool named {call.name!r}", 0)
            return
        problem = check_args(tool.spec, call.args)
        if problem is not None:
            await self._result(call, "error", problem, 0)
            return
        if call.name in self.agent.settings.approval_tools and not approved:
            await self._ask(
                call,
                Question(
                    id=new_id("question"),
                    kind=QuestionKind.APPROVAL,
                    prompt=f"Allow the agent to run {call.name} with {_short_args(call.args)}?",
                    call_id=call.call_id,
                    asked_at=self.deps.clock.now(),
                    tool_name=call.name,
                ),
                intent=False,
            )
            return
        if in_doubt and not tool.idempotent:
            await self._result(
                call,
                "interrupted",
                f"The call of {call.name!r} was interrupted before its result was stored; it "
                "may or may not have taken effect. Check before repeating it.",
                0,
            )
            return
        if not in_doubt:
            await self._write([NewEvent(EventType.TOOL_CALL, call.to_json(), self.task.id)])
        await self._run_tool(tool, call)

    async def _run_tool(self, tool: Tool, call: ToolCall) -> None:
        async def emit(stream: str, text: str) -> None:
            await self.deps.broadcaster.publish(
                self.session_id,
                {
                    "type": EventType.TOOL_OUTPUT.value,
                    "data": {"call_id": call.call_id, "stream": stream, "text": text},
                    "task_id": self.task.id,
                },
            )

        context = ToolContext(self.agent, self.session, self.task.id, call.call_id, emit)
        hooks = self.deps.hooks
        started = time.perf_counter()
        await hooks.before_tool(context)
        try:
            outcome = await tool.run(context, call.args)
        except OpenbudaError as error:
            outcome = ToolOutcome(f"{error.code}: {error.message}", "error")
        except Exception as error:  # a tool's bug must not kill the task: the model decides
            log.exception("tool %s failed", call.name)
            outcome = ToolOutcome(f"{type(error).__name__}: {error}", "error")
        changed = await hooks.after_tool(context)
        duration_ms = int((time.perf_counter() - started) * 1000)
        output = outcome.output if changed.note is None else f"{outcome.output}\n\n{changed.note}"
        files = list(dict.fromkeys((*outcome.files, *changed.written)))
        await self._result(call, outcome.status, output, duration_ms, files, changed.paths)

    async def _result(
        self,
        call: ToolCall,
        status: str,
        output: str,
        duration_ms: int,
        files: Sequence[str] = (),
        changed: Sequence[str] = (),
    ) -> None:
        """The call's ``tool.result`` and, when files changed, its ``drive.changed`` (one
        commit)."""
        data: dict[str, Any] = {
            "call_id": call.call_id,
            "status": status,
            "output": _cap(output),
            "duration_ms": duration_ms,
        }
        if files:
            data["files"] = list(files)
        removed = sorted(set(changed) - set(files))
        if removed:
            data["removed"] = removed
        events = [NewEvent(EventType.TOOL_RESULT, data, self.task.id)]
        if changed:
            events.append(NewEvent(EventType.DRIVE_CHANGED, {"paths": list(changed)}, self.task.id))
        await self._write(events)

    async def _ask_user(self, call: ToolCall) -> None:
        args = call.args
        prompt = args.get("prompt")
        kind = args.get("kind") or "text"
        options = args.get("options")
        problem: str | None = None
        if not isinstance(prompt, str) or not prompt.strip():
            problem = "ask_user needs a non-empty string `prompt`"
        elif kind not in ("text", "choice", "approval"):
            problem = "ask_user `kind` must be 'text', 'choice' or 'approval'"
        elif kind == "choice" and (
            not isinstance(options, list)
            or len(options) < 2
            or not all(isinstance(o, str) and o for o in options)
        ):
            problem = "ask_user with kind 'choice' needs `options`: at least two strings"
        if problem is not None:
            await self._result(call, "error", problem, 0)
            return
        assert isinstance(prompt, str)
        question = Question(
            id=new_id("question"),
            kind=QuestionKind(kind),
            prompt=prompt[:10_000],
            call_id=call.call_id,
            asked_at=self.deps.clock.now(),
            options=[str(o) for o in options]
            if kind == "choice" and isinstance(options, list)
            else None,
        )
        await self._ask(call, question, intent=True)

    async def _ask(self, call: ToolCall, question: Question, *, intent: bool) -> None:
        before: list[NewEvent] = []
        if intent:
            before.append(NewEvent(EventType.TOOL_CALL, call.to_json(), self.task.id))
        before.append(NewEvent(EventType.QUESTION, question.to_json(), self.task.id))
        async with self.deps.store.write() as tx:
            stored = await self._transition(
                tx, TaskStatus.WAITING, reason="question", before=before, question=question
            )
        await self._publish(stored)
        raise _Stop

    # -- model ---------------------------------------------------------------------------------

    async def _call_model(self, model: ModelClient, request: ModelInput) -> ModelReply:
        settings = self.deps.settings
        attempt = 0

        async def on_text(text: str) -> None:
            await self.deps.broadcaster.publish(
                self.session_id,
                {
                    "type": EventType.TEXT_DELTA.value,
                    "data": {"task_id": self.task.id, "text": text},
                    "task_id": self.task.id,
                },
            )

        while True:
            try:
                with anyio.fail_after(settings.model_timeout_seconds):
                    return await model.respond(request, on_text)
            except NoModel as error:
                await self._fail(error.code, error.message)
            except (ModelError, TimeoutError) as error:
                if isinstance(error, TimeoutError):
                    error = ModelError(
                        f"the model did not answer within {settings.model_timeout_seconds:g} s"
                    )
                if not error.retryable or attempt >= settings.model_retries:
                    await self._fail(
                        error.code, f"{error.message} (after {attempt + 1} attempt(s))"
                    )
                delay = settings.model_retry_base_seconds * (2**attempt)
                delay *= 0.5 + random.random()  # jitter, so retries of many tasks spread out
                log.warning(
                    "task %s: model call failed (%s), retry %d in %.1f s",
                    self.task.id,
                    error.message,
                    attempt + 1,
                    delay,
                )
                attempt += 1
                await self.deps.clock.sleep(delay)

    async def _maybe_compact(self, model: ModelClient) -> None:
        budget = self.agent.settings.context_token_budget
        if self.tokens <= budget or self.task_start_seq is None:
            return
        boundary = choose_compaction_boundary(
            self.events, keep_tokens=budget // 2, not_after_seq=self.task_start_seq
        )
        if boundary is None:
            return
        old = [e for e in self.events if e.seq < boundary]
        kept = [e for e in self.events if e.seq >= boundary]
        request = ModelInput(
            turns=(
                SystemText(SUMMARY_INSTRUCTIONS),
                UserTurn(render_for_summary(self.summary, old)),
            )
        )
        reply = await self._call_model(model, request)
        through = boundary - 1
        projection = ContextProjection(
            summary=reply.text.strip(),
            through_seq=through,
            tokens_after=sum(estimate_tokens(e) for e in kept),
        )
        async with self.deps.store.write() as tx:
            await tx.put_context(self.space_id, self.session_id, projection)
            stored = await tx.append(
                self.space_id,
                self.session_id,
                [NewEvent(EventType.CONTEXT_COMPACTED, {"through_seq": through}, self.task.id)],
                self.deps.clock.now(),
                fence=self.fence,
            )
        self.summary, self.through_seq, self.events = projection.summary, through, kept
        self.tokens = projection.tokens_after
        self._take(stored)
        await self._publish(stored)

    # -- endings -------------------------------------------------------------------------------

    async def _complete(
        self, reply: ModelReply, input_seq: int, response: NewEvent | None = None
    ) -> bool:
        """Complete with ``reply``; ``False`` when a steer message arrived after the model
        input was built (the model must see it first).

        ``response``, the reply's ``model.response`` event when it is not stored yet, is
        appended in the same transaction: a final step costs one commit.
        """
        files: set[str] = set()  # written by the task and not deleted by it afterwards
        for e in self.events:
            if e.task_id == self.task.id and e.type == EventType.TOOL_RESULT:
                files.update(str(path) for path in e.data.get("files") or [])
                files.difference_update(str(path) for path in e.data.get("removed") or [])
        result = TaskResult(reply.text, sorted(files))
        stored: list[Event] = []
        completed = False
        with anyio.CancelScope(shield=True):
            async with self.deps.store.write() as tx:
                now = self.deps.clock.now()
                await tx.lock_session(self.space_id, self.session_id, now)
                if response is not None:
                    stored += await tx.append(
                        self.space_id, self.session_id, [response], now, fence=self.fence
                    )
                steered = await tx.read_events(
                    ReadEvents(
                        self.space_id,
                        self.session_id,
                        after_seq=input_seq,
                        task_id=self.task.id,
                        types=frozenset({EventType.MESSAGE}),
                    )
                )
                if not any(e.data.get("role") == "user" for e in steered):
                    stored += await self._transition(
                        tx,
                        TaskStatus.COMPLETED,
                        before=[
                            NewEvent(
                                EventType.MESSAGE,
                                {
                                    "role": "assistant",
                                    "text": reply.text,
                                    "message_id": new_id("message"),
                                },
                                self.task.id,
                            ),
                            NewEvent(EventType.TASK_RESULT, result.to_json(), self.task.id),
                        ],
                        result=result,
                        set_finished=True,
                    )
                    completed = True
            await self._publish(stored)
        if not completed:
            await self._refresh()
        return completed

    async def _fail(self, code: str, message: str) -> NoReturn:
        with anyio.CancelScope(shield=True):
            async with self.deps.store.write() as tx:
                stored = await self._transition(
                    tx,
                    TaskStatus.FAILED,
                    reason=code,
                    error=TaskError(code, message),
                    set_finished=True,
                )
            await self._publish(stored)
        raise _Stop


def _cap(output: str) -> str:
    if len(output) <= TOOL_OUTPUT_CAP:
        return output
    omitted = len(output) - TOOL_OUTPUT_CAP
    return output[:TOOL_OUTPUT_CAP] + f"\n… [{omitted} more characters not stored]"


def _short_args(args: dict[str, Any]) -> str:
    text = json.dumps(args, ensure_ascii=False)
    return text if len(text) <= 500 else text[:500] + "…"
