"""The engine process that ``test_crash.py`` kills with SIGKILL and starts again, many times.

Run by path (it is not imported by the worker process as part of the ``tests`` package)::

    python tests/engine/crash_worker.py --database-url URL --home DIR --logs DIR \\
        --incarnation 3 --worker-id crash-worker --embedded --seed 42

It starts an openbuda runtime against the test's database, prints ``ready`` once the organizer
runs (recovery done), and works until SIGKILL, or exits cleanly on SIGTERM.

Its model is stateless: every answer is computed from the ``ModelInput`` alone, so a restarted
process continues any task exactly where the log says it is. Each task's user message carries
its *plan* (``crash-task t07: record ask both``); the model answers step ``k`` (the number of
assistant turns since that message) with the plan's ``k``-th step, and after the last one with
``t07 done``. Before answering it checks that the turns it was given are exactly the earlier
steps with one result per tool call, in order; when they are not, it answers with a text that
says what is wrong, which the test sees as a wrong task result.

What it records for the test, one line per fact, in ``--logs``:

- ``model-<incarnation>.log``: ``<label> <step>`` for every model call, written when the call
  starts (before its delay), so a call cut short by a kill is counted;
- ``<tool>-<incarnation>.log``: ``<idempotency key> <text>`` for every tool execution, fsynced
  before the tool returns (``openbuda.testing.tools.RecordingTool``).

This module is also imported by the test for ``Plan``, ``expected_reply`` and the tool names.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    ModelReply,
    ToolResultTurn,
    UserTurn,
)
from openbuda.engine.tools import ToolRegistry
from openbuda.ports import ModelClient
from openbuda.runtime import Runtime
from openbuda.settings import Settings
from openbuda.testing import FunctionModel, calls, reply, tool_call
from openbuda.testing.tools import RecordingTool

__all__ = [
    "APPROVAL_TOOL",
    "IDEMPOTENT_TOOL",
    "MODEL_NAME",
    "ONCE_TOOL",
    "STEP_KINDS",
    "TOOL_DELAY_S",
    "Plan",
    "expected_reply",
    "main",
]

MODEL_NAME = "test:crash"
ONCE_TOOL = "record"
"""Not idempotent: in doubt after a crash it gets an ``interrupted`` result."""
IDEMPOTENT_TOOL = "stamp"
"""Idempotent: in doubt after a crash it runs again with the same key."""
APPROVAL_TOOL = "deploy"
"""Not idempotent and gated by an approval question (``approval_tools``)."""
TOOL_NAMES = (ONCE_TOOL, IDEMPOTENT_TOOL, APPROVAL_TOOL)
TOOL_DELAY_S = 0.08
"""How long a tool works after recording its execution: a kill then leaves it in doubt."""
CHOICES = ("red", "green", "blue")
STEP_KINDS = ("record", "stamp", "both", "ask", "choose", "deploy")
_PREFIX = "crash-task"


@dataclass(frozen=True, slots=True)
class Plan:
    """What the model of one task does, step by step, then ``<label> done``."""

    label: str
    steps: tuple[str, ...]

    @property
    def message(self) -> str:
        return f"{_PREFIX} {self.label}: {' '.join(self.steps)}".rstrip()

    @property
    def final_text(self) -> str:
        return f"{self.label} done"

    @classmethod
    def parse(cls, text: str) -> Plan | None:
        head, _, rest = text.partition(":")
        words = head.split()
        if len(words) != 2 or words[0] != _PREFIX:
            return None
        steps = tuple(rest.split())
        if any(step not in STEP_KINDS for step in steps):
            return None
        return cls(words[1], steps)


def expected_reply(plan: Plan, step: int) -> ModelReply:
    """The model's answer at ``step`` of ``plan`` (the same in every process)."""
    if step >= len(plan.steps):
        return reply(plan.final_text)
    kind = plan.steps[step]
    call_id = f"c{step}"
    text = f"{plan.label}/{step}"
    match kind:
        case "record":
            return calls(tool_call(ONCE_TOOL, {"text": text}, call_id=call_id))
        case "stamp":
            return calls(tool_call(IDEMPOTENT_TOOL, {"text": text}, call_id=call_id))
        case "both":
            return calls(
                tool_call(ONCE_TOOL, {"text": text + "a"}, call_id=call_id + "a"),
                tool_call(IDEMPOTENT_TOOL, {"text": text + "b"}, call_id=call_id + "b"),
                text=f"{plan.label} does two things at step {step}",
            )
        case "ask":
            return calls(
                tool_call("ask_user", {"prompt": f"{plan.label} question {step}?"}, call_id=call_id)
            )
        case "choose":
            args = {
                "prompt": f"{plan.label} pick {step}",
                "kind": "choice",
                "options": list(CHOICES),
            }
            return calls(tool_call("ask_user", args, call_id=call_id))
        case _:
            assert kind == "deploy", kind
            return calls(tool_call(APPROVAL_TOOL, {"text": text}, call_id=call_id))


def _check_turns(plan: Plan, turns: Sequence[object]) -> tuple[int, str | None]:
    """The step the model is at, and what is wrong with the turns since the plan's message."""
    step = 0
    index = 0
    while index < len(turns):
        turn = turns[index]
        if not isinstance(turn, AssistantTurn):
            return step, f"turn {index} is {turn!r}, expected the assistant turn of step {step}"
        expected = expected_reply(plan, step)
        if turn.text != expected.text or turn.tool_calls != expected.tool_calls:
            return step, f"step {step} reads {turn!r}, expected {expected!r}"
        index += 1
        for call in expected.tool_calls:
            result = turns[index] if index < len(turns) else None
            if not isinstance(result, ToolResultTurn) or result.call_id != call.call_id:
                return step, f"step {step}: {result!r} is not the one result of {call.call_id}"
            index += 1
        step += 1
    if step > len(plan.steps):
        return step, f"called again after the final answer of step {len(plan.steps)}"
    return step, None


class CrashModel:
    """The stateless model of the crash test; see the module docstring."""

    def __init__(self, log_path: Path, seed: int) -> None:
        self.log_path = log_path
        self.random = random.Random(seed)
        self.client: ModelClient = FunctionModel(self.respond, name=MODEL_NAME)

    async def respond(self, request: ModelInput) -> ModelReply:
        users = [i for i, turn in enumerate(request.turns) if isinstance(turn, UserTurn)]
        last_user = request.turns[users[-1]] if users else None
        plan = Plan.parse(last_user.text) if isinstance(last_user, UserTurn) else None
        if plan is None:
            return reply(f"no plan in the last user turn: {last_user!r}")
        step, problem = _check_turns(plan, request.turns[users[-1] + 1 :])
        await anyio.to_thread.run_sync(_append, self.log_path, f"{plan.label} {step}\n")
        await anyio.sleep(self.random.uniform(0.02, 0.12))
        if problem is not None:
            return reply(f"{plan.label} inconsistent input: {problem}")
        return expected_reply(plan, step)


def _append(path: Path, line: str) -> None:
    # One write(2) with O_APPEND: the line is in the page cache, a SIGKILL cannot lose it.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def tool_log(logs: Path, tool: str, incarnation: int) -> Path:
    return logs / f"{tool}-{incarnation}.log"


def model_log(logs: Path, incarnation: int) -> Path:
    return logs / f"model-{incarnation}.log"


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--incarnation", type=int, required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--embedded", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--lease-seconds", type=float, default=1.0)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    values: dict[str, Any] = {
        "home": args.home,
        "database_url": args.database_url,
        "block_real_models": True,
        "worker_id": args.worker_id,
        "embedded": args.embedded,
        "max_concurrent_tasks": args.concurrency,
        "max_tasks_per_space": args.concurrency,
        "poll_seconds": 0.02,
        "heartbeat_seconds": 0.2,
        "lease_seconds": args.lease_seconds,
        "model_retries": 0,
    }
    settings = Settings(**values)
    model = CrashModel(model_log(args.logs, args.incarnation), args.seed)
    tools = ToolRegistry(
        RecordingTool(
            name=name,
            idempotent=name == IDEMPOTENT_TOOL,
            delay_s=TOOL_DELAY_S,
            log_path=tool_log(args.logs, name, args.incarnation),
        )
        for name in TOOL_NAMES
    )
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with Runtime.start(
            settings, models=lambda _spec: model.client, tools=tools, worker_id=args.worker_id
        ):
            print("ready", flush=True)
            async for _signal in signals:
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s [worker {args.incarnation}] %(levelname)s %(name)s: %(message)s",
    )
    anyio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
