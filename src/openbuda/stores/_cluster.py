"""The processes of a deployment, the placement of computers and the claim lock (scale-out).

- ``processes``: each API or worker process registers itself at start, heartbeats ``seen_at``
  and removes its row when it stops cleanly (``openbuda status`` reads them).
- ``computer_placements``: an agent's computer lives on one worker, under a lease that worker's
  heartbeat extends. ``place_computers`` is one upsert that takes a placement only when it is
  free, already ours, or its lease ran out, so two workers can never both hold one.
- ``running_counts`` is what the organizer's limits are checked against. On PostgreSQL it first
  takes the *claim lock*, a transaction-level advisory lock: claims of every process take turns
  (each is one short transaction), so the counts they read stay true until the claim commits
  and the limits per space and per agent hold across all processes. Only claims take this lock
  and nothing a claim waits for while holding it waits for the lock, so it cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import case, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from openbuda.ports import ClusterStatus, ProcessInfo, SpaceQueue
from openbuda.stores._connections import StatementRunner
from openbuda.stores._queries import DialectTraits, p_str, p_time
from openbuda.stores.schema import computer_placements, processes, tasks

__all__ = ["CLAIM_LOCK_KEY", "ClusterReads", "ClusterWrites"]

CLAIM_LOCK_KEY: Final = 0x6F62756461_636C6D  # "obuda" "clm"
_CLAIM_LOCK: Final = text(f"SELECT pg_advisory_xact_lock({CLAIM_LOCK_KEY})")

_PROCESSES: Final = select(processes).order_by(processes.c.seen_at.desc(), processes.c.id)
_LEASED: Final = (
    select(tasks.c.lease_owner, func.count().label("n"))
    .where(tasks.c.status == "running")
    .group_by(tasks.c.lease_owner)
)
_PLACED: Final = (
    select(computer_placements.c.worker_id, func.count().label("n"))
    .where(computer_placements.c.lease_until >= p_time("now"))
    .group_by(computer_placements.c.worker_id)
)
_QUEUES: Final = (
    select(
        tasks.c.space_id,
        tasks.c.status,
        func.count().label("n"),
        func.min(tasks.c.created_at).label("oldest"),
    )
    .where(tasks.c.status.in_(("queued", "running", "waiting")))
    .group_by(tasks.c.space_id, tasks.c.status)
)
_EXPIRED_COUNT: Final = select(func.count()).where(
    tasks.c.status == "running", tasks.c.lease_until < p_time("now")
)
_RUNNING_COUNTS: Final = (
    select(tasks.c.space_id, tasks.c.agent_id, func.count().label("n"))
    .where(tasks.c.status == "running")
    .group_by(tasks.c.space_id, tasks.c.agent_id)
)
_HEARTBEAT: Final = (
    update(processes).where(processes.c.id == p_str("process")).values(seen_at=p_time("now"))
)
_PRUNE: Final = delete(processes).where(processes.c.seen_at < p_time("before"))
_REMOVE: Final = delete(processes).where(processes.c.id == p_str("process"))


def _register(insert: Any) -> Any:
    statement = insert(processes)
    return statement.on_conflict_do_update(
        index_elements=[processes.c.id],
        set_={
            name: statement.excluded[name]
            for name in ("kind", "host", "pid", "version", "started_at", "seen_at")
        },
    )


def _place(insert: Any) -> Any:
    """Take the placement when it is free, ours, or its lease ran out; extend it when ours."""
    statement = insert(computer_placements).values(
        agent_id=p_str("agent"),
        space_id=p_str("space"),
        worker_id=p_str("worker"),
        lease_until=p_time("until"),
        placed_at=p_time("now"),
    )
    current = computer_placements.c
    return statement.on_conflict_do_update(
        index_elements=[current.agent_id],
        set_={
            "worker_id": statement.excluded.worker_id,
            "lease_until": statement.excluded.lease_until,
            # the time it was placed on this worker stays while the same worker extends it
            "placed_at": case(
                (current.worker_id == statement.excluded.worker_id, current.placed_at),
                else_=statement.excluded.placed_at,
            ),
        },
        where=(current.worker_id == statement.excluded.worker_id)
        | (current.lease_until < p_time("now")),
    )


_REGISTER: Final = {"sqlite": _register(sqlite.insert), "postgresql": _register(postgresql.insert)}
_PLACE: Final = {"sqlite": _place(sqlite.insert), "postgresql": _place(postgresql.insert)}
_OWN_PLACEMENTS: Final = select(computer_placements.c.agent_id).where(
    computer_placements.c.worker_id == p_str("worker"),
    computer_placements.c.lease_until >= p_time("now"),
)


class ClusterReads:
    """``ClusterReader`` over one transaction (a base of ``SqlReadTx``)."""

    _runner: StatementRunner
    _traits: DialectTraits

    async def cluster_status(self, now: datetime) -> ClusterStatus:
        execute = self._runner.execute
        leased = {row.lease_owner: row.n for row in (await execute(_LEASED)).all()}
        placed = {row.worker_id: row.n for row in (await execute(_PLACED, {"now": now})).all()}
        found = [
            ProcessInfo(
                id=row.id,
                kind=row.kind,
                host=row.host,
                pid=row.pid,
                version=row.version,
                started_at=row.started_at,
                seen_at=row.seen_at,
                running=leased.get(row.id, 0),
                computers=placed.get(row.id, 0),
            )
            for row in (await execute(_PROCESSES)).all()
        ]
        counts: dict[str, dict[str, int]] = {}
        oldest: dict[str, datetime] = {}
        for row in (await execute(_QUEUES)).all():
            counts.setdefault(row.space_id, {})[row.status] = row.n
            if row.status == "queued":
                oldest[row.space_id] = row.oldest
        spaces = [
            SpaceQueue(
                space_id=space,
                queued=by_status.get("queued", 0),
                running=by_status.get("running", 0),
                waiting=by_status.get("waiting", 0),
                oldest_queued_at=oldest.get(space),
            )
            for space, by_status in counts.items()
        ]
        spaces.sort(key=lambda queue: (-queue.queued, -queue.running, queue.space_id))
        expired = (await execute(_EXPIRED_COUNT, {"now": now})).scalar() or 0
        return ClusterStatus(now=now, processes=found, spaces=spaces, expired_leases=expired)


class ClusterWrites:
    """``ClusterWriter`` over one write transaction (a base of ``SqlWriteTx``)."""

    _runner: StatementRunner
    _traits: DialectTraits

    async def register_process(self, process: ProcessInfo) -> None:
        statement = _REGISTER[self._traits.capabilities.dialect].values(
            id=process.id,
            kind=process.kind,
            host=process.host,
            pid=process.pid,
            version=process.version,
            started_at=process.started_at,
            seen_at=process.seen_at,
        )
        await self._runner.execute(statement)

    async def heartbeat_process(self, process_id: str, now: datetime) -> bool:
        result = await self._runner.execute(_HEARTBEAT, {"process": process_id, "now": now})
        return result.rowcount == 1

    async def remove_process(self, process_id: str) -> None:
        await self._runner.execute(_REMOVE, {"process": process_id})

    async def prune_processes(self, seen_before: datetime) -> int:
        result = await self._runner.execute(_PRUNE, {"before": seen_before})
        return result.rowcount

    async def place_computers(
        self,
        worker_id: str,
        agents: Sequence[tuple[str, str]],
        until: datetime,
        now: datetime,
    ) -> set[str]:
        if agents:
            statement = _PLACE[self._traits.capabilities.dialect]
            rows = [
                {"agent": agent, "space": space, "worker": worker_id, "until": until, "now": now}
                for space, agent in sorted(set(agents), key=lambda pair: pair[1])
            ]
            await self._runner.execute(statement, rows)
        held = await self._runner.execute(_OWN_PLACEMENTS, {"worker": worker_id, "now": now})
        return {row.agent_id for row in held.all()}

    async def release_computers(
        self, worker_id: str | None, agent_ids: Sequence[str] | None
    ) -> int:
        statement = delete(computer_placements)
        if worker_id is not None:
            statement = statement.where(computer_placements.c.worker_id == worker_id)
        if agent_ids is not None:
            if not agent_ids:
                return 0
            statement = statement.where(computer_placements.c.agent_id.in_(list(agent_ids)))
        return (await self._runner.execute(statement)).rowcount

    async def running_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        if self._traits.row_locks:
            await self._runner.execute(_CLAIM_LOCK)
        per_space: dict[str, int] = {}
        per_agent: dict[str, int] = {}
        for row in (await self._runner.execute(_RUNNING_COUNTS)).all():
            per_space[row.space_id] = per_space.get(row.space_id, 0) + row.n
            per_agent[row.agent_id] = row.n
        return per_space, per_agent
