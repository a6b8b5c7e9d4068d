"""``openbuda demo``: a real conversation through the library in this process.

It starts the runtime on the configured store, makes (or reuses) an agent named ``assistant``,
opens a session and follows each task live: streamed text, tool calls, and questions, which it
asks at the prompt (numbered choices, approve/deny) or answers from ``--answer``.
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.prompt import Prompt

from openbuda.cli._render import TaskView, ask, belongs_to
from openbuda.client import Event, Question
from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent
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
        view = TaskView(console)
        async for raw in subscription:
            event = Event.model_validate(raw)
            if not belongs_to(event, task_id):
                continue
            if as_json:
                console.print_json(json.dumps(raw, default=str))
            else:
                view.show(event)
            if event.type == "question":
                view.end_line()
                question = Question.model_validate(event.data)
                reply = ask(question, answers, interactive, console)
                if reply is None:
                    console.print(
                        f"[yellow]The task waits for an answer to {question.id}; "
                        "run again with --answer, or interactively.[/]"
                    )
                    return True
                answer = Answer(
                    question.id, text=reply.text, choice=reply.choice, approved=reply.approved
                )
                await runtime.tasks.answer(principal, task_id, answer)
            elif event.type == "task.status" and event.data.get("status") in (
                "completed",
                "failed",
                "cancelled",
            ):
                task = await runtime.tasks.get(principal, task_id)
                view.finish(
                    result=None if task.result is None or as_json else task.result.text,
                    error=None if task.error is None else (task.error.code, task.error.message),
                )
                return task.status.value == "completed"
        return False
    finally:
        await subscription.close()
