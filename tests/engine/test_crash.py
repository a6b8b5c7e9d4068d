"""Crash test: a worker process is killed with SIGKILL at random points of 50 tasks, and
restarted each time, until every task is done.

The worker (``crash_worker.py``, a separate process on the same database) runs 50 tasks in 20
sessions; each task follows a random plan of tool calls (``record``: not idempotent, ``stamp``:
idempotent, ``deploy``: not idempotent and gated by an approval), questions (text and choice)
and a final answer. The test process answers the questions after a random while, through the
services, so that kills also land while tasks wait. Each worker incarnation is killed at a
random moment (mostly 0.05–0.6 s after it is ready, sometimes while it starts and recovers);
restarts alternate between the embedded mode (re-queue every running task at once) and a
worker id of their own (recover their own tasks; the others' come back through lease expiry
and the reaper). Once every task is done (or after ``MAX_KILLS`` kills) a last run without
kills finishes what is left and stops on SIGTERM.

The run is recorded as a history (``crash_history.py``) and checked: every task completed with
its plan's result; every session's seqs are 1..n; every task's log is a legal walk of the
transition table with each step's model response stored exactly once and no model call made
again after its response was stored; every tool call has exactly one result; a
non-idempotent call ran at most once, an in-doubt one got ``interrupted``, an idempotent one in
doubt ran again with the same key and never twice in one process; no tool ran before its
intent was stored or after its result was; every answer given is stored exactly once.

The seed (``OPENBUDA_TEST_SEED`` to replay one) fixes the plans, the kill schedule and the
answers; the interleaving of two processes stays the operating system's.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from openbuda.domain.principal import Principal
from openbuda.domain.records import AgentSettings, QuestionKind, Task
from openbuda.domain.states import TaskStatus
from openbuda.ports import ReadEvents, Store
from openbuda.runtime import Runtime
from openbuda.service.tasks import Answer
from tests.harness import engine_settings, make_principal

from .crash_history import AnswerRecord, History, Incarnation, check, summary, timeline
from .crash_worker import APPROVAL_TOOL, MODEL_NAME, STEP_KINDS, Plan

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).with_name("crash_worker.py")
SEED_ENV = "OPENBUDA_TEST_SEED"
TASKS = 50
SESSIONS = 20
MAX_KILLS = 30
KILL_PHASE_S = 75.0
"""Kill and restart workers until every task is done, ``MAX_KILLS`` times or for this long at
most (a safety net for a very slow machine), then finish with one run without kills. Usually
the tasks are done after 15-30 kills, in 25-45 s."""
READY_TIMEOUT_S = 30.0
FINAL_RUN_TIMEOUT_S = 60.0
STARTUP_KILLS = 0.15
"""The share of incarnations killed at a random moment after spawning (maybe mid-recovery)."""
EMBEDDED_RESTARTS = 0.7
"""The share of restarts in the embedded mode; the others use worker ids ``crash-a``/``-b``."""
MIN_KILLS = 10


def crash_seed() -> int:
    value = os.environ.get(SEED_ENV)
    return int(value) if value else random.SystemRandom().randrange(2**32)


def now() -> datetime:
    return datetime.now(UTC)


async def test_sigkilled_workers_lose_nothing_and_repeat_nothing(
    store: Store, store_url: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    seed = crash_seed()
    print(f"\ncrash test seed {seed} (replay: {SEED_ENV}={seed})")
    record_property("seed", seed)
    started = time.monotonic()
    principal = await make_principal(store)
    history = History(seed=seed, space_id=principal.space_id, plans={})
    logs = tmp_path / "logs"
    logs.mkdir()
    async with Runtime.start(engine_settings(tmp_path), store=store, run_engine=False) as runtime:
        sessions = await _submit(runtime, principal, history)
        crash = _CrashRun(runtime, principal, history, store_url, tmp_path, logs)
        try:
            await crash.run()
        finally:
            await _collect(runtime, principal, history, sessions)
    history.read_logs(logs)
    report = check(history)
    print(summary(history, report) + f"; {time.monotonic() - started:.1f} s")
    print(timeline(history))
    where = f"(seed {seed}, replay with {SEED_ENV}={seed}; worker logs in {logs})"
    assert not report.problems, f"{len(report.problems)} violation(s) {where}:\n" + "\n".join(
        report.problems[:40]
    )
    counts = report.counts
    assert counts["kills"] >= MIN_KILLS, f"only {counts['kills']} kills {where}"
    exercised = {
        "a kill during a model call": counts["model calls made again"],
        "a kill between a tool call and its result": sum(
            value for name, value in counts.items() if name.endswith(" in doubt")
        ),
        "a kill while a task waited": counts["kills while a task waited"],
    }
    missing = [name for name, value in exercised.items() if not value]
    assert not missing, f"the run never exercised {missing} {where}: {summary(history, report)}"


async def _submit(runtime: Runtime, principal: Principal, history: History) -> list[str]:
    """Create the agent, the sessions and the 50 tasks (each with a random plan)."""
    rng = random.Random(f"{history.seed}:plans")
    agent = await runtime.agents.create(
        principal,
        name="crash",
        model=MODEL_NAME,
        settings=AgentSettings(approval_tools=[APPROVAL_TOOL]),
    )
    sessions = [
        (await runtime.sessions.create(principal, agent.id, title=f"crash {index}")).id
        for index in range(SESSIONS)
    ]
    for index in range(TASKS):
        steps = tuple(rng.choice(STEP_KINDS) for _ in range(rng.randint(1, 4)))
        plan = Plan(f"t{index:02d}", steps)
        session_id = sessions[index] if index < SESSIONS else rng.choice(sessions)
        accepted = await runtime.sessions.send(principal, session_id, plan.message)
        assert accepted.kind == "task"
        history.plans[accepted.task_id] = plan
    return sessions


async def _collect(
    runtime: Runtime, principal: Principal, history: History, sessions: list[str]
) -> None:
    async with runtime.store.read() as tx:
        for session_id in sessions:
            history.events[session_id] = await tx.read_events(
                ReadEvents(principal.space_id, session_id)
            )
        for task_id in history.plans:
            task = await tx.get_task(principal.space_id, task_id)
            if task is not None:
                history.tasks[task_id] = task


class _CrashRun:
    def __init__(
        self,
        runtime: Runtime,
        principal: Principal,
        history: History,
        database_url: str,
        home: Path,
        logs: Path,
    ) -> None:
        self.runtime = runtime
        self.principal = principal
        self.history = history
        self.database_url = database_url
        self.home = home
        self.logs = logs

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._answer_questions)
            deadline = time.monotonic() + KILL_PHASE_S
            index = 0
            while index < MAX_KILLS and time.monotonic() < deadline and await self._open_tasks():
                await self._incarnation(index, clean=False)
                index += 1
            await self._incarnation(index, clean=True)
            group.cancel_scope.cancel()

    async def _tasks(self) -> list[Task]:
        page = await self.runtime.tasks.list(self.principal, limit=TASKS + 1)
        return page.items

    async def _open_tasks(self) -> int:
        return sum(1 for task in await self._tasks() if not task.status.is_terminal)

    # -- the worker --------------------------------------------------------------------------

    async def _incarnation(self, index: int, *, clean: bool) -> None:
        rng = random.Random(f"{self.history.seed}:worker:{index}")
        embedded = clean or index == 0 or rng.random() < EMBEDDED_RESTARTS
        worker_id = "crash-worker" if embedded else rng.choice(("crash-a", "crash-b"))
        startup_kill = not clean and rng.random() < STARTUP_KILLS
        delay = rng.uniform(0.05, 1.0) if startup_kill else rng.uniform(0.05, 0.6)
        command = [
            sys.executable,
            str(WORKER),
            f"--database-url={self.database_url}",
            f"--home={self.home}",
            f"--logs={self.logs}",
            f"--incarnation={index}",
            f"--worker-id={worker_id}",
            "--embedded" if embedded else "--no-embedded",
            f"--seed={rng.randrange(2**32)}",
        ]
        record = Incarnation(index, worker_id, embedded, clean, startup_kill, delay, now())
        self.history.incarnations.append(record)
        with _stderr_file(self.logs / f"worker-{index}.err") as stderr:
            record.spawned_at = now()
            process = await anyio.open_process(command, stdout=subprocess.PIPE, stderr=stderr)
            try:
                if startup_kill:
                    await anyio.sleep(delay)
                else:
                    await self._wait_ready(process, index)
                    record.ready_at = now()
                    if clean:
                        await self._finish(process)
                    else:
                        await anyio.sleep(delay)
            finally:
                with anyio.CancelScope(shield=True):
                    if process.returncode is None:
                        with suppress(ProcessLookupError):
                            process.kill()
                    await process.aclose()
                    record.ended_at = now()
                    record.returncode = process.returncode
        statuses = Counter(task.status.value for task in await self._tasks())
        record.statuses_at_end = statuses

    async def _wait_ready(self, process: Process, index: int) -> None:
        assert process.stdout is not None
        received = b""
        problem = f"was not ready after {READY_TIMEOUT_S:g} s"
        with anyio.move_on_after(READY_TIMEOUT_S):
            try:
                while b"ready\n" not in received:
                    received += await process.stdout.receive()
                return
            except anyio.EndOfStream:
                problem = "exited before it was ready"
        errors = (self.logs / f"worker-{index}.err").read_text()[-4000:]
        raise AssertionError(
            f"worker {index} {problem} (seed {self.history.seed}); its stderr:\n{errors}"
        )

    async def _finish(self, process: Process) -> None:
        """The run without kills: wait until every task is terminal, then stop it cleanly."""
        with anyio.fail_after(FINAL_RUN_TIMEOUT_S):
            while True:
                if not await self._open_tasks():
                    break
                await anyio.sleep(0.05)
        process.terminate()
        with anyio.fail_after(20):
            await process.wait()

    # -- the people answering ----------------------------------------------------------------

    async def _answer_questions(self) -> None:
        rng = random.Random(f"{self.history.seed}:answers")
        due: dict[str, float] = {}
        while True:
            page = await self.runtime.tasks.list(
                self.principal, status=TaskStatus.WAITING, limit=TASKS + 1
            )
            for task in sorted(page.items, key=lambda t: t.id):
                question = task.question
                assert question is not None, task
                answer_at = due.setdefault(question.id, time.monotonic() + rng.uniform(0.05, 1.5))
                if time.monotonic() >= answer_at:
                    # shielded: an answer stored is an answer recorded, even at cancellation
                    with anyio.CancelScope(shield=True):
                        await self._answer(task, rng)
            await anyio.sleep(0.03)

    async def _answer(self, task: Task, rng: random.Random) -> None:
        question = task.question
        assert question is not None
        via_message = False
        value: str | bool
        match question.kind:
            case QuestionKind.TEXT:
                value = f"answer to {question.prompt}"
                via_message = rng.random() < 0.5
                if via_message:
                    accepted = await self.runtime.sessions.send(
                        self.principal, task.session_id, value
                    )
                    assert accepted.kind == "answer", accepted
                    assert accepted.task_id == task.id, accepted
                else:
                    await self.runtime.tasks.answer(
                        self.principal, task.id, Answer(question.id, text=value)
                    )
            case QuestionKind.CHOICE:
                value = rng.choice(question.options or [])
                await self.runtime.tasks.answer(
                    self.principal, task.id, Answer(question.id, choice=value)
                )
            case QuestionKind.APPROVAL:
                value = rng.random() < 0.75
                await self.runtime.tasks.answer(
                    self.principal, task.id, Answer(question.id, approved=value, note="crash test")
                )
        self.history.answers.append(
            AnswerRecord(task.id, question.id, question.kind, value, via_message)
        )


@contextmanager
def _stderr_file(path: Path) -> Generator[int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)
