"""What a model sees and says, independent of any provider SDK.

The engine builds a ``ModelInput`` from one session's events; model adapters translate it to
their provider's format and return a ``ModelReply``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AssistantTurn",
    "ModelInput",
    "ModelReply",
    "SystemText",
    "ToolCall",
    "ToolResultTurn",
    "ToolSpec",
    "Turn",
    "Usage",
    "UserTurn",
]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments object."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    args: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "name": self.name, "args": self.args}


@dataclass(frozen=True, slots=True)
class SystemText:
    text: str
    role: Literal["system"] = "system"


@dataclass(frozen=True, slots=True)
class UserTurn:
    text: str
    role: Literal["user"] = "user"


@dataclass(frozen=True, slots=True)
class AssistantTurn:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    role: Literal["assistant"] = "assistant"


@dataclass(frozen=True, slots=True)
class ToolResultTurn:
    call_id: str
    name: str
    output: str
    is_error: bool = False
    role: Literal["tool"] = "tool"


Turn = SystemText | UserTurn | AssistantTurn | ToolResultTurn


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One model call: the turns in order (system texts first) and the tools on offer."""

    turns: tuple[Turn, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ModelReply:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    model_name: str = ""

    def to_event_data(self) -> dict[str, Any]:
        return {"text": self.text, "tool_calls": [call.to_json() for call in self.tool_calls]}
