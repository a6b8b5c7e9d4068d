"""How a task looks on a terminal, shared by ``chat``, ``send --wait``, ``answer`` and ``demo``:
streamed text, tool calls and their results as they happen, the question asked inline
(numbered choices, approve/deny), then the result or the error."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape as _escape
from rich.prompt import Confirm, IntPrompt, Prompt

from openbuda.client import Event, Question
from openbuda.domain.errors import InvalidRequest
from openbuda.domain.records import QuestionKind

__all__ = ["Reply", "TaskView", "answer_hint", "ask", "belongs_to", "describe", "reply_from"]

_YES = frozenset({"y", "yes", "approve", "approved", "true", "ok"})
_NO = frozenset({"n", "no", "deny", "denied", "false"})


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to a question: exactly one of ``text``, ``choice`` or ``approved``."""

    text: str | None = None
    choice: str | None = None
    approved: bool | None = None
    note: str | None = None


def belongs_to(event: Event, task_id: str) -> bool:
    """Whether ``event`` is one of ``task_id``'s (events of no task belong to every task)."""
    owner = event.task_id or event.data.get("task_id")
    return owner in (task_id, None)


class TaskView:
    """Prints one task's events live."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.streamed = False
        """Whether any text was streamed (then the result needs no printing again)."""
        self._mid_line = False
        self._quiet_calls: set[str] = set()

    def show(self, event: Event) -> None:
        data = event.data
        match event.type:
            case "text.delta":
                self.console.print(
                    str(data.get("text", "")), end="", style="cyan", markup=False, highlight=False
                )
                self._mid_line = True
                self.streamed = True
            case "tool.call":
                self.end_line()
                if data.get("name") == "ask_user":  # the question shows it
                    self._quiet_calls.add(str(data.get("call_id")))
                else:
                    args = json.dumps(data.get("args"), ensure_ascii=False)
                    self.console.print(
                        f"[magenta]→ {data.get('name')}[/] {_escape(args)}", highlight=False
                    )
            case "tool.result":
                if str(data.get("call_id")) not in self._quiet_calls:
                    output = _escape(str(data.get("output"))[:500])
                    self.console.print(f"[dim]← {data.get('status')}: {output}[/]", highlight=False)
            case "question" | "task.status" | "task.result":
                self.end_line()
            case _:
                pass

    def end_line(self) -> None:
        if self._mid_line:
            self.console.print()
            self._mid_line = False

    def finish(self, *, result: str | None, error: tuple[str, str] | None) -> None:
        """The end of the task: its result (unless it was streamed) or its error."""
        self.end_line()
        if result is not None and not self.streamed:
            self.console.print(f"[bold green]agent[/] {_escape(result)}", highlight=False)
        if error is not None:
            code, message = error
            self.console.print(f"[red]task failed ({code}): {_escape(message)}[/]", highlight=False)


def ask(
    question: Question, answers: list[str], interactive: bool, console: Console
) -> Reply | None:
    """Show ``question`` and get its answer: the next of ``answers`` if any, else at the prompt
    when ``interactive``, else ``None`` (nobody to ask)."""
    console.print(f"[bold yellow]agent asks:[/] {_escape(question.prompt)}", highlight=False)
    options = question.options or []
    if question.kind is QuestionKind.CHOICE:
        for number, option in enumerate(options, 1):
            console.print(f"  {number}. {_escape(option)}", highlight=False)
    if answers:
        given = answers.pop(0)
        console.print(f"[dim](answering {_escape(repr(given))})[/]", highlight=False)
        return reply_from(question, given)
    if not interactive:
        return None
    match question.kind:
        case QuestionKind.CHOICE:
            picked = IntPrompt.ask(
                "choose", console=console, choices=[str(i) for i in range(1, len(options) + 1)]
            )
            return Reply(choice=options[picked - 1])
        case QuestionKind.APPROVAL:
            return Reply(approved=Confirm.ask("approve?", console=console))
        case QuestionKind.TEXT:
            return Reply(text=Prompt.ask("[bold]your answer[/]", console=console))


def reply_from(question: Question, given: str) -> Reply:
    """Read a typed answer as the question needs it: for a choice, the option's number or
    text; for an approval, yes/approve or no/deny; for a text question, the text."""
    match question.kind:
        case QuestionKind.CHOICE:
            options = question.options or []
            if given.isdigit() and 1 <= int(given) <= len(options):
                return Reply(choice=options[int(given) - 1])
            return Reply(choice=given)
        case QuestionKind.APPROVAL:
            word = given.strip().lower()
            if word not in _YES | _NO:
                raise InvalidRequest(
                    f"answer an approval with yes/approve or no/deny, not {given!r}",
                    details={"answer": given},
                )
            return Reply(approved=word in _YES)
        case QuestionKind.TEXT:
            return Reply(text=given)


def answer_hint(question: Question) -> str:
    """How to answer ``question`` on the command line."""
    match question.kind:
        case QuestionKind.CHOICE:
            return f"1..{len(question.options or [])}  (or the option's text)"
        case QuestionKind.APPROVAL:
            return "approve|deny  [--note TEXT]"
        case QuestionKind.TEXT:
            return "TEXT"


def describe(question: Question) -> str:
    """The question on one line, as the inbox lists it."""
    if question.kind is QuestionKind.CHOICE:
        options = " / ".join(f"{n}. {o}" for n, o in enumerate(question.options or [], 1))
        return f"{question.prompt}  [{options}]"
    if question.kind is QuestionKind.APPROVAL:
        return f"{question.prompt}  [approve / deny]"
    return question.prompt
