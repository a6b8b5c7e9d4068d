"""The side effect the fault suite counts: a non-idempotent tool that appends to a shared file.

Every worker process loads it through ``OPENBUDA_TOOLS=tests.scaleout.effects:tools``. Each run
appends one line ``<idempotency key> <worker id> <pid> <unix time>`` to the file named by
``SCALEOUT_EFFECT_LOG``: one ``write`` of an ``O_APPEND`` descriptor, then ``fsync``, so lines
of concurrent processes never interleave and a line written before a ``kill -9`` stays. A key
that appears twice is a tool call that ran twice; the tool says it is not idempotent, so the
engine must never do that.

After writing, the tool holds on for ``SCALEOUT_EFFECT_HOLD_MS`` (default 30) before it returns:
a kill in that window leaves a call whose effect happened but whose result was never stored,
the case the recovery rules are about.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from openbuda.domain.conversation import ToolSpec
from openbuda.engine.tools import Tool, ToolContext, ToolOutcome
from openbuda.testing.tools import append_line

__all__ = ["EffectLine", "EffectTool", "read_effects", "tools"]

LOG_ENV = "SCALEOUT_EFFECT_LOG"
HOLD_ENV = "SCALEOUT_EFFECT_HOLD_MS"


@dataclass(frozen=True, slots=True)
class EffectTool:
    log_path: Path
    worker_id: str
    hold_seconds: float = 0.03
    idempotent: bool = False

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="effect",
            description="Make a side effect that must happen once.",
            parameters={
                "type": "object",
                "properties": {"label": {"type": "string"}},
                "required": ["label"],
            },
        )

    async def run(self, context: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        line = f"{context.idempotency_key} {self.worker_id} {os.getpid()} {time.time():.6f}\n"
        await anyio.to_thread.run_sync(append_line, self.log_path, line.encode())
        await anyio.sleep(self.hold_seconds)
        return ToolOutcome(f"effect {args['label']} made")


def tools() -> list[Tool]:
    """The plugin entry point (``OPENBUDA_TOOLS``): one ``EffectTool`` for this process."""
    path = os.environ.get(LOG_ENV)
    if not path:
        raise RuntimeError(f"{LOG_ENV} must name the effect log")
    worker_id = os.environ.get("OPENBUDA_WORKER_ID") or f"pid{os.getpid()}"
    hold = float(os.environ.get(HOLD_ENV) or 30) / 1000
    return [EffectTool(Path(path), worker_id, hold)]


@dataclass(frozen=True, slots=True)
class EffectLine:
    key: str
    task_id: str
    call_id: str
    worker_id: str
    pid: int
    at: float


def read_effects(path: Path) -> list[EffectLine]:
    """Every line of the effect log, in the order written."""
    if not path.exists():
        return []
    found: list[EffectLine] = []
    for raw in path.read_text().splitlines():
        key, worker_id, pid, at = raw.split(" ")
        task_id, _, call_id = key.partition(":")
        found.append(EffectLine(key, task_id, call_id, worker_id, int(pid), float(at)))
    return found
