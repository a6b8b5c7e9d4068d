"""The suite's invariants catch what they are about: a clean history passes, each kind of
damage is reported."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.scaleout.effects import EffectLine
from tests.scaleout.history import (
    Accepted,
    ClientRecord,
    Received,
    Stored,
    StoredEvent,
    StoredTask,
    check,
)
from tests.scaleout.model import Plan

SESSION = "ses_a"
BASE = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@dataclass
class History:
    client: ClientRecord
    stored: Stored
    effects: list[EffectLine]

    @property
    def log(self) -> list[StoredEvent]:
        return self.stored.events[SESSION]

    def kinds(self) -> list[str]:
        return sorted({v.kind for v in check([self.client], self.stored, self.effects)})


def at(seq: int) -> datetime:
    return BASE + timedelta(seconds=seq)


def clean() -> History:
    """Two tasks: t1 makes an effect on w1, t2 answers at once on w2."""
    specs: list[tuple[str, str | None, dict[str, Any]]] = [
        ("session.created", None, {"title": "s000"}),
        ("message", "t1", {"role": "user", "text": "x", "message_id": "m1"}),
        ("task.status", "t1", {"status": "queued"}),
        ("task.status", "t1", {"status": "running", "worker": "w1", "epoch": 1}),
        (
            "model.response",
            "t1",
            {"text": "", "tool_calls": [{"call_id": "s000-m0.0.0", "name": "effect"}]},
        ),
        ("tool.call", "t1", {"call_id": "s000-m0.0.0", "name": "effect", "args": {}}),
        ("tool.result", "t1", {"call_id": "s000-m0.0.0", "status": "ok", "output": "made"}),
        ("model.response", "t1", {"text": "done s000-m0", "tool_calls": []}),
        ("message", "t1", {"role": "assistant", "text": "done s000-m0", "message_id": "a1"}),
        ("task.result", "t1", {"text": "done s000-m0", "files": []}),
        ("task.status", "t1", {"status": "completed"}),
        ("message", "t2", {"role": "user", "text": "y", "message_id": "m2"}),
        ("task.status", "t2", {"status": "queued"}),
        ("task.status", "t2", {"status": "running", "worker": "w2", "epoch": 1}),
        ("model.response", "t2", {"text": "done s000-m1", "tool_calls": []}),
        ("message", "t2", {"role": "assistant", "text": "done s000-m1", "message_id": "a2"}),
        ("task.result", "t2", {"text": "done s000-m1", "files": []}),
        ("task.status", "t2", {"status": "completed"}),
    ]
    log = [
        StoredEvent(SESSION, seq, f"evt_{seq}", kind, task, at(seq), data)
        for seq, (kind, task, data) in enumerate(specs, 1)
    ]
    stored = Stored(
        tasks={
            "t1": StoredTask("t1", SESSION, "completed", "m1", {"text": "done s000-m0"}, None),
            "t2": StoredTask("t2", SESSION, "completed", "m2", {"text": "done s000-m1"}, None),
        },
        events={SESSION: log},
    )
    client = ClientRecord(
        0,
        SESSION,
        [Plan("s000-m0", ("effect",)), Plan("s000-m1", ())],
        [Accepted("s000-m0", "m1", "t1"), Accepted("s000-m1", "m2", "t2")],
        [Received(1, e.seq, e.event_id, e.type, e.task_id, e.data) for e in log],
    )
    effect = EffectLine("t1:s000-m0.0.0", "t1", "s000-m0.0.0", "w1", 100, at(6).timestamp() + 0.1)
    return History(client, stored, [effect])


def test_a_clean_history_has_no_violation() -> None:
    assert clean().kinds() == []


def _event(history: History, seq: int) -> StoredEvent:
    return history.log[seq - 1]


def drop_event(seq: int) -> Callable[[History], None]:
    def damage(history: History) -> None:
        del history.log[seq - 1]

    return damage


def duplicate_result(history: History) -> None:
    """The tool ran again after a crash: its result is stored twice."""
    seventh = _event(history, 7)
    history.log.insert(7, replace(seventh, seq=8, event_id="evt_dup"))
    renumber(history)


def renumber(history: History) -> None:
    history.stored.events[SESSION] = [
        replace(e, seq=n, at=at(n)) for n, e in enumerate(history.log, 1)
    ]
    history.client = replace(
        history.client,
        received=[
            Received(1, e.seq, e.event_id, e.type, e.task_id, e.data)
            for e in history.stored.events[SESSION]
        ],
    )


def effect_twice(history: History) -> None:
    history.effects.append(replace(history.effects[0], worker_id="w2", pid=200))


def effect_by_another_worker(history: History) -> None:
    history.effects[0] = replace(history.effects[0], worker_id="w3")


def effect_after_the_lease(history: History) -> None:
    """t1's lease went to w2 (re-queued, claimed again) before w1 made the effect."""
    running = _event(history, 4)
    requeued = replace(_event(history, 3), event_id="evt_q2", data={"status": "queued"})
    claimed = replace(running, event_id="evt_r2", data={**running.data, "worker": "w2", "epoch": 2})
    history.log[6:6] = [requeued, claimed]
    renumber(history)
    history.effects[0] = replace(history.effects[0], at=at(7).timestamp() + 0.5)


def effect_without_intent(history: History) -> None:
    history.effects.append(EffectLine("t2:nothing", "t2", "nothing", "w2", 200, at(15).timestamp()))


def ok_without_effect(history: History) -> None:
    history.effects.clear()


def epoch_goes_back(history: History) -> None:
    running = _event(history, 4)
    history.log[3] = replace(running, data={**running.data, "epoch": 0})
    history.log.insert(3, replace(running, event_id="evt_r0"))
    history.log.insert(4, replace(_event(history, 3), event_id="evt_q2"))
    renumber(history)


def running_twice(history: History) -> None:
    """Two workers claimed the task without a re-queue between the claims."""
    running = _event(history, 4)
    history.log.insert(4, replace(running, event_id="evt_r2", data={**running.data, "epoch": 2}))
    renumber(history)


def second_task_before_the_first_ended(history: History) -> None:
    second = history.log[11:14]
    del history.log[11:14]
    for offset, event in enumerate(second):
        history.log.insert(5 + offset, event)
    renumber(history)


def messages_swapped(history: History) -> None:
    history.client = replace(history.client, accepted=list(reversed(history.client.accepted)))


def task_failed(history: History) -> None:
    history.stored.tasks["t2"] = replace(
        history.stored.tasks["t2"], status="failed", error="internal: boom"
    )


def confused_model(history: History) -> None:
    history.stored.tasks["t1"] = replace(
        history.stored.tasks["t1"], result={"text": "confused s000-m0: step 0"}
    )


def stray_task(history: History) -> None:
    history.stored.tasks["t3"] = StoredTask("t3", SESSION, "queued", "m3", None, None)


def lost_task(history: History) -> None:
    del history.stored.tasks["t2"]


def sse_duplicate(history: History) -> None:
    first = history.client.received[5]
    history.client.received.insert(6, replace(first, connection=2))


def sse_missed(history: History) -> None:
    del history.client.received[9]


def sse_out_of_order(history: History) -> None:
    received = history.client.received
    received[3], received[4] = received[4], received[3]


def sse_mismatch(history: History) -> None:
    history.client.received[2] = replace(history.client.received[2], event_id="evt_other")


def event_after_the_end(history: History) -> None:
    late = replace(_event(history, 7), event_id="evt_late")
    history.log.insert(11, late)
    renumber(history)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (drop_event(8), ["SSE phantom", "log gap"]),
        (duplicate_result, ["duplicate event"]),
        (effect_twice, ["effect count", "effect twice", "two workers at once"]),
        (effect_by_another_worker, ["two workers at once"]),
        (effect_after_the_lease, ["two workers at once"]),
        (effect_without_intent, ["effect without intent"]),
        (ok_without_effect, ["effect count"]),
        (epoch_goes_back, ["epoch did not increase"]),
        (running_twice, ["bad transition"]),
        (second_task_before_the_first_ended, ["two tasks at once"]),
        (messages_swapped, ["message order"]),
        (task_failed, ["not completed"]),
        (confused_model, ["wrong result"]),
        (stray_task, ["unexpected task"]),
        (lost_task, ["lost task"]),
        (sse_duplicate, ["SSE duplicate"]),
        (sse_missed, ["SSE missed"]),
        (sse_out_of_order, ["SSE order"]),
        (sse_mismatch, ["SSE mismatch"]),
        (event_after_the_end, ["duplicate event", "event after the end"]),
    ],
)
def test_each_kind_of_damage_is_reported(
    damage: Callable[[History], None], expected: list[str]
) -> None:
    history = copy.deepcopy(clean())
    damage(history)
    assert history.kinds() == expected
