"""Initial schema: spaces, members, api_keys, agents, sessions, tasks, events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Times are ``timestamptz`` on PostgreSQL and integer microseconds since the epoch on SQLite
(``openbuda.stores.schema.UtcDateTime``); JSON is text.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_ROLE_CHECK = "role IN ('member', 'admin', 'owner')"
_STATUS_CHECK = "status IN ('queued', 'running', 'waiting', 'completed', 'failed', 'cancelled')"


def _id(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(40), nullable=nullable)


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    kind = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")
    return sa.Column(name, kind, nullable=nullable)


def _text(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _int(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "spaces",
        _id("id"),
        _text("name"),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_spaces"),
    )
    op.create_table(
        "members",
        _id("id"),
        _id("space_id"),
        _text("name"),
        sa.Column("role", sa.String(16), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_members"),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], name="fk_members_space_id_spaces"),
        sa.CheckConstraint(_ROLE_CHECK, name="ck_members_role"),
    )
    op.create_index("ix_members_space_id", "members", ["space_id"])
    op.create_table(
        "api_keys",
        _id("id"),
        _id("space_id"),
        _id("member_id"),
        _text("name"),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        _time("created_at"),
        _time("expires_at", nullable=True),
        _time("last_used_at", nullable=True),
        _time("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], name="fk_api_keys_space_id_spaces"),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_api_keys_member_id_members"
        ),
        sa.UniqueConstraint("secret_hash", name="uq_api_keys_secret_hash"),
        sa.CheckConstraint(_ROLE_CHECK, name="ck_api_keys_role"),
    )
    op.create_index("ix_api_keys_space_id", "api_keys", ["space_id"])
    op.create_table(
        "agents",
        _id("id"),
        _id("space_id"),
        _text("name"),
        _text("description"),
        _text("instructions"),
        _text("model", nullable=True),
        _text("settings"),
        _int("idle_timeout_s"),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], name="fk_agents_space_id_spaces"),
    )
    op.create_index("ix_agents_space_id_created_at", "agents", ["space_id", "created_at"])
    op.create_table(
        "sessions",
        _id("id"),
        _id("space_id"),
        _id("agent_id"),
        _text("title"),
        _text("external_user_id", nullable=True),
        _time("created_at"),
        _time("last_activity_at"),
        _int("last_seq"),
        _int("task_count"),
        _text("context_summary"),
        _int("context_through_seq"),
        _int("context_tokens"),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"], name="fk_sessions_agent_id_agents"),
    )
    op.create_index(
        "ix_sessions_agent_id_last_activity_at", "sessions", ["agent_id", "last_activity_at"]
    )
    op.create_table(
        "tasks",
        _id("id"),
        _id("space_id"),
        _id("agent_id"),
        _id("session_id"),
        sa.Column("status", sa.String(16), nullable=False),
        _id("message_id", nullable=True),
        _time("created_at"),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        _text("question", nullable=True),
        _text("result", nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        _text("error_message", nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        _time("lease_until", nullable=True),
        _int("lease_epoch"),
        _int("steer_count"),
        _int("attempts"),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_tasks_session_id_sessions"
        ),
        sa.CheckConstraint(_STATUS_CHECK, name="ck_tasks_status"),
    )
    op.create_index("ix_tasks_status_created_at", "tasks", ["status", "created_at"])
    op.create_index("ix_tasks_session_id_status", "tasks", ["session_id", "status"])
    op.create_index("ix_tasks_space_id_created_at", "tasks", ["space_id", "created_at"])
    op.create_table(
        "events",
        _id("session_id"),
        sa.Column("seq", sa.Integer(), nullable=False),
        _id("id"),
        _id("space_id"),
        sa.Column("type", sa.String(64), nullable=False),
        _id("task_id", nullable=True),
        _time("at"),
        _text("data"),
        _int("schema_version"),
        sa.PrimaryKeyConstraint("session_id", "seq", name="pk_events"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_events_session_id_sessions"
        ),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("tasks")
    op.drop_table("sessions")
    op.drop_table("agents")
    op.drop_table("api_keys")
    op.drop_table("members")
    op.drop_table("spaces")
