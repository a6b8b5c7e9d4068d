"""The compare-and-set ``UPDATE`` of ``change_task``, built once per shape of change.

A ``TaskChange`` sets some fields and not others; each combination (its *shape*) is one
statement with bound parameters, built on first use and cached, so a transition costs binding
values, not building SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Update, bindparam, func, update

from openbuda.ports import TaskChange
from openbuda.stores._codec import dump_json
from openbuda.stores._queries import p_int, p_str, p_time
from openbuda.stores.schema import tasks

__all__ = ["change_statement"]


@dataclass(frozen=True, slots=True)
class _Shape:
    fenced: bool
    lease: bool
    clear_lease: bool
    question: bool
    clear_question: bool
    result: bool
    error: bool
    started: bool
    finished: bool


def change_statement(change: TaskChange, *, fenced: bool) -> tuple[Update, dict[str, Any]]:
    """The ``UPDATE … RETURNING`` for ``change`` and its parameters; ``fenced`` adds the lease
    condition on this task (``status = 'running' AND lease_epoch = :epoch``)."""
    shape = _Shape(
        fenced=fenced,
        lease=change.lease_owner is not None,
        clear_lease=change.clear_lease,
        question=change.question is not None,
        clear_question=change.clear_question,
        result=change.result is not None,
        error=change.error is not None,
        started=change.set_started,
        finished=change.set_finished,
    )
    parameters: dict[str, Any] = {
        "task": change.task_id,
        "space": change.space_id,
        "sources": sorted(source.value for source in change.sources),
        "target": change.target.value,
        "now": change.now,
    }
    if fenced and change.fence is not None:
        parameters["epoch"] = change.fence.epoch
    if change.lease_owner is not None:
        parameters["owner"] = change.lease_owner
        parameters["until"] = change.lease_until
    if change.question is not None:
        parameters["question_json"] = dump_json(change.question.to_json())
    if change.result is not None:
        parameters["result_json"] = dump_json(change.result.to_json())
    if change.error is not None:
        parameters["code"] = change.error.code
        parameters["message"] = change.error.message
    return _statement(shape), parameters


@cache
def _statement(shape: _Shape) -> Update:
    conditions: list[ColumnElement[bool]] = [
        tasks.c.id == p_str("task"),
        tasks.c.space_id == p_str("space"),
        tasks.c.status.in_(bindparam("sources", expanding=True)),
    ]
    if shape.fenced:
        conditions.append(tasks.c.status == "running")
        conditions.append(tasks.c.lease_epoch == p_int("epoch"))
    values: dict[str, Any] = {"status": p_str("target")}
    if shape.lease:
        values["lease_owner"] = p_str("owner")
        values["lease_until"] = p_time("until")
        values["lease_epoch"] = tasks.c.lease_epoch + 1
        values["attempts"] = tasks.c.attempts + 1
    elif shape.clear_lease:
        values["lease_owner"] = None
        values["lease_until"] = None
    if shape.question:
        values["question"] = p_str("question_json")
    elif shape.clear_question:
        values["question"] = None
    if shape.result:
        values["result"] = p_str("result_json")
    if shape.error:
        values["error_code"] = p_str("code")
        values["error_message"] = p_str("message")
    if shape.started:
        values["started_at"] = func.coalesce(tasks.c.started_at, p_time("now"))
    if shape.finished:
        values["finished_at"] = p_time("now")
    return update(tasks).where(*conditions).values(values).returning(*tasks.c)
