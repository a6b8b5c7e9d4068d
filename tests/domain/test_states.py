"""The transition table and session status derivation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from openbuda.domain.errors import InvalidTransition
from openbuda.domain.states import (
    TERMINAL_TASK_STATUSES,
    TRANSITIONS,
    SessionStatus,
    TaskStatus,
    check_transition,
    derive_session_status,
    sources_for,
)

LEGAL = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "queued"),
    ("running", "waiting"),
    ("waiting", "queued"),
    ("waiting", "cancelled"),
}


@pytest.mark.parametrize(("source", "target"), list(itertools.product(TaskStatus, TaskStatus)))
def test_every_pair_is_legal_exactly_when_the_lifecycle_says_so(
    source: TaskStatus, target: TaskStatus
) -> None:
    legal = (source.value, target.value) in LEGAL
    assert (target in TRANSITIONS[source]) is legal
    assert (source in sources_for(target)) is legal
    if legal:
        check_transition("tsk_x", source, target)
    else:
        with pytest.raises(InvalidTransition) as raised:
            check_transition("tsk_x", source, target)
        assert raised.value.details == {
            "task_id": "tsk_x",
            "status": source.value,
            "target": target.value,
        }
        assert "'tsk_x'" in raised.value.message


def test_terminal_statuses_have_no_way_out() -> None:
    assert {s for s in TaskStatus if s.is_terminal} == set(TERMINAL_TASK_STATUSES)
    for status in TERMINAL_TASK_STATUSES:
        assert TRANSITIONS[status] == frozenset()


NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("active", "waiting", "idle_for", "expected"),
    [
        (True, True, 10_000, SessionStatus.WORKING),
        (False, True, 10_000, SessionStatus.WAITING),
        (False, False, 899, SessionStatus.IDLE),
        (False, False, 900, SessionStatus.DORMANT),
    ],
)
def test_session_status_is_derived(
    active: bool, waiting: bool, idle_for: int, expected: SessionStatus
) -> None:
    status = derive_session_status(
        has_active_task=active,
        has_waiting_task=waiting,
        last_activity_at=NOW - timedelta(seconds=idle_for),
        now=NOW,
        idle_timeout_s=900,
    )
    assert status is expected
