"""``openbuda demo``: a real conversation through the library in this process.

It starts the runtime on the configured store, makes (or reuses) an agent named ``assistant``,
opens a session and follows each task live: streamed text, tool calls, and questions, which it
asks at the prompt (numbered choices, approve/deny) or answers from ``--answer``.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.prompt import Confirm, IntPrompt, Prompt

from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent, Question, QuestionKind
from openbuda.runtime import Runtime
from openbuda.service.keys import authenticate, bootstrap
from openbuda.service.tasks import Answer
from openbuda.settings import Settings

__all__ = ["run_demo"]

DEMO_AGENT = "assistant"
DEMO_INSTRUCTIONS = (
    "You are a helpful assistant. When you need a detail or a decision from the user, call "
    "the ask_user tool with a short question. Otherwise answer briefly."
)


async def run_demo(
    settings: Settings,
    *,
    messages: list[str],
    answers: list[str],
    interactive: bool,
    as_json: bool,
    console: Console,
) -> int:
    async with Runtime.start(settings) as runtime:
        principal = await _principal(runtime, settings)
        agent = await _agent(runtime, principal)
        model_name = agent.model or settings.model or "local:smollm2"
        if model_name.startswith("local:") and not as_json:
            console.print(
                "[yellow]Using the small bundled offline model (SmolLM2-135M): it is weak and "
                "only for trying openbuda. Set OPENBUDA_MODEL=provider:model and the provider's "
                "API key (or OPENAI_BASE_URL for an OpenAI-compatible server) for real work.[/]"
            )
        session = await runtime.sessions.create(principal, agent.id, title="demo")
        if not as_json:
            console.print(f"[dim]agent {agent.id} · session {session.id} · model {model_name}[/]")
        pending_answers = list(answers)
        failures = 0
        queue = list(messages)
        while True:
            if queue:
                text = queue.pop(0)
            elif interactive:
                text = Prompt.ask("[bold]you[/]", default="", console=console).strip()
                if not text:
                    break
            else:
                break
            ok = await _turn(
                runtime, principal, session.id, text, pending_answers, interactive, as_json, console
            )
            failures += 0 if ok else 1
        return 1 if failures else 0


async def _principal(runtime: Runtime, settings: Settings) -> Principal:
    credentials = settings.home / "credentials.json"
    now = runtime.clock.now()
    made = await bootstrap(runtime.store, now)
    if made is not None:
        credentials.write_text(json.dumps({"url": None, "api_key": made.secret}))
        credentials.chmod(0o600)
        return made.principal
    if not credentials.exists():
        raise SystemExit(
            f"{credentials} is missing: this data directory has API keys but not the local one"
        )
    secret = json.loads(credentials.read_text())["api_key"]
    return await authenticate(runtime.store, str(secret), now)


async def _agent(runtime: Runtime, principal: Principal) -> Agent:
    page = await runtime.agents.list(principal, limit=500)
    for agent in page.items:
        if agent.name == DEMO_AGENT:
            return agent
    return await runtime.agents.create(
        principal, name=DEMO_AGENT, instructions=DEMO_INSTRUCTIONS, description="The demo agent."
    )


async def _turn(
    runtime: Runtime,
    principal: Principal,
    session_id: str,
    text: str,
    answers: list[str],
    interactive: bool,
    as_json: bool,
    console: Console,
) -> bool:
    subscription = runtime.broadcaster.subscribe(session_id)
    try:
        accepted = await runtime.sessions.send(principal, session_id, text)
        task_id = accepted.task_id
        streaming = False
        shown = False
        asked: set[str] = set()
        async for event in subscription:
            if event.get("task_id") not in (task_id, None) and event["type"] != "text.delta":
                continue
            if as_json:
                console.print_json(json.dumps(event, default=str))
            kind = event["type"]
            data: dict[str, Any] = event.get("data", {})
            if kind == "text.delta" and data.get("task_id") == task_id:
                if not as_json:
                    console.print(data["text"], end="", style="cyan", markup=False, highlight=False)
                streaming = True
                shown = True
            elif kind == "tool.call" and not as_json:
                if streaming:
                    console.print()
                    streaming = False
                if data.get("name") != "ask_user":
                    console.print(f"[magenta]→ {data['name']}[/] {json.dumps(data.get('args'))}")
            elif kind == "tool.result" and not as_json and data.get("call_id") not in asked:
                console.print(f"[dim]← {data.get('status')}: {str(data.get('output'))[:500]}[/]")
            elif kind == "question":
                if streaming:
                    console.print()
                    streaming = False
                question = Question.from_json(data)
                asked.add(question.call_id)
                answer = _ask(question, answers, interactive, console)
                if answer is None:
                    console.print(
                        f"[yellow]The task waits for an answer to {question.id}; "
                        "run again with --answer, or interactively.[/]"
                    )
                    return True
                await runtime.tasks.answer(principal, task_id, answer)
            elif kind == "task.status" and data.get("status") in (
                "completed",
                "failed",
                "cancelled",
            ):
                if streaming:
                    console.print()
                task = await runtime.tasks.get(principal, task_id)
                if task.result is not None and not as_json and not shown:
                    console.print(f"[bold green]agent[/] {task.result.text}", markup=True)
                if task.error is not None:
                    console.print(f"[red]task failed ({task.error.code}): {task.error.message}[/]")
                    return False
                return task.status.value == "completed"
        return False
    finally:
        await subscription.close()


def _ask(
    question: Question, answers: list[str], interactive: bool, console: Console
) -> Answer | None:
    console.print(f"[bold yellow]agent asks:[/] {question.prompt}")
    if answers:
        given = answers.pop(0)
        console.print(f"[dim](answering {given!r})[/]")
    elif interactive:
        given = None
    else:
        return None
    match question.kind:
        case QuestionKind.CHOICE:
            options = question.options or []
            if given is None:
                for number, option in enumerate(options, 1):
                    console.print(f"  {number}. {option}")
                picked = IntPrompt.ask(
                    "choose", console=console, choices=[str(i) for i in range(1, len(options) + 1)]
                )
                given = options[picked - 1]
            elif given.isdigit() and 1 <= int(given) <= len(options):
                given = options[int(given) - 1]
            return Answer(question.id, choice=given)
        case QuestionKind.APPROVAL:
            approved = (
                Confirm.ask("approve?", console=console)
                if given is None
                else given.lower() in ("y", "yes", "approve", "approved", "true")
            )
            return Answer(question.id, approved=approved)
        case QuestionKind.TEXT:
            if given is None:
                given = Prompt.ask("[bold]your answer[/]", console=console)
            return Answer(question.id, text=given)
