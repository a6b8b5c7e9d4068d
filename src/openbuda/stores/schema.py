"""The relational schema of openbuda, as SQLAlchemy Core tables shared by SQLite and PostgreSQL.

Conventions that keep both dialects behaving the same:

- every row carries ``space_id``; every read filters on it;
- ids are the prefixed strings of ``openbuda.domain.ids`` (``String(40)``);
- times are ``UtcDateTime``: ``timestamptz`` on PostgreSQL, integer microseconds since the epoch
  on SQLite; both come back as timezone-aware UTC ``datetime``;
- JSON is plain ``Text`` holding compact ``json.dumps`` output, never a dialect JSON type.

The Alembic revisions in ``migrations/versions`` create exactly this schema;
``tests/stores/test_migrations.py`` checks that they agree.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final, get_args

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

from openbuda.domain.drive import VersionOp
from openbuda.domain.records import Role
from openbuda.domain.states import TaskStatus

__all__ = [
    "ID_LENGTH",
    "PATH_HEAD_CHARS",
    "UtcDateTime",
    "agents",
    "api_keys",
    "computer_placements",
    "drive_files",
    "drive_versions",
    "drives",
    "events",
    "members",
    "metadata",
    "processes",
    "sessions",
    "spaces",
    "tasks",
]

ID_LENGTH: Final = 40
"""Room for ``<prefix>_<26 chars>`` ids and for caller-chosen ids of similar size."""
PATH_HEAD_CHARS: Final = 512
"""Characters of a Drive path kept in the indexed ``path_head``: at most 2,048 UTF-8 bytes, so
an index entry stays under PostgreSQL's b-tree limit (about 2,700 bytes) that a whole path of
up to 4,096 bytes would exceed."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime``; naive values are refused on the way in.

    PostgreSQL stores ``timestamptz``; SQLite stores microseconds since the Unix epoch as an
    integer (8 bytes instead of 32 of ISO text; integer order is time order).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: openbuda stores timezone-aware UTC times")
        if dialect.name == "sqlite":
            return (value - _EPOCH) // _MICROSECOND
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, int):
            return _EPOCH + value * _MICROSECOND
        assert isinstance(value, datetime)
        if value.tzinfo is None:  # pragma: no cover - timestamptz always carries a zone
            return value.replace(tzinfo=UTC)
        return value if value.tzinfo is UTC else value.astimezone(UTC)


_ROLE_CHECK: Final = "role IN (" + ", ".join(f"'{role.value}'" for role in Role) + ")"
_OP_CHECK: Final = "op IN (" + ", ".join(f"'{op}'" for op in get_args(VersionOp)) + ")"


def _id(name: str, *args: Any, **kwargs: Any) -> Column[str]:
    return Column(name, String(ID_LENGTH), *args, **kwargs)


def _time(name: str, *, nullable: bool = False) -> Column[datetime]:
    return Column(name, UtcDateTime(), nullable=nullable)


def _path(name: str) -> Column[str]:
    """Text compared byte by byte on both dialects (SQLite's ``BINARY``, PostgreSQL's ``"C"``),
    which for UTF-8 is code point order, the order of Python strings."""
    return Column(name, Text().with_variant(Text(collation="C"), "postgresql"), nullable=False)


metadata: Final = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

spaces: Final = Table(
    "spaces",
    metadata,
    _id("id", primary_key=True),
    Column("name", Text, nullable=False),
    _time("created_at"),
)
"""A tenant. ``space_id`` of a space is its ``id``."""

members: Final = Table(
    "members",
    metadata,
    _id("id", primary_key=True),
    _id("space_id", ForeignKey("spaces.id"), nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("role", String(16), nullable=False),
    _time("created_at"),
    CheckConstraint(_ROLE_CHECK, name="role"),
)

api_keys: Final = Table(
    "api_keys",
    metadata,
    _id("id", primary_key=True),
    _id("space_id", ForeignKey("spaces.id"), nullable=False, index=True),
    _id("member_id", ForeignKey("members.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("secret_hash", String(128), nullable=False),
    Column("prefix", String(32), nullable=False),
    _time("created_at"),
    _time("expires_at", nullable=True),
    _time("last_used_at", nullable=True),
    _time("revoked_at", nullable=True),
    UniqueConstraint("secret_hash"),
    CheckConstraint(_ROLE_CHECK, name="role"),
)

agents: Final = Table(
    "agents",
    metadata,
    _id("id", primary_key=True),
    _id("space_id", ForeignKey("spaces.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("instructions", Text, nullable=False),
    Column("model", Text, nullable=True),
    Column("settings", Text, nullable=False),
    Column("idle_timeout_s", Integer, nullable=False),
    _time("created_at"),
    _time("updated_at"),
    Index(None, "space_id", "created_at"),
)
"""``settings`` is ``AgentSettings.model_dump_json()``; ``idle_timeout_s`` copies the setting so
that ``?status=dormant`` can be filtered in SQL."""

sessions: Final = Table(
    "sessions",
    metadata,
    _id("id", primary_key=True),
    _id("space_id", nullable=False),
    _id("agent_id", ForeignKey("agents.id"), nullable=False),
    Column("title", Text, nullable=False),
    Column("external_user_id", Text, nullable=True),
    _time("created_at"),
    _time("last_activity_at"),
    Column("last_seq", Integer, nullable=False),
    Column("task_count", Integer, nullable=False),
    Column("context_summary", Text, nullable=False),
    Column("context_through_seq", Integer, nullable=False),
    Column("context_tokens", Integer, nullable=False),
    Index(None, "agent_id", "last_activity_at"),
)
"""``last_seq`` allocates event seqs; ``context_*`` is the ``ContextProjection``."""

tasks: Final = Table(
    "tasks",
    metadata,
    _id("id", primary_key=True),
    _id("space_id", nullable=False),
    _id("agent_id", nullable=False),
    _id("session_id", ForeignKey("sessions.id"), nullable=False),
    Column("status", String(16), nullable=False),
    _id("message_id", nullable=True),
    _time("created_at"),
    _time("started_at", nullable=True),
    _time("finished_at", nullable=True),
    Column("question", Text, nullable=True),
    Column("result", Text, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("lease_owner", String(200), nullable=True),
    _time("lease_until", nullable=True),
    Column("lease_epoch", Integer, nullable=False),
    Column("steer_count", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    CheckConstraint(
        "status IN (" + ", ".join(f"'{status.value}'" for status in TaskStatus) + ")", name="status"
    ),
    Index(None, "status", "created_at"),
    Index(None, "session_id", "status"),
    Index(None, "space_id", "created_at"),
)
"""``question`` and ``result`` are JSON; ``lease_epoch`` fences the lease holder's writes."""

events: Final = Table(
    "events",
    metadata,
    _id("session_id", ForeignKey("sessions.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    _id("id", nullable=False),
    _id("space_id", nullable=False),
    Column("type", String(64), nullable=False),
    _id("task_id", nullable=True),
    _time("at"),
    Column("data", Text, nullable=False),
    Column("schema_version", Integer, nullable=False),
    PrimaryKeyConstraint("session_id", "seq"),
)
"""A session's log: ``(session_id, seq)`` is gapless from 1; ``data`` is JSON.

The only index is the primary key: every read is a range of one session's seqs (also the reads
of one task's events, which start after a recent seq). Event ids are time-ordered and random;
nothing looks an event up by id, so no index pays for one."""

drives: Final = Table(
    "drives",
    metadata,
    _id("space_id", nullable=False),
    _id("drive", nullable=False),
    Column("last_seq", Integer, nullable=False),
    Column("live_bytes", BigInteger, nullable=False),
    Column("live_files", Integer, nullable=False),
    PrimaryKeyConstraint("space_id", "drive"),
)
"""A Drive (``drive`` is ``DriveRef.key``: an agent's id or ``"space"``), created by its first
version. ``last_seq`` allocates the Drive-wide ``change_seq``; updating it locks the row, which
serialises the Drive's writers. ``live_bytes`` and ``live_files`` count the latest versions that
are not tombstones (the quota sums ``live_bytes``). No foreign keys: a Drive's rows outlive
nothing they name, and ``delete_drive`` removes them."""

drive_files: Final = Table(
    "drive_files",
    metadata,
    _id("space_id", nullable=False),
    _id("drive", nullable=False),
    Column("path_hash", String(64), nullable=False),
    _path("path"),
    _path("path_head"),
    Column("version", Integer, nullable=False),
    Column("sha256", String(64), nullable=True),
    Column("size", BigInteger, nullable=False),
    _time("updated_at"),
    Column("change_seq", Integer, nullable=False),
    PrimaryKeyConstraint("space_id", "drive", "path_hash"),
    Index(None, "space_id", "drive", "change_seq"),
    Index(None, "space_id", "drive", "path_head"),
)
"""The latest version of each path of a Drive (``sha256`` ``None``: a tombstone).

Paths may be 4,096 bytes long, too long for a b-tree entry on PostgreSQL; rows are keyed by
``path_hash`` (hex sha256 of the UTF-8 path) and listed in path order through ``path_head``,
the first ``PATH_HEAD_CHARS`` characters of the path (ordering by ``(path_head, path)`` is
ordering by ``path``)."""

drive_versions: Final = Table(
    "drive_versions",
    metadata,
    _id("space_id", nullable=False),
    _id("drive", nullable=False),
    Column("path_hash", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("op", String(8), nullable=False),
    Column("sha256", String(64), nullable=True),
    Column("size", BigInteger, nullable=False),
    _id("member_id", nullable=True),
    _id("agent_id", nullable=True),
    _id("task_id", nullable=True),
    _id("session_id", nullable=True),
    Column("restored_from", Integer, nullable=True),
    _time("at"),
    Column("change_seq", Integer, nullable=False),
    PrimaryKeyConstraint("space_id", "drive", "path_hash", "version"),
    CheckConstraint(_OP_CHECK, name="op"),
    CheckConstraint(
        "(op <> 'write' OR sha256 IS NOT NULL) AND (op <> 'delete' OR sha256 IS NULL)",
        name="content",
    ),
)
"""Every version of every path, numbered per path from 1. Who made it (``member_id``, or
``agent_id`` with ``task_id`` and ``session_id``) is kept without foreign keys, so the history
survives the deletion of the member, session or task."""

WORKER_ID_LENGTH: Final = 200
"""Worker ids are chosen by operators (``--worker-id``): room for a host name and more."""
_KIND_CHECK: Final = "kind IN ('api', 'worker', 'api+worker')"

processes: Final = Table(
    "processes",
    metadata,
    Column("id", String(WORKER_ID_LENGTH), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    _time("started_at"),
    _time("seen_at"),
    CheckConstraint(_KIND_CHECK, name="kind"),
)
"""The API and worker processes of a deployment (``openbuda status``); ``seen_at`` is the last
heartbeat. A process removes its row when it stops cleanly; a dead one's row stays, shown as
not seen for a while, until a process with the same id starts again."""

computer_placements: Final = Table(
    "computer_placements",
    metadata,
    _id("agent_id", primary_key=True),
    _id("space_id", nullable=False),
    Column("worker_id", String(WORKER_ID_LENGTH), nullable=False),
    _time("lease_until"),
    _time("placed_at"),
    Index(None, "worker_id"),
)
"""Which worker an agent's computer lives on, with a lease its worker's heartbeat extends: the
agent's tasks are claimed only there while the lease holds; once it runs out any worker may take
the placement over and re-create the computer from the Agent Drive."""
