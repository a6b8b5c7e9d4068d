"""The stored objects of openbuda as plain, immutable records.

Records carry no behaviour that does I/O. Stores build them from rows; services and the engine
pass them around; the API turns them into JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openbuda.domain.states import SessionStatus, TaskStatus

__all__ = [
    "Agent",
    "AgentLimits",
    "AgentSettings",
    "ApiKey",
    "Event",
    "Member",
    "Question",
    "QuestionKind",
    "Role",
    "Session",
    "Space",
    "Task",
    "TaskError",
    "TaskResult",
]


class Role(StrEnum):
    MEMBER = "member"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]

    def includes(self, other: Role) -> bool:
        """Each role includes the ones below it."""
        return self.rank >= other.rank


_ROLE_RANK = {Role.MEMBER: 0, Role.ADMIN: 1, Role.OWNER: 2}


class AgentLimits(BaseModel):
    """Sandbox limits of an agent's computer (ARCHITECTURE §6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int = Field(default=1024, ge=16, le=1_048_576)
    pids: int = Field(default=256, ge=8, le=65_536)
    cpus: float = Field(default=1, gt=0, le=256)
    file_size_mb: int = Field(default=100, ge=1, le=1_048_576)
    tmp_mb: int = Field(default=512, ge=1, le=1_048_576)
    disk_mb: int = Field(default=5120, ge=16, le=16_777_216)
    exec_timeout_s: int = Field(default=120, ge=1, le=86_400)


class AgentSettings(BaseModel):
    """An agent's settings; every field has a default (API.md, Agents)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_timeout_s: int = Field(default=900, ge=1)
    sleep_timeout_s: int = Field(default=1800, ge=300, le=28_800)
    max_steps: int = Field(default=50, ge=1, le=10_000)
    tools: list[str] | None = None
    """Enabled tool names; ``None`` means every built-in tool. ``ask_user`` is always on."""
    approval_tools: list[str] = Field(default_factory=list[str])
    external_users_can_write: bool = False
    network: Literal["none", "internet"] = "none"
    limits: AgentLimits = Field(default_factory=AgentLimits)
    context_token_budget: int = Field(default=24_000, ge=500, le=10_000_000)
    """Past this estimate of tokens the older turns of a session are compacted into a summary."""


@dataclass(frozen=True, slots=True)
class Space:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    space_id: str
    name: str
    role: Role
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    space_id: str
    member_id: str
    name: str
    role: Role
    prefix: str
    """The first characters of the secret, shown so people can tell keys apart."""
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    space_id: str
    name: str
    description: str
    instructions: str
    model: str | None
    settings: AgentSettings
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    space_id: str
    agent_id: str
    title: str
    external_user_id: str | None
    created_at: datetime
    last_activity_at: datetime
    last_seq: int
    task_count: int
    status: SessionStatus = SessionStatus.IDLE
    """Computed when read from the session's tasks, its last activity and the idle timeout."""
    open_question: Question | None = None


class QuestionKind(StrEnum):
    TEXT = "text"
    CHOICE = "choice"
    APPROVAL = "approval"


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    kind: QuestionKind
    prompt: str
    call_id: str
    """The ``ask_user`` (or approval-gated) tool call that asked it; the answer is its result."""
    asked_at: datetime
    options: list[str] | None = None
    tool_name: str | None = None
    """For an approval question: the tool that waits for approval."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "prompt": self.prompt,
            "call_id": self.call_id,
            "asked_at": self.asked_at.isoformat().replace("+00:00", "Z"),
        }
        if self.options is not None:
            data["options"] = list(self.options)
        if self.tool_name is not None:
            data["tool_name"] = self.tool_name
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Question:
        return cls(
            id=data["id"],
            kind=QuestionKind(data["kind"]),
            prompt=data["prompt"],
            call_id=data["call_id"],
            asked_at=datetime.fromisoformat(data["asked_at"]),
            options=data.get("options"),
            tool_name=data.get("tool_name"),
        )


@dataclass(frozen=True, slots=True)
class TaskResult:
    text: str
    files: list[str] = field(default_factory=list[str])

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "files": list(self.files)}


@dataclass(frozen=True, slots=True)
class TaskError:
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    space_id: str
    agent_id: str
    session_id: str
    status: TaskStatus
    created_at: datetime
    message_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    question: Question | None = None
    result: TaskResult | None = None
    error: TaskError | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    lease_epoch: int = 0
    steer_count: int = 0
    """How many steer messages the task has been given; a completion must have seen them all."""
    attempts: int = 0
    """How many times the task has been claimed."""


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a session's log. ``data`` is plain JSON."""

    seq: int
    id: str
    session_id: str
    type: str
    at: datetime
    data: dict[str, Any]
    task_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "id": self.id,
            "type": self.type,
            "at": self.at.isoformat().replace("+00:00", "Z"),
            "data": self.data,
        }
        if self.task_id is not None:
            out["task_id"] = self.task_id
        return out
