"""Event types of a session's log, and the payloads each carries (API.md, Events).

Payloads are plain JSON dicts. ``SCHEMA_VERSION`` is stored with every event so that later
releases can read old logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "CONVERSATION_TYPES",
    "EPHEMERAL_TYPES",
    "SCHEMA_VERSION",
    "EventType",
    "NewEvent",
]

SCHEMA_VERSION: Final = 1


class EventType(StrEnum):
    SESSION_CREATED = "session.created"
    MESSAGE = "message"
    TASK_STATUS = "task.status"
    MODEL_RESPONSE = "model.response"
    TOOL_CALL = "tool.call"
    TOOL_RESULT = "tool.result"
    QUESTION = "question"
    ANSWER = "answer"
    DRIVE_CHANGED = "drive.changed"
    CONTEXT_COMPACTED = "context.compacted"
    TASK_RESULT = "task.result"
    # ephemeral: streamed, never stored
    TEXT_DELTA = "text.delta"
    TOOL_OUTPUT = "tool.output"


EPHEMERAL_TYPES: Final = frozenset({EventType.TEXT_DELTA, EventType.TOOL_OUTPUT})

CONVERSATION_TYPES: Final = frozenset(
    {
        EventType.MESSAGE,
        EventType.MODEL_RESPONSE,
        EventType.TOOL_CALL,
        EventType.TOOL_RESULT,
        EventType.ANSWER,
        EventType.QUESTION,
    }
)
"""The stored types that the model input is built from (plus the context summary)."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; the store assigns ``seq``, ``id`` and ``at``."""

    type: EventType
    data: dict[str, Any]
    task_id: str | None = None
