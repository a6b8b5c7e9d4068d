"""The boundaries of openbuda: small async protocols that adapters implement.

Stores
    ``Store`` opens transactions. A write transaction (``Store.write()``) holds the session rows
    it locks until it ends; on SQLite there is one writer at a time, on PostgreSQL row locks
    (``FOR UPDATE``; claims ``FOR UPDATE SKIP LOCKED``). Services compose the primitives of
    ``WriteTx`` into use-cases (a message, its task and its ``task.status`` event in one
    transaction). ``Store.read()`` gives the read primitives without taking the write lock.

Models
    ``ModelClient`` answers one ``ModelInput`` with one ``ModelReply`` and may stream text
    deltas through a callback.

Broadcaster
    Delivers stored and ephemeral events of a session to live subscribers.

Clock
    The time, so that tests can move it.

Sandbox
    An agent's computer (``SandboxBackend.connect``): commands, host-side files, ports, and the
    working copies of its Drives (``WorkingCopy``).

Drive
    Metadata through the store's ``DriveReader`` / ``DriveWriter``; content in a ``BlobStore``.

Every protocol has one conformance suite in ``tests/conformance`` that every adapter passes.
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Generic, Literal, Protocol, TypeVar, runtime_checkable

from openbuda.domain.conversation import ModelInput, ModelReply
from openbuda.domain.drive import Actor, DriveFile, DriveRef, DriveVersion, VersionOp
from openbuda.domain.events import NewEvent
from openbuda.domain.records import (
    Agent,
    AgentLimits,
    AgentSettings,
    ApiKey,
    Event,
    Member,
    Question,
    Role,
    Session,
    Space,
    Task,
    TaskError,
    TaskResult,
)
from openbuda.domain.states import SessionStatus, TaskStatus

__all__ = [
    "AgentPatch",
    "AnyReadTx",
    "BlobInfo",
    "BlobStore",
    "Broadcaster",
    "Clock",
    "ClusterReader",
    "ClusterStatus",
    "ClusterWriter",
    "ContextProjection",
    "DriveReader",
    "DriveWriter",
    "EventReader",
    "EventWriter",
    "ExecRequest",
    "ExecResult",
    "Fence",
    "FileEntry",
    "KeyReader",
    "KeyWriter",
    "LimitName",
    "ListSessions",
    "ListTasks",
    "ModelClient",
    "NewAgent",
    "NewApiKey",
    "NewDriveVersion",
    "NewSession",
    "NewTask",
    "OutputCallback",
    "OutputStream",
    "Page",
    "PortStream",
    "ProcessInfo",
    "ProcessKind",
    "ReadEvents",
    "ReadTx",
    "Sandbox",
    "SandboxBackend",
    "SandboxCapabilities",
    "SandboxFiles",
    "SandboxSpec",
    "SandboxState",
    "SandboxStatus",
    "SandboxView",
    "SessionWriter",
    "SpaceQueue",
    "Store",
    "StoreCapabilities",
    "Subscription",
    "TaskChange",
    "TaskWriter",
    "TextDeltaSink",
    "WorkingCopy",
    "WorkingFile",
    "WriteTx",
]


# ---------------------------------------------------------------------------------------------
# Request objects


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class NewApiKey:
    space_id: str
    member_id: str
    name: str
    role: Role
    secret_hash: str
    """sha256 hex of the secret; the secret itself is never stored."""
    prefix: str
    expires_at: datetime | None
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class NewAgent:
    space_id: str
    name: str
    description: str = ""
    instructions: str = ""
    model: str | None = None
    settings: AgentSettings = field(default_factory=AgentSettings)
    agent_id: str | None = None


@dataclass(frozen=True, slots=True)
class AgentPatch:
    """Fields left ``None`` stay as they are (``model`` uses ``set_model`` to allow clearing)."""

    name: str | None = None
    description: str | None = None
    instructions: str | None = None
    model: str | None = None
    set_model: bool = False
    settings: AgentSettings | None = None


@dataclass(frozen=True, slots=True)
class NewSession:
    space_id: str
    agent_id: str
    title: str = ""
    external_user_id: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class ListSessions:
    space_id: str
    agent_id: str
    now: datetime
    status: SessionStatus | None = None
    external_user_id: str | None = None
    query: str | None = None
    """Case-insensitive substring of the title."""
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class ListTasks:
    space_id: str
    status: TaskStatus | None = None
    session_id: str | None = None
    agent_id: str | None = None
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class ReadEvents:
    space_id: str
    session_id: str
    after_seq: int = 0
    limit: int | None = None
    task_id: str | None = None
    types: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class NewTask:
    space_id: str
    agent_id: str
    session_id: str
    task_id: str
    message_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Fence:
    """A lease held on a task: writes of the holder succeed only while it is current."""

    task_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class TaskChange:
    """A compare-and-set transition: applied only when the task's status is in ``sources``.

    Fields set here are written with the status; ``clear_lease`` empties owner and expiry;
    ``lease_owner`` with ``lease_until`` takes a new lease and increments ``lease_epoch``.
    ``fence`` additionally requires the current ``lease_epoch``.
    """

    space_id: str
    task_id: str
    sources: frozenset[TaskStatus]
    target: TaskStatus
    now: datetime
    fence: Fence | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    clear_lease: bool = False
    question: Question | None = None
    clear_question: bool = False
    result: TaskResult | None = None
    error: TaskError | None = None
    set_started: bool = False
    set_finished: bool = False


@dataclass(frozen=True, slots=True)
class ContextProjection:
    """The stored context of a session: a rolling summary of events up to ``through_seq``.

    The model input is the summary plus the conversation events after ``through_seq``.
    ``tokens_after`` estimates the tokens of those events; the store keeps it current on append.
    """

    summary: str = ""
    through_seq: int = 0
    tokens_after: int = 0


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    dialect: str
    skip_locked: bool
    """Claims skip rows another transaction holds (PostgreSQL)."""
    concurrent_writers: bool
    """Several write transactions may run at once (PostgreSQL); SQLite has one writer."""


# ---------------------------------------------------------------------------------------------
# Store


class ReadTx(Protocol):
    """Reads, scoped by ``space_id``: an id of another space is simply not found (``None``)."""

    async def get_space(self, space_id: str) -> Space | None: ...
    async def get_agent(self, space_id: str, agent_id: str) -> Agent | None: ...
    async def list_agents(self, space_id: str, limit: int, cursor: str | None) -> Page[Agent]: ...
    async def get_session(self, space_id: str, session_id: str, now: datetime) -> Session | None:
        """The session with its computed ``status`` and ``open_question``."""
        ...

    async def list_sessions(self, request: ListSessions) -> Page[Session]: ...
    async def get_task(self, space_id: str, task_id: str) -> Task | None: ...
    async def list_tasks(self, request: ListTasks) -> Page[Task]: ...
    async def session_tasks(
        self, space_id: str, session_id: str, statuses: frozenset[TaskStatus]
    ) -> list[Task]:
        """The session's tasks in these statuses, oldest first."""
        ...


class EventReader(Protocol):
    async def read_events(self, request: ReadEvents) -> list[Event]:
        """Stored events in ``seq`` order after ``after_seq``, optionally of one task or types."""
        ...

    async def get_context(self, space_id: str, session_id: str) -> ContextProjection | None: ...


class KeyReader(Protocol):
    async def find_api_key(self, secret_hash: str) -> tuple[ApiKey, Member] | None:
        """The key with this hash and its member, whatever its expiry (the caller checks)."""
        ...

    async def list_api_keys(self, space_id: str) -> list[ApiKey]: ...
    async def any_api_key(self) -> bool: ...


class EventWriter(Protocol):
    async def append(
        self,
        space_id: str,
        session_id: str,
        events: Sequence[NewEvent],
        now: datetime,
        *,
        fence: Fence | None = None,
    ) -> list[Event]:
        """Append events with the next gapless ``seq`` values of the session.

        Raises ``NotFound`` when the session does not exist in the space and ``LeaseLost`` when
        ``fence`` is given and the task is not ``running`` with that ``lease_epoch`` (nothing is
        written). Updates the session's ``last_seq``, ``last_activity_at`` and the context's
        ``tokens_after``. Writes only the new rows.
        """
        ...

    async def put_context(
        self, space_id: str, session_id: str, context: ContextProjection
    ) -> None: ...


class SessionWriter(Protocol):
    async def lock_session(self, space_id: str, session_id: str, now: datetime) -> Session | None:
        """Lock the session row until the transaction ends; ``None`` when not found."""
        ...

    async def create_session(self, request: NewSession, now: datetime) -> Session: ...
    async def rename_session(self, space_id: str, session_id: str, title: str) -> bool: ...
    async def delete_session(self, space_id: str, session_id: str) -> bool:
        """Delete the session with its events and tasks."""
        ...

    async def create_agent(self, request: NewAgent, now: datetime) -> Agent: ...
    async def update_agent(
        self, space_id: str, agent_id: str, patch: AgentPatch, now: datetime
    ) -> Agent | None: ...
    async def delete_agent(self, space_id: str, agent_id: str) -> bool:
        """Delete the agent with its sessions, events and tasks."""
        ...


class TaskWriter(Protocol):
    async def insert_task(self, request: NewTask) -> Task: ...
    async def change_task(self, change: TaskChange) -> Task | None:
        """Apply a compare-and-set transition; ``None`` when the task was not in ``sources``
        (or the fence did not match). Does not append the ``task.status`` event: the service
        does that in the same transaction."""
        ...

    async def check_fence(self, fence: Fence, lease_until: datetime) -> bool:
        """Whether the lease is current; extends it to ``lease_until`` when it is."""
        ...

    async def add_steer(self, space_id: str, task_id: str) -> bool:
        """Count one more steer message for a queued or running task."""
        ...

    async def claimable_tasks(
        self, now: datetime, limit: int, worker_id: str | None = None
    ) -> list[Task]:
        """Queued tasks that may start now: the oldest queued task of each session that has
        no running or waiting task, in turns across spaces (each space's oldest, then each
        space's second oldest, …; oldest first within a turn). On PostgreSQL rows locked by
        another claim are skipped (``FOR UPDATE SKIP LOCKED``). With ``worker_id``, tasks of
        agents whose computer is placed on another worker (a lease not run out by ``now``)
        are left to that worker."""
        ...

    async def expired_leases(self, now: datetime, limit: int) -> list[Task]:
        """Running tasks whose lease ended before ``now`` (locked, skipping locked ones)."""
        ...

    async def owned_tasks(self, worker_id: str | None) -> list[Task]:
        """Running tasks leased by ``worker_id`` (every running task when ``None``)."""
        ...

    async def extend_leases(self, worker_id: str, task_ids: Sequence[str], until: datetime) -> int:
        """Heartbeat: extend the leases ``worker_id`` holds on these running tasks."""
        ...


class KeyWriter(Protocol):
    async def lock_keys(self) -> None:
        """Serialise key creation until the transaction ends (bootstrap creates one key only)."""
        ...

    async def create_space(self, name: str, now: datetime) -> Space: ...
    async def create_member(
        self, space_id: str, name: str, role: Role, now: datetime
    ) -> Member: ...
    async def create_api_key(self, request: NewApiKey, now: datetime) -> ApiKey: ...
    async def touch_api_key(self, key_id: str, now: datetime) -> None: ...
    async def revoke_api_key(self, space_id: str, key_id: str, now: datetime) -> bool: ...


@dataclass(frozen=True, slots=True)
class NewDriveVersion:
    """A version to add to a path: content ``sha256`` (``None``: a tombstone) of ``size`` bytes."""

    path: str
    """A checked Drive path (``domain.drive.drive_path``)."""
    op: VersionOp
    sha256: str | None
    size: int
    actor: Actor
    restored_from: int | None = None


class DriveReader(Protocol):
    """Drive metadata reads; a Drive of another space is simply empty."""

    async def get_drive_file(self, drive: DriveRef, path: str) -> DriveFile | None:
        """The latest version of ``path`` (tombstones included), ``None`` if it never existed."""
        ...

    async def list_drive_files(
        self, drive: DriveRef, prefix: str = "", *, limit: int | None = None
    ) -> list[DriveFile]:
        """Live files (no tombstones) whose path starts with ``prefix`` (``""`` or a folder
        ending in ``/``), ordered by path."""
        ...

    async def list_drive_versions(
        self, drive: DriveRef, path: str, *, limit: int = 100, before: int | None = None
    ) -> list[DriveVersion]:
        """The versions of ``path``, newest first, only those below version ``before``."""
        ...

    async def get_drive_version(
        self, drive: DriveRef, path: str, version: int
    ) -> DriveVersion | None: ...

    async def drive_changes(
        self, drive: DriveRef, after_seq: int, *, limit: int = 1000
    ) -> list[DriveFile]:
        """Paths whose latest version has ``change_seq > after_seq`` (tombstones included),
        ordered by ``change_seq``: what a working copy last synced at ``after_seq`` lacks."""
        ...

    async def drive_seq(self, drive: DriveRef) -> int:
        """The Drive's latest ``change_seq`` (0 for a Drive never written)."""
        ...

    async def drive_usage(self, space_id: str) -> int:
        """Bytes of the live files of every Drive of the space (what its quota counts)."""
        ...


class DriveWriter(Protocol):
    async def lock_drive(self, drive: DriveRef) -> None:
        """Take the Drive's row lock (creating the row) for the rest of the transaction, so
        that checks made before ``add_drive_version`` (same content, quota) stay true."""
        ...

    async def add_drive_version(
        self, drive: DriveRef, new: NewDriveVersion, now: datetime
    ) -> DriveVersion:
        """Append the next version of ``new.path``, taking the Drive's next ``change_seq``.

        Locks the Drive's row first (concurrent writers of one Drive take turns; the lock is
        held to the end of the transaction), then updates the path's latest version and the
        Drive's live byte count.
        """
        ...

    async def delete_drive(self, drive: DriveRef) -> int:
        """Forget a Drive's metadata (its agent was deleted); how many paths it had. Blobs stay
        (other versions may share them)."""
        ...


# ---------------------------------------------------------------------------------------------
# The processes of a deployment (scale-out, ARCHITECTURE §9)

ProcessKind = Literal["api", "worker", "api+worker"]


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One API or worker process, as it registered itself in the store."""

    id: str
    """The worker id (``--worker-id``; stable across restarts when the operator says so)."""
    kind: ProcessKind
    host: str
    pid: int
    version: str
    started_at: datetime
    seen_at: datetime
    """Its last heartbeat: alive while ``seen_at`` is younger than the lease."""
    running: int = 0
    """Tasks it holds a lease on (filled by ``cluster_status``)."""
    computers: int = 0
    """Agents whose computer is placed on it (filled by ``cluster_status``)."""


@dataclass(frozen=True, slots=True)
class SpaceQueue:
    """The queue of one space: what ``openbuda status`` shows per space."""

    space_id: str
    queued: int
    running: int
    waiting: int
    oldest_queued_at: datetime | None


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    now: datetime
    processes: list[ProcessInfo]
    """Every registered process, alive or not, most recently seen first."""
    spaces: list[SpaceQueue]
    """Spaces with a task queued, running or waiting, most queued first."""
    expired_leases: int
    """Running tasks whose lease ran out (the reaper re-queues them)."""


class ClusterReader(Protocol):
    async def cluster_status(self, now: datetime) -> ClusterStatus: ...


class ClusterWriter(Protocol):
    async def register_process(self, process: ProcessInfo) -> None:
        """Insert or replace the row of ``process.id`` (a restart takes its row over)."""
        ...

    async def heartbeat_process(self, process_id: str, now: datetime) -> bool:
        """Record that the process is alive; ``False`` when its row is gone (re-register)."""
        ...

    async def remove_process(self, process_id: str) -> None:
        """The process stopped cleanly."""
        ...

    async def prune_processes(self, seen_before: datetime) -> int:
        """Forget the processes not seen since ``seen_before`` (killed, never restarted)."""
        ...

    async def place_computers(
        self,
        worker_id: str,
        agents: Sequence[tuple[str, str]],
        until: datetime,
        now: datetime,
    ) -> set[str]:
        """Take or extend the placement of these ``(space_id, agent_id)`` computers on
        ``worker_id`` until ``until``: a placement held by another worker whose lease has not
        run out by ``now`` is left alone. Returns the ids of every agent placed on
        ``worker_id`` with a current lease afterwards."""
        ...

    async def release_computers(
        self, worker_id: str | None, agent_ids: Sequence[str] | None
    ) -> int:
        """Drop ``worker_id``'s placements (``None``: every worker's, the embedded mode at
        start) of these agents (``None``: all of them)."""
        ...

    async def running_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Running tasks per space and per agent, across every process. On PostgreSQL this
        first takes the claim lock (a transaction-level advisory lock) so that the counts stay
        true until the transaction that claims against them commits."""
        ...


@runtime_checkable
class WriteTx(
    ReadTx,
    EventReader,
    KeyReader,
    DriveReader,
    EventWriter,
    SessionWriter,
    TaskWriter,
    KeyWriter,
    DriveWriter,
    ClusterReader,
    ClusterWriter,
    Protocol,
):
    """Everything a write transaction can do; see the protocols it combines."""


@runtime_checkable
class AnyReadTx(ReadTx, EventReader, KeyReader, DriveReader, ClusterReader, Protocol):
    """Everything a read transaction can do."""


class Store(Protocol):
    capabilities: StoreCapabilities

    def write(self) -> AbstractAsyncContextManager[WriteTx]:
        """A write transaction; commits on normal exit, rolls back on an exception."""
        ...

    def read(self) -> AbstractAsyncContextManager[AnyReadTx]: ...
    async def migrate(self) -> None:
        """Bring the schema to the latest revision (Alembic)."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Models

TextDeltaSink = Callable[[str], Awaitable[None]]


class ModelClient(Protocol):
    name: str
    """``provider:model`` as configured."""

    async def respond(
        self, request: ModelInput, on_text: TextDeltaSink | None = None
    ) -> ModelReply:
        """Answer one model call. Text deltas go to ``on_text`` as they arrive when given.

        Raises ``ModelError`` (retryable) for provider failures, ``BadModelReply`` for unusable
        replies and ``NoModel`` when no model is configured.
        """
        ...


# ---------------------------------------------------------------------------------------------
# Broadcaster and clock


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...
    async def close(self) -> None: ...


class Broadcaster(Protocol):
    async def publish(self, session_id: str, event: dict[str, Any]) -> None:
        """Deliver an event (stored: ``Event.to_json()``; ephemeral: ``{"type", "data"}``)."""
        ...

    def subscribe(self, session_id: str) -> Subscription: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None: ...


# ---------------------------------------------------------------------------------------------
# Sandbox (the agent's computer, ARCHITECTURE §6)


SandboxState = Literal["running", "sleeping", "stopped"]
LimitName = Literal["memory", "pids", "cpu", "file_size", "open_files", "tmp", "disk", "timeout"]
OutputStream = Literal["stdout", "stderr"]
OutputCallback = Callable[[OutputStream, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What an agent's computer is made of; a changed spec applies at the next (re)start."""

    space_id: str
    agent_id: str
    limits: AgentLimits = field(default_factory=AgentLimits)
    network: Literal["none", "internet"] = "none"


@dataclass(frozen=True, slots=True)
class SandboxView:
    """Whose eyes a command or file access uses inside the computer.

    ``session_id`` selects the session's own ``/session`` (and its own process and mount
    namespace); ``None`` is the members' console, which has no ``/session``. With
    ``shared_writable`` false ``/agent`` and ``/space`` are read-only (external users' sessions).
    """

    session_id: str | None = None
    shared_writable: bool = True


@dataclass(frozen=True, slots=True)
class ExecRequest:
    command: str
    """Run by ``bash -c`` inside the computer."""
    view: SandboxView = field(default_factory=SandboxView)
    cwd: str | None = None
    """A sandbox path; default ``/agent``."""
    timeout_s: float | None = None
    """Default: the agent's ``limits.exec_timeout_s``."""
    env: Mapping[str, str] = field(default_factory=dict[str, str])
    capture_bytes: int = 1024 * 1024
    """At most this many bytes of each stream are kept in the result (all reach ``on_output``)."""


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    """The exit status; ``128 + N`` when a signal N ended the command (137: killed)."""
    stdout: str
    stderr: str
    timed_out: bool = False
    duration_ms: int = 0
    limit: LimitName | None = None
    """The limit that ended the command, if one did."""
    stdout_bytes: int = 0
    """Total bytes written to stdout (``stdout`` holds at most ``capture_bytes`` of them)."""
    stderr_bytes: int = 0

    @property
    def truncated(self) -> bool:
        return self.stdout_bytes > len(self.stdout.encode()) or self.stderr_bytes > len(
            self.stderr.encode()
        )


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    """The sandbox path (``/agent/notes.md``)."""
    kind: Literal["file", "dir", "symlink", "other"]
    size: int
    modified_at: datetime


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    state: SandboxState
    cpu_percent: float = 0.0
    memory_bytes: int = 0
    disk_bytes: int = 0
    file_count: int = 0
    ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SandboxCapabilities:
    isolated: bool
    """Namespaces, seccomp and a separate host uid (bubblewrap); ``False`` for ``process``."""
    freeze: bool
    """Sleep keeps processes frozen (a cgroup freezer); otherwise sleep stops them."""
    internet: bool
    """``network: internet`` is available."""
    disk_quota: bool
    """``/agent`` is a filesystem of its own size (else usage is checked after each command)."""


class SandboxFiles(Protocol):
    """Host-side file access inside one view; paths are sandbox paths.

    A relative path is under ``/agent``; an absolute one must lie in ``/agent``, ``/space``,
    ``/session`` or ``/tmp`` (``InvalidPath`` otherwise). Nothing follows a symlink out of its
    root: every access resolves beneath it without following links.
    """

    async def read(self, path: str, max_bytes: int | None = None) -> bytes: ...
    async def write(self, path: str, data: bytes) -> FileEntry:
        """Create or replace the file, creating missing parent directories."""
        ...

    async def list(self, path: str = "/agent") -> list[FileEntry]: ...
    async def stat(self, path: str) -> FileEntry | None: ...
    async def remove(self, path: str) -> bool: ...


class PortStream(Protocol):
    """A byte stream to a TCP port inside the computer (HTTP previews)."""

    async def send(self, data: bytes) -> None: ...
    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Bytes from the port; ``b""`` once it closed."""
        ...

    async def aclose(self) -> None: ...


class Sandbox(Protocol):
    """One agent's computer. Every call wakes a sleeping computer first (but ``status``)."""

    @property
    def spec(self) -> SandboxSpec: ...
    @property
    def state(self) -> SandboxState:
        """The state as last seen, without measuring anything (``status`` does)."""
        ...

    async def exec(
        self, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> ExecResult: ...
    def files(self, view: SandboxView) -> SandboxFiles: ...
    async def working_copy(self, mount: Literal["agent", "space"]) -> WorkingCopy:
        """Host access to the Drive working copy at ``/agent`` or ``/space`` (for change
        detection and for applying Drive writes); wakes the computer (its disk is mounted)."""
        ...

    async def connect_port(self, port: int) -> PortStream:
        """``Unavailable`` when nothing listens on ``port``."""
        ...

    async def status(self) -> SandboxStatus: ...
    async def sleep(self) -> None: ...
    async def wake(self) -> None: ...
    async def restart(self) -> None:
        """Kill every process and clear ``/tmp``; files in ``/agent`` stay."""
        ...

    async def destroy(self) -> None:
        """Stop the computer and remove what only it used (``/agent`` files stay)."""
        ...


class SandboxBackend(Protocol):
    """Creates computers. ``connect`` starts one or attaches to one already running."""

    @property
    def name(self) -> str: ...
    @property
    def capabilities(self) -> SandboxCapabilities: ...
    async def connect(self, spec: SandboxSpec) -> Sandbox: ...
    async def aclose(self) -> None:
        """Stop every computer this backend started in this process."""
        ...


# ---------------------------------------------------------------------------------------------
# Drive content (ARCHITECTURE §7)


@dataclass(frozen=True, slots=True)
class BlobInfo:
    sha256: str
    """Lower-case hex."""
    size: int


class BlobStore(Protocol):
    """Content addressed by its sha256: immutable, stored once however often it is written.

    ``put`` streams: it hashes while it writes and never holds a whole file in memory. Content
    becomes visible under its sha256 only once complete, so a writer killed half-way leaves no
    blob (and the metadata that would name it is written after ``put`` returns).
    """

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        """Store the content; ``TooLarge`` (nothing kept) once it passes ``max_bytes``."""
        ...

    def open(self, sha256: str, *, chunk_size: int = 1024 * 1024) -> AsyncGenerator[bytes]:
        """The content in chunks; ``NotFound`` (on the first step) when it is not stored.
        Close it (``aclose``) when stopping early: it holds a file or a connection."""
        ...

    async def read(self, sha256: str, *, max_bytes: int | None = None) -> bytes:
        """The whole content (small blobs: diffs, memory); ``TooLarge`` past ``max_bytes``."""
        ...

    async def exists(self, sha256: str) -> bool: ...
    async def delete(self, sha256: str) -> bool:
        """Remove the content (garbage collection); whether it was there."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkingFile:
    """What change detection compares between two scans of a working copy."""

    size: int
    mtime_ns: int
    inode: int


class WorkingCopy(Protocol):
    """Host-side access to a Drive's working copy in a computer (``/agent`` or ``/space``).

    Blocking calls: run them in a worker thread. Paths are Drive paths (relative). Nothing
    follows a symlink: a link the agent made is neither read nor replaced through.
    """

    def scan(self) -> dict[str, WorkingFile]:
        """Every regular file below the root (symlinks, devices, FIFOs are skipped)."""
        ...

    def stat(self, path: str) -> WorkingFile | None:
        """The regular file at ``path``; ``None`` when missing or not a regular file."""
        ...

    def open_read(self, path: str) -> BinaryIO:
        """The regular file at ``path`` for reading (``FileNotFoundError`` otherwise)."""
        ...

    def replace(self, path: str, chunks: Iterable[bytes]) -> WorkingFile:
        """Atomically replace (or create) the file, creating parent folders."""
        ...

    def remove(self, path: str) -> bool: ...
