"""The scale-out fault suite (issue 7): one API process, three workers, PostgreSQL of its own.

100 sessions send 5 messages each (500 tasks with side effects and questions) while a fault
injector, driven by a printed seed, kills workers and the API process, cuts the workers'
database connections and crashes PostgreSQL. Afterwards the recorded history and the database
must show no violation (``tests/scaleout/history.py`` lists the invariants).

Replay a run with ``SCALEOUT_SEED=<seed>``; ``SCALEOUT_SESSIONS``, ``SCALEOUT_MESSAGES`` and
``SCALEOUT_FAULTS`` scale it, ``SCALEOUT_DEADLINE`` (seconds, default 360) bounds the workload. The processes' logs stay under the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import anyio
import httpx
import pytest

from openbuda.testing.cluster import PgCluster
from tests.scaleout.deployment import API_KEY, LEASE_SECONDS, Deployment, deployment
from tests.scaleout.driver import Progress, SessionClient, Workload
from tests.scaleout.effects import EffectLine, read_effects
from tests.scaleout.faults import Fault, FaultLog, inject, plan_faults
from tests.scaleout.history import Stored, Violation, check, read_stored
from tests.scaleout.model import Plan

unavailable = PgCluster.unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(unavailable is not None, reason=unavailable or ""),
]

SEQUENTIAL_PLANS: list[tuple[str, ...]] = [
    (),
    ("effect",),
    ("effect", "ask"),
    ("ask", "effect2"),
    ("effect", "effect"),
    ("choice", "effect"),
    ("effect2", "ask", "effect"),
]
QUEUED_PLANS: list[tuple[str, ...]] = [
    (),
    ("effect",),
    ("effect2",),
    ("effect", "effect"),
    ("effect", "effect2"),
]
AGENTS = 10
LATENCY_MS = 80


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def make_clients(
    rng: random.Random, workload: Workload, agent_ids: list[str], sessions: int, messages: int
) -> list[SessionClient]:
    clients: list[SessionClient] = []
    for index in range(sessions):
        mode: Literal["sequential", "queued"] = "sequential" if index % 2 == 0 else "queued"
        templates = SEQUENTIAL_PLANS if mode == "sequential" else QUEUED_PLANS
        plans = [
            Plan(f"s{index:03d}-m{m}", rng.choice(templates), LATENCY_MS) for m in range(messages)
        ]
        clients.append(
            SessionClient(workload, index, agent_ids[index % len(agent_ids)], mode, plans)
        )
    return clients


async def create_agents(http: httpx.AsyncClient) -> list[str]:
    agent_ids: list[str] = []
    for n in range(AGENTS):
        response = await http.post(
            "/v1/agents",
            json={
                "name": f"agent-{n}",
                "model": "openai:scripted",
                "settings": {"tools": ["effect"]},
            },
        )
        assert response.status_code == 201, response.text
        agent_ids.append(str(response.json()["id"]))
    return agent_ids


@dataclass
class Outcome:
    clients: list[SessionClient]
    record: FaultLog
    stored: Stored
    seconds: float
    finished: bool
    """``False``: the deadline cut the workload short (a task that never ends, say)."""


async def run_workload(
    deployed: Deployment,
    rng: random.Random,
    faults: list[Fault],
    sessions: int,
    messages: int,
    deadline: float,
) -> Outcome:
    """The clients and the fault injector, at once, for up to ``deadline`` seconds; then what
    the database holds."""
    limits = httpx.Limits(max_connections=sessions * 3 + 20, max_keepalive_connections=50)
    async with httpx.AsyncClient(
        base_url=deployed.api_url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=httpx.Timeout(60.0, connect=5.0),
        limits=limits,
    ) as http:
        agent_ids = await create_agents(http)
        progress = Progress(sessions * messages)
        clients = make_clients(rng, Workload(http, progress), agent_ids, sessions, messages)
        record = FaultLog()
        began = time.monotonic()
        with anyio.move_on_after(deadline) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(
                    lambda: inject(
                        faults,
                        progress,
                        cluster=deployed.cluster,
                        api=deployed.api,
                        workers=deployed.workers,
                        record=record,
                    )
                )
                async with anyio.create_task_group() as sessions_group:
                    for client in clients:
                        sessions_group.start_soon(client.run)
        seconds = time.monotonic() - began
    stored = await read_stored(deployed.cluster.url)
    return Outcome(clients, record, stored, seconds, not scope.cancelled_caught)


@pytest.mark.timeout(600)
def test_scale_out_survives_faults(tmp_path: Path) -> None:
    seed = _int_env("SCALEOUT_SEED", random.SystemRandom().randrange(1, 1_000_000))
    sessions = _int_env("SCALEOUT_SESSIONS", 100)
    messages = _int_env("SCALEOUT_MESSAGES", 5)
    fault_count = _int_env("SCALEOUT_FAULTS", 10)
    deadline = _int_env("SCALEOUT_DEADLINE", 360)
    print(f"\nscale-out fault suite: seed {seed} (replay with SCALEOUT_SEED={seed})")
    rng = random.Random(seed)
    faults = plan_faults(rng, fault_count, lease_seconds=LEASE_SECONDS)
    began = time.monotonic()
    with deployment(tmp_path) as deployed:
        setup_seconds = time.monotonic() - began
        outcome = anyio.run(run_workload, deployed, rng, faults, sessions, messages, deadline)
        effects = read_effects(deployed.effect_log)
        clients = outcome.clients
        violations = check([c.record() for c in clients], outcome.stored, effects)
        if not outcome.finished:
            violations.append(
                Violation("deadline", f"the workload was still running after {deadline} s")
            )
        _report(deployed, seed, outcome, effects, violations, setup_seconds)
        if violations:
            _save(tmp_path, clients, violations)
    assert not violations, f"{len(violations)} violation(s), seed {seed}: " + "; ".join(
        str(v)[:300] for v in violations[:20]
    )
    # the faults really happened (an injector that hit nothing would prove nothing)
    record = outcome.record
    planned = Counter(fault.kind for fault in faults)
    assert len(record.fired) == len(faults)
    assert record.worker_kills == planned["kill_worker"]
    assert record.api_kills == planned["kill_api"]
    assert record.postgres_restarts == planned["restart_postgres"]
    if planned["drop_connections"]:
        assert record.connection_drops > 0, "no worker connection matched: application_name?"


def _report(
    deployed: Deployment,
    seed: int,
    outcome: Outcome,
    effects: list[EffectLine],
    violations: list[Violation],
    setup_seconds: float,
) -> None:
    clients, record, stored = outcome.clients, outcome.record, outcome.stored
    work_seconds = outcome.seconds
    statuses = Counter(task.status for task in stored.tasks.values())
    delivered = sum(len(c.received) for c in clients)
    connections = sum(c.connections for c in clients)
    in_doubt = sum(
        1
        for log in stored.events.values()
        for e in log
        if e.type == "tool.result" and e.data.get("status") == "interrupted"
    )
    print(f"seed {seed} · setup {setup_seconds:.1f} s · workload {work_seconds:.1f} s")
    print(
        f"kills {record.kills} (workers {record.worker_kills}, api {record.api_kills}) · "
        f"connection drops {record.connection_drops} · restarts {record.restarts} "
        f"(postgres {record.postgres_restarts}, processes {record.process_restarts})"
    )
    for line in record.fired:
        print(f"  {line}")
    print(
        f"tasks {len(stored.tasks)} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})"
        f" · events {stored.event_count} stored, {delivered} delivered over {connections} SSE "
        f"connections · effects {len(effects)} · in-doubt calls {in_doubt} · stale reads "
        f"{sum(c.stale_reads for c in clients)}"
    )
    lags = _live_lags(clients, stored)
    if lags:
        lags.sort()
        print(
            f"SSE live delivery (event stored → arrived, {len(lags)} events sent live): "
            f"median {lags[len(lags) // 2] * 1000:.0f} ms, p99 "
            f"{lags[int(len(lags) * 0.99)] * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms"
        )
    ends = sum((c.stream_ends for c in clients), Counter[str]())
    print(f"SSE connections ended: {dict(ends.most_common())}")
    anomalies = clients[0].workload.anomalies if clients else []
    if anomalies:
        kinds = Counter(_anomaly_kind(a) for a in anomalies)
        print(f"client anomalies {len(anomalies)}: {dict(kinds.most_common())}")
        print(f"  first: {anomalies[0][:300]}")
    print(f"violations {len(violations)}")
    for violation in violations[:30]:
        print(f"  {violation}")
    if violations:
        print(f"logs: {deployed.group.directory}")


def _live_lags(clients: list[SessionClient], stored: Stored) -> list[float]:
    """Seconds from an event's stored ``at`` to its arrival, for the events stored while the
    connection that delivered them was open (the others were a replay)."""
    lags: list[float] = []
    for client in clients:
        by_seq = {e.seq: e for e in stored.events.get(client.session_id, [])}
        for received in client.received:
            event = by_seq.get(received.seq)
            opened = client.opened.get(received.connection)
            if event is None or opened is None:
                continue
            at = event.at.timestamp()
            if at > opened:
                lags.append(received.arrived - at)
    return lags


def _anomaly_kind(anomaly: str) -> str:
    """``GET /v1/tasks/{id} answered 500`` out of one client's anomaly."""
    text = re.sub(r"^s\d{3}(-m\d+)?: ", "", anomaly)
    text = re.sub(r"\b(tsk|ses|agt|q)_\w+", "{id}", text)
    return text.split(": ", 1)[0]


def _save(directory: Path, clients: list[SessionClient], violations: list[Violation]) -> None:
    history = {
        "violations": [asdict(v) for v in violations],
        "sessions": [
            {
                "index": c.index,
                "session_id": c.session_id,
                "accepted": [asdict(a) for a in c.accepted],
                "received": [[r.connection, r.seq, r.type, r.task_id] for r in c.received],
            }
            for c in clients
        ],
    }
    (directory / "history.json").write_text(json.dumps(history, indent=1))
