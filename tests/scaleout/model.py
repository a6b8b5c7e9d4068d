"""The suite's model: a stateless responder, driven by a plan written in the user's message.

A message reads ``[s017-m3] plan: effect ask effect2 latency=60``. The reply to a request
depends only on that request's messages: the step is the number of assistant turns after the
last user message, so a model call made again after a crash gets the same reply, and any
number of sessions can talk to one model server at once. Steps:

- ``effect``: call the ``effect`` tool once; ``effect2``: twice in one response;
- ``ask``: a free-text ``ask_user`` question; ``choice``: a choice between two options;
- after the last step: the final answer ``done <tag>``.

Tool call ids are ``<tag>.<step>.<n>``: unique across the whole run, so an idempotency key
(``task_id:call_id``) names one call. The responder also checks what it is shown: the earlier
steps' calls with exactly their ids, each followed by its result, an answer to each question. On
a mismatch it answers ``confused <tag>: <what>`` instead of ``done``, and the suite counts it.

Run by the model server as ``--responder tests.scaleout.model:respond``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

__all__ = ["STEPS", "Plan", "answer_for", "respond"]

STEPS: Final = ("effect", "effect2", "ask", "choice")
CHOICES: Final = ("red", "blue")
_PLAN: Final = re.compile(
    r"\[(?P<tag>[a-z0-9-]+)\] plan:(?P<steps>[a-z0-9 ]*?)(?: latency=(\d+))?$"
)


@dataclass(frozen=True, slots=True)
class Plan:
    tag: str
    steps: tuple[str, ...]
    latency_ms: int = 0
    """Upper bound of the model's answer time; each step's is fixed by a hash of the tag."""

    @property
    def text(self) -> str:
        latency = f" latency={self.latency_ms}" if self.latency_ms else ""
        return f"[{self.tag}] plan: {' '.join(self.steps)}{latency}".replace(":  ", ": ")

    @classmethod
    def parse(cls, text: str) -> Plan | None:
        found = _PLAN.match(text.strip())
        if found is None:
            return None
        steps = tuple(found.group("steps").split())
        if any(step not in STEPS for step in steps):
            return None
        return cls(found.group("tag"), steps, int(found.group(3) or 0))

    def call_ids(self, step: int) -> list[str]:
        count = 2 if self.steps[step] == "effect2" else 1
        return [f"{self.tag}.{step}.{n}" for n in range(count)]

    @property
    def final_text(self) -> str:
        return f"done {self.tag}"

    def delay(self, step: int) -> float:
        if not self.latency_ms:
            return 0.0
        spread = zlib.crc32(f"{self.tag}/{step}".encode()) % (self.latency_ms + 1)
        return spread / 1000


def answer_for(question: Mapping[str, Any]) -> dict[str, str]:
    """The body of ``POST /tasks/{id}/answer`` the client driver sends for ``question``."""
    if question.get("kind") == "choice":
        return {"question_id": str(question["id"]), "choice": CHOICES[1]}
    return {"question_id": str(question["id"]), "text": f"answer to {question.get('prompt')}"}


def respond(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The reply to a chat completion request (``None``: the message holds no plan)."""
    messages = [cast(dict[str, Any], m) for m in body.get("messages") or [] if isinstance(m, dict)]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None:
        return None
    plan = Plan.parse(_text(messages[last_user].get("content")))
    if plan is None:
        return None
    turns = messages[last_user + 1 :]
    step = sum(1 for m in turns if m.get("role") == "assistant")
    problem = _check(plan, turns)
    if problem is not None:
        return {"text": f"confused {plan.tag}: {problem}"}
    delay = plan.delay(step)
    if step >= len(plan.steps):
        return {"text": plan.final_text, "delay": delay}
    kind = plan.steps[step]
    ids = plan.call_ids(step)
    if kind in ("effect", "effect2"):
        calls = [
            {"name": "effect", "id": call_id, "arguments": {"label": call_id}} for call_id in ids
        ]
    elif kind == "ask":
        calls = [{"name": "ask_user", "id": ids[0], "arguments": {"prompt": f"q {ids[0]}"}}]
    else:
        arguments = {"prompt": f"q {ids[0]}", "kind": "choice", "options": list(CHOICES)}
        calls = [{"name": "ask_user", "id": ids[0], "arguments": arguments}]
    return {"tool_calls": calls, "delay": delay}


def _check(plan: Plan, turns: Sequence[dict[str, Any]]) -> str | None:
    """What is wrong with the turns of this task so far, or ``None``."""
    step = -1
    pending: list[str] = []
    for message in turns:
        role = message.get("role")
        if role == "assistant":
            if pending:
                return f"step {step} lacks the results of {pending}"
            step += 1
            if step >= len(plan.steps):
                return f"more assistant turns than the {len(plan.steps)} steps"
            ids = [
                str(cast(dict[str, Any], call).get("id"))
                for call in message.get("tool_calls") or []
            ]
            if ids != plan.call_ids(step):
                return f"step {step} shows calls {ids}, expected {plan.call_ids(step)}"
            pending = list(ids)
        elif role == "tool":
            call_id = str(message.get("tool_call_id"))
            if call_id not in pending:
                return f"a result for {call_id!r} that step {step} did not call"
            pending.remove(call_id)
            content = _text(message.get("content"))
            kind = plan.steps[step]
            if kind == "ask" and f"answer to q {call_id}" not in content:
                return f"the answer to {call_id!r} is {content[:80]!r}"
            if kind == "choice" and CHOICES[1] not in content:
                return f"the choice for {call_id!r} is {content[:80]!r}"
        else:
            return f"an unexpected {role!r} message after the plan"
    if pending:
        return f"step {step} lacks the results of {pending}"
    return None


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(cast(dict[str, Any], part).get("text", ""))
            for part in cast(list[object], content)
            if isinstance(part, dict)
        )
    return ""
