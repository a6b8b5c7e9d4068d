"""The SDK's typed view of the API's JSON (API.md): one pydantic model per object.

Models are frozen and keep fields they do not know (``extra="allow"``), so a newer server's
additions survive a round trip through ``to_json()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from openbuda.domain.records import QuestionKind, Role
from openbuda.domain.states import SessionStatus, TaskStatus

__all__ = [
    "Agent",
    "AgentLimits",
    "AgentSettings",
    "ApiKey",
    "ComputerStatus",
    "DriveDiff",
    "DriveDownload",
    "DriveEntry",
    "DriveVersion",
    "Event",
    "ExecOutput",
    "ExecResult",
    "Health",
    "HistoryMessage",
    "Me",
    "Member",
    "Message",
    "MessageAccepted",
    "Page",
    "PreviewLink",
    "Question",
    "Session",
    "Space",
    "SpaceCreated",
    "Task",
    "TaskError",
    "TaskResult",
]

T = TypeVar("T")

EPHEMERAL_TYPES = frozenset({"text.delta", "tool.output"})


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, as the API sent it (fields the SDK does not know included)."""
        return self.model_dump(mode="json", by_alias=True)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``cursor`` for the next (``None``: the end)."""

    items: list[T]
    next_cursor: str | None = None
    raw: dict[str, Any] = field(default_factory=dict[str, Any], repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        items: Sequence[Any] = self.items
        return {
            "items": [item.to_json() if isinstance(item, ApiModel) else item for item in items],
            "next_cursor": self.next_cursor,
        }


class Health(ApiModel):
    status: str
    version: str | None = None


class ApiKey(ApiModel):
    id: str
    name: str
    role: Role
    prefix: str = ""
    """The first characters of the secret, to tell keys apart."""
    created_at: datetime | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    secret: str | None = None
    """Only in the answer that created the key: shown once."""


class Space(ApiModel):
    id: str
    name: str
    created_at: datetime | None = None


class SpaceCreated(ApiModel):
    space: Space
    api_key: ApiKey


class Member(ApiModel):
    id: str
    name: str
    role: Role


class Me(ApiModel):
    """The principal of the API key: its member, space and role."""

    member: Member
    space: Space
    role: Role
    """The role of this API key."""
    api_key: ApiKey | None = None
    instance_owner: bool = False
    """Whether this key may create spaces."""


class AgentLimits(ApiModel):
    memory_mb: int = 1024
    pids: int = 256
    cpus: float = 1
    file_size_mb: int = 100
    tmp_mb: int = 512
    disk_mb: int = 5120
    exec_timeout_s: int = 120


class AgentSettings(ApiModel):
    idle_timeout_s: int = 900
    sleep_timeout_s: int = 1800
    max_steps: int = 50
    tools: list[str] | None = None
    approval_tools: list[str] = Field(default_factory=list[str])
    external_users_can_write: bool = False
    network: str = "none"
    limits: AgentLimits = Field(default_factory=AgentLimits)


class Agent(ApiModel):
    id: str
    name: str
    description: str = ""
    instructions: str = ""
    model: str | None = None
    settings: AgentSettings = Field(default_factory=AgentSettings)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Question(ApiModel):
    id: str
    kind: QuestionKind
    prompt: str
    options: list[str] | None = None
    asked_at: datetime | None = None
    tool_name: str | None = None
    """For an approval: the tool waiting for it."""


class Session(ApiModel):
    id: str
    agent_id: str
    title: str = ""
    status: SessionStatus
    external_user_id: str | None = None
    created_at: datetime | None = None
    last_activity_at: datetime | None = None
    task_count: int = 0
    open_question: Question | None = None
    last_seq: int | None = None
    """The ``seq`` of the session's latest event: stream ``after`` it for what comes next."""


class HistoryMessage(ApiModel):
    """One message of a conversation imported with a new session."""

    role: Literal["user", "assistant"]
    text: str


class MessageAccepted(ApiModel):
    message_id: str
    task_id: str
    session_id: str
    kind: Literal["task", "answer", "steer"] | None = None
    """``task``: a new task; ``answer``: it answered the waiting task's text question;
    ``steer``: it was given to the running task."""


class Message(ApiModel):
    message_id: str
    seq: int
    role: str
    text: str
    task_id: str | None = None
    at: datetime | None = None


class TaskResult(ApiModel):
    text: str = ""
    files: list[str] = Field(default_factory=list[str])


class TaskError(ApiModel):
    code: str
    message: str = ""


class Task(ApiModel):
    id: str
    session_id: str
    agent_id: str | None = None
    message_id: str | None = None
    status: TaskStatus
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    question: Question | None = None
    result: TaskResult | None = None
    error: TaskError | None = None


class Event(ApiModel):
    """A session event: a stored one (``seq``, ``id``, ``at`` set) or an ephemeral one streamed
    live (``text.delta``, ``tool.output``: ``seq`` is ``None``)."""

    type: str
    data: dict[str, Any] = Field(default_factory=dict[str, Any])
    seq: int | None = None
    id: str | None = None
    task_id: str | None = None
    at: datetime | None = None

    @property
    def ephemeral(self) -> bool:
        return self.seq is None


class ComputerStatus(ApiModel):
    """An agent's computer: ``running``, ``sleeping`` or ``stopped``, and what it uses."""

    status: Literal["running", "sleeping", "stopped"]
    cpu_percent: float = 0.0
    memory_bytes: int = 0
    disk_bytes: int = 0
    """Bytes used by the files in ``/agent``."""
    file_count: int = 0
    ports: list[int] = Field(default_factory=list[int])
    """TCP ports a program of the computer listens on (open them with ``preview_link``)."""
    sleep_timeout_s: int = 1800


class ExecResult(ApiModel):
    """How a command ended: ``exit_code`` (``128 + N`` after signal N, 137 when killed),
    its output (each stream at most 1 MiB), and the ``limit`` that killed it, if one did."""

    exit_code: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    duration_ms: int = 0
    limit: str | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0


class ExecOutput(ApiModel):
    """Output of a running command, as ``exec_stream`` yields it."""

    stream: Literal["stdout", "stderr"]
    text: str


class PreviewLink(ApiModel):
    """A signed URL that opens a port's preview in a browser, without the API key."""

    url: str
    expires_at: datetime


class DriveEntry(ApiModel):
    """A file of a Drive (``kind="file"``), or a folder in a listing (``kind="dir"``: the
    total size of its files, no ``sha256`` nor ``version``). ``deleted``: the latest version
    is a deletion (what ``drive.delete`` answers)."""

    path: str
    kind: Literal["file", "dir"] = "file"
    size: int = 0
    sha256: str | None = None
    version: int | None = None
    updated_at: datetime | None = None
    deleted: bool = False


class DriveVersion(ApiModel):
    """One version of a Drive file, and who made it: a member (``member_id``) or an agent
    (``agent_id`` with its ``task_id`` and ``session_id``)."""

    path: str
    version: int
    op: Literal["write", "delete", "restore"]
    sha256: str | None = None
    size: int = 0
    at: datetime | None = None
    restored_from: int | None = None
    member_id: str | None = None
    agent_id: str | None = None
    task_id: str | None = None
    session_id: str | None = None


class DriveDiff(ApiModel):
    """A unified diff between two versions (``from_`` is the JSON's ``from``); for binary or
    very large versions ``diff`` is a sentence saying so."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    path: str
    from_: int = Field(alias="from")
    to: int
    binary: bool = False
    diff: str = ""


class DriveDownload(ApiModel):
    """What ``drive.download`` wrote: the version, its hash (checked) and its size."""

    path: str
    version: int
    sha256: str
    size: int
