"""The JSON of the API (API.md): request bodies, response shapes, and records turned into JSON.

Request models refuse unknown fields and, anywhere in the body, NUL characters and lone
surrogates (422). Response models document the shapes in the OpenAPI document; the routes
build the JSON with the ``*_json`` functions here, so what is sent is what is documented (the
schemathesis test holds them together).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from openbuda.api._json import rfc3339
from openbuda.api.limits import check_clean
from openbuda.domain.drive import MAX_PATH_BYTES, DriveFile, DriveVersion
from openbuda.domain.records import (
    Agent,
    AgentSettings,
    ApiKey,
    Event,
    Question,
    QuestionKind,
    Role,
    Session,
    Space,
    Task,
)
from openbuda.domain.states import SessionStatus, TaskStatus
from openbuda.domain.validation import LIMITS
from openbuda.ports import ExecResult, LimitName, SandboxState
from openbuda.service.computer import (
    DEFAULT_LINK_SECONDS,
    MAX_COMMAND_CHARS,
    MAX_EXEC_TIMEOUT_S,
    MAX_LINK_SECONDS,
    ComputerStatus,
)
from openbuda.service.drive import DriveDiff, DriveEntry
from openbuda.service.keys import MAX_KEY_DAYS, CreatedKey
from openbuda.service.sessions import HISTORY_LIMIT, MessageAccepted, MessageItem, OnBusy

__all__ = [
    "AgentCreate",
    "AgentOut",
    "AgentSettingsBody",
    "AgentUpdate",
    "AnswerCreate",
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyOut",
    "ComputerStatusOut",
    "DriveDiffOut",
    "DriveEntryOut",
    "DriveRestore",
    "DriveVersionOut",
    "EventOut",
    "ExecCreate",
    "ExecResultOut",
    "HealthOut",
    "HistoryItem",
    "MeOut",
    "MemberOut",
    "MessageAcceptedOut",
    "MessageCreate",
    "MessageOut",
    "Page",
    "PreviewLinkCreate",
    "PreviewLinkOut",
    "QuestionOut",
    "SessionCreate",
    "SessionOut",
    "SessionSave",
    "SessionUpdate",
    "SpaceCreate",
    "SpaceCreatedOut",
    "SpaceOut",
    "TaskOut",
    "accepted_json",
    "agent_json",
    "api_key_json",
    "computer_status_json",
    "created_key_json",
    "drive_diff_json",
    "drive_entry_json",
    "drive_file_json",
    "drive_version_json",
    "event_json",
    "exec_result_json",
    "merged_settings",
    "message_json",
    "plain_settings",
    "question_json",
    "session_json",
    "space_json",
    "task_json",
]

T = TypeVar("T")

INT32_MAX = 2**31 - 1
"""Counters and timeouts are stored as 32-bit integers."""


def _text(limit: str, *, min_length: int = 0) -> Any:
    return Field(min_length=min_length, max_length=LIMITS[limit])


# ---------------------------------------------------------------------------------------------
# Requests


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestBody(_Strict):
    """A whole request body: unknown fields, NUL characters and lone surrogates are a 422."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unclean_text(cls, data: Any) -> Any:
        check_clean(data)
        return data


class AgentSettingsBody(AgentSettings):
    """An agent's settings (API.md, Agents); every field is optional."""

    idle_timeout_s: int = Field(default=900, ge=1, le=INT32_MAX)


class AgentCreate(RequestBody):
    name: Annotated[str, _text("agent_name", min_length=1)]
    description: Annotated[str, _text("agent_description")] = ""
    instructions: Annotated[str, _text("agent_instructions")] = ""
    model: str | None = Field(
        default=None,
        max_length=300,
        description="`provider:model`; null: the server's `OPENBUDA_MODEL`.",
    )
    settings: AgentSettingsBody | None = None


class AgentUpdate(RequestBody):
    """Only the fields given change; ``settings`` are merged into the current ones and
    ``model: null`` goes back to the server's default model."""

    name: Annotated[str, _text("agent_name", min_length=1)] | None = None
    description: Annotated[str, _text("agent_description")] | None = None
    instructions: Annotated[str, _text("agent_instructions")] | None = None
    model: str | None = Field(default=None, max_length=300)
    settings: AgentSettingsBody | None = None


class HistoryItem(_Strict):  # checked with its body
    role: Literal["user", "assistant"]
    text: Annotated[str, _text("message_text")]


class SessionCreate(RequestBody):
    title: Annotated[str, _text("session_title")] = ""
    external_user_id: Annotated[str, _text("external_user_id", min_length=1)] | None = None
    history: list[HistoryItem] = Field(
        default_factory=list[HistoryItem],
        max_length=HISTORY_LIMIT,
        description="An existing conversation to import, oldest first.",
    )


class SessionUpdate(RequestBody):
    title: Annotated[str, _text("session_title")]


class MessageCreate(RequestBody):
    text: Annotated[str, _text("message_text", min_length=1)]
    on_busy: OnBusy = Field(
        default=OnBusy.QUEUE, description="What to do when a task of the session is active."
    )


class AnswerCreate(RequestBody):
    question_id: str = Field(max_length=100)
    text: Annotated[str, _text("answer_text")] | None = None
    choice: str | None = Field(default=None, max_length=10_000)
    approved: bool | None = None
    note: Annotated[str, _text("answer_text")] | None = None


class ApiKeyCreate(RequestBody):
    name: Annotated[str, _text("agent_name", min_length=1)]
    expires_in_days: int | None = Field(default=None, ge=1, le=MAX_KEY_DAYS)
    role: Role | None = Field(default=None, description="Default `member`.")


class SpaceCreate(RequestBody):
    name: Annotated[str, _text("agent_name", min_length=1)]


class ExecCreate(RequestBody):
    command: str = Field(
        min_length=1, max_length=MAX_COMMAND_CHARS, description="Run by `bash -c`."
    )
    cwd: str | None = Field(
        default=None, max_length=4096, description="A directory of the computer; default /agent."
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_EXEC_TIMEOUT_S,
        description="Seconds before the command is killed; default: the agent's exec_timeout_s.",
    )


class PreviewLinkCreate(RequestBody):
    expires_in_s: int = Field(
        default=DEFAULT_LINK_SECONDS,
        ge=1,
        le=MAX_LINK_SECONDS,
        description="How long the link opens the page (default 15 minutes, at most 24 hours).",
    )


# ---------------------------------------------------------------------------------------------
# Responses (documentation of the shapes the ``*_json`` functions build)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as `?cursor=` for the next page.")


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str


class QuestionOut(BaseModel):
    id: str
    kind: QuestionKind
    prompt: str
    options: list[str] | None
    asked_at: datetime
    tool_name: str | None = Field(description="For an approval: the tool waiting for it.")


class AgentOut(BaseModel):
    id: str
    name: str
    description: str
    instructions: str
    model: str | None = Field(description="null: the server's default model.")
    settings: AgentSettings
    created_at: datetime
    updated_at: datetime


class SessionOut(BaseModel):
    id: str
    agent_id: str
    title: str
    status: SessionStatus
    external_user_id: str | None
    created_at: datetime
    last_activity_at: datetime
    task_count: int
    open_question: QuestionOut | None
    last_seq: int = Field(description="The seq of the session's latest event.")


class TaskResultOut(BaseModel):
    text: str
    files: list[str]


class TaskErrorOut(BaseModel):
    code: str
    message: str


class TaskOut(BaseModel):
    id: str
    session_id: str
    agent_id: str
    message_id: str | None
    status: TaskStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    question: QuestionOut | None
    result: TaskResultOut | None
    error: TaskErrorOut | None


class EventOut(BaseModel):
    seq: int
    id: str
    type: str
    task_id: str | None = Field(default=None, description="Absent for session-level events.")
    at: datetime
    data: dict[str, Any]


class MessageOut(BaseModel):
    message_id: str
    seq: int
    role: Literal["user", "assistant"]
    text: str
    task_id: str | None
    at: datetime


class MessageAcceptedOut(BaseModel):
    message_id: str
    task_id: str
    session_id: str
    kind: Literal["task", "answer", "steer"] = Field(
        description="`task`: a new task; `answer`: it answered the waiting task's question; "
        "`steer`: it was given to the running task."
    )


class ApiKeyOut(BaseModel):
    id: str
    name: str
    role: Role
    prefix: str = Field(description="The first characters of the secret.")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="The key itself: shown once, only its hash is stored.")


class SpaceOut(BaseModel):
    id: str
    name: str
    created_at: datetime


class SpaceCreatedOut(BaseModel):
    space: SpaceOut
    api_key: ApiKeyCreated


class MemberOut(BaseModel):
    id: str
    name: str
    role: Role


class MeOut(BaseModel):
    member: MemberOut
    space: SpaceOut
    role: Role = Field(description="The role of this API key.")
    api_key: ApiKeyOut
    instance_owner: bool = Field(description="Whether this key may create spaces.")


class ComputerStatusOut(BaseModel):
    status: SandboxState
    cpu_percent: float
    memory_bytes: int
    disk_bytes: int = Field(description="Bytes used by the files in /agent.")
    file_count: int = Field(description="Files in /agent.")
    ports: list[int] = Field(description="TCP ports a program of the computer listens on.")
    sleep_timeout_s: int


class ExecResultOut(BaseModel):
    exit_code: int = Field(description="`128 + N` when signal N ended the command (137: killed).")
    stdout: str
    stderr: str
    timed_out: bool
    duration_ms: int
    limit: LimitName | None = Field(description="The limit that killed the command, if one did.")
    stdout_bytes: int = Field(description="Bytes written to stdout (`stdout` keeps at most 1 MiB).")
    stderr_bytes: int


class PreviewLinkOut(BaseModel):
    url: str = Field(description="Opens the page in a browser, without an API key.")
    expires_at: datetime


# ---------------------------------------------------------------------------------------------
# Records as JSON


def question_json(question: Question | None) -> dict[str, Any] | None:
    if question is None:
        return None
    return {
        "id": question.id,
        "kind": question.kind.value,
        "prompt": question.prompt,
        "options": None if question.options is None else list(question.options),
        "asked_at": rfc3339(question.asked_at),
        "tool_name": question.tool_name,
    }


def agent_json(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "name": agent.name,
        "description": agent.description,
        "instructions": agent.instructions,
        "model": agent.model,
        "settings": agent.settings.model_dump(mode="json"),
        "created_at": rfc3339(agent.created_at),
        "updated_at": rfc3339(agent.updated_at),
    }


def session_json(session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "agent_id": session.agent_id,
        "title": session.title,
        "status": session.status.value,
        "external_user_id": session.external_user_id,
        "created_at": rfc3339(session.created_at),
        "last_activity_at": rfc3339(session.last_activity_at),
        "task_count": session.task_count,
        "open_question": question_json(session.open_question),
        "last_seq": session.last_seq,
    }


def task_json(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "session_id": task.session_id,
        "agent_id": task.agent_id,
        "message_id": task.message_id,
        "status": task.status.value,
        "created_at": rfc3339(task.created_at),
        "started_at": rfc3339(task.started_at),
        "finished_at": rfc3339(task.finished_at),
        "question": question_json(task.question),
        "result": None if task.result is None else task.result.to_json(),
        "error": None if task.error is None else task.error.to_json(),
    }


def event_json(event: Event) -> dict[str, Any]:
    return event.to_json()


def message_json(item: MessageItem) -> dict[str, Any]:
    return {
        "message_id": item.message_id,
        "seq": item.seq,
        "role": item.role,
        "text": item.text,
        "task_id": item.task_id,
        "at": rfc3339(item.at),
    }


def accepted_json(accepted: MessageAccepted) -> dict[str, Any]:
    return {
        "message_id": accepted.message_id,
        "task_id": accepted.task_id,
        "session_id": accepted.session_id,
        "kind": accepted.kind,
    }


def api_key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role.value,
        "prefix": key.prefix,
        "created_at": rfc3339(key.created_at),
        "expires_at": rfc3339(key.expires_at),
        "last_used_at": rfc3339(key.last_used_at),
    }


def created_key_json(created: CreatedKey) -> dict[str, Any]:
    return {**api_key_json(created.key), "secret": created.secret}


def space_json(space: Space) -> dict[str, Any]:
    return {"id": space.id, "name": space.name, "created_at": rfc3339(space.created_at)}


def merged_settings(current: AgentSettings, patch: AgentSettingsBody) -> AgentSettings:
    """``current`` with the fields ``patch`` was given (``limits`` merged field by field)."""
    values = current.model_dump()
    for name in patch.model_fields_set:
        if name == "limits":
            limits = patch.limits
            values["limits"] = {
                **current.limits.model_dump(),
                **{field: getattr(limits, field) for field in limits.model_fields_set},
            }
        else:
            values[name] = getattr(patch, name)
    return AgentSettings.model_validate(values)


def plain_settings(settings: AgentSettingsBody) -> AgentSettings:
    return AgentSettings.model_validate(settings.model_dump())


def computer_status_json(computer: ComputerStatus) -> dict[str, Any]:
    status = computer.status
    return {
        "status": status.state,
        "cpu_percent": status.cpu_percent,
        "memory_bytes": status.memory_bytes,
        "disk_bytes": status.disk_bytes,
        "file_count": status.file_count,
        "ports": list(status.ports),
        "sleep_timeout_s": computer.sleep_timeout_s,
    }


def exec_result_json(result: ExecResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "timed_out": result.timed_out,
        "duration_ms": result.duration_ms,
        "limit": result.limit,
        "stdout_bytes": result.stdout_bytes,
        "stderr_bytes": result.stderr_bytes,
    }


# ---------------------------------------------------------------------------------------------
# Drive (API.md, Drive)


class DriveRestore(RequestBody):
    version: int = Field(ge=1, le=INT32_MAX, description="The version whose content comes back.")


class SessionSave(RequestBody):
    path: str = Field(
        min_length=1,
        max_length=4 * MAX_PATH_BYTES,  # characters; the Drive checks the bytes (400)
        description="Where in the Drive, e.g. `notes/session.md`.",
    )
    drive: Literal["agent", "space"] = Field(
        default="agent", description="The session's Agent Drive (default) or the Space Drive."
    )
    task_id: str | None = Field(
        default=None,
        max_length=100,
        description="Save this task's result with its files listed instead of the transcript.",
    )


class DriveEntryOut(BaseModel):
    path: str
    kind: Literal["file", "dir"]
    size: int = Field(description="Bytes; for a folder, the total of the files below it.")
    sha256: str | None = Field(description="The content's hash (null for folders and deletions).")
    version: int | None = Field(description="The latest version (null for folders).")
    updated_at: datetime
    deleted: bool = Field(description="The latest version is a deletion (a tombstone).")


class DriveVersionOut(BaseModel):
    path: str
    version: int
    op: Literal["write", "delete", "restore"]
    sha256: str | None = Field(description="null for a deletion.")
    size: int
    at: datetime
    restored_from: int | None = Field(description="For a restore: the version it brought back.")
    member_id: str | None = Field(description="The member who made it (API, CLI, web).")
    agent_id: str | None = Field(description="The agent who made it, with its task and session.")
    task_id: str | None
    session_id: str | None


class DriveDiffOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    path: str
    from_: int = Field(alias="from")
    to: int
    binary: bool
    diff: str = Field(
        description="A unified diff (empty for the same text); for binary or very large "
        "versions, a sentence saying so."
    )


def drive_entry_json(entry: DriveEntry) -> dict[str, Any]:
    return {
        "path": entry.path,
        "kind": entry.kind,
        "size": entry.size,
        "sha256": entry.sha256,
        "version": entry.version,
        "updated_at": rfc3339(entry.updated_at),
        "deleted": False,
    }


def drive_file_json(file: DriveFile) -> dict[str, Any]:
    return {
        "path": file.path,
        "kind": "file",
        "size": file.size,
        "sha256": file.sha256,
        "version": file.version,
        "updated_at": rfc3339(file.updated_at),
        "deleted": file.deleted,
    }


def drive_version_json(version: DriveVersion) -> dict[str, Any]:
    return {
        "path": version.path,
        "version": version.version,
        "op": version.op,
        "sha256": version.sha256,
        "size": version.size,
        "at": rfc3339(version.at),
        "restored_from": version.restored_from,
        **version.actor.to_json(),
    }


def drive_diff_json(diff: DriveDiff) -> dict[str, Any]:
    return {
        "path": diff.path,
        "from": diff.from_version,
        "to": diff.to_version,
        "binary": diff.binary,
        "diff": diff.diff,
    }
