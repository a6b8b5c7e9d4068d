"""Drive metadata: drives, drive_files, drive_versions.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01

Paths are compared byte by byte (``COLLATE "C"`` on PostgreSQL, SQLite's default ``BINARY``);
rows are keyed by the path's sha256 because a 4,096-byte path does not fit a b-tree entry on
PostgreSQL (see ``openbuda.stores.schema.drive_files``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_OP_CHECK = "op IN ('write', 'delete', 'restore')"
_CONTENT_CHECK = "(op <> 'write' OR sha256 IS NOT NULL) AND (op <> 'delete' OR sha256 IS NULL)"


def _id(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(40), nullable=nullable)


def _time(name: str) -> sa.Column[object]:
    kind = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")
    return sa.Column(name, kind, nullable=False)


def _path(name: str) -> sa.Column[str]:
    kind = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    return sa.Column(name, kind, nullable=False)


def _int(name: str, *, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=nullable)


def _hash(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(64), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "drives",
        _id("space_id"),
        _id("drive"),
        _int("last_seq"),
        sa.Column("live_bytes", sa.BigInteger(), nullable=False),
        _int("live_files"),
        sa.PrimaryKeyConstraint("space_id", "drive", name="pk_drives"),
    )
    op.create_table(
        "drive_files",
        _id("space_id"),
        _id("drive"),
        _hash("path_hash"),
        _path("path"),
        _path("path_head"),
        _int("version"),
        _hash("sha256", nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        _time("updated_at"),
        _int("change_seq"),
        sa.PrimaryKeyConstraint("space_id", "drive", "path_hash", name="pk_drive_files"),
    )
    op.create_index(
        "ix_drive_files_space_id_drive_change_seq",
        "drive_files",
        ["space_id", "drive", "change_seq"],
    )
    op.create_index(
        "ix_drive_files_space_id_drive_path_head", "drive_files", ["space_id", "drive", "path_head"]
    )
    op.create_table(
        "drive_versions",
        _id("space_id"),
        _id("drive"),
        _hash("path_hash"),
        _int("version"),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        _hash("sha256", nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        _id("member_id", nullable=True),
        _id("agent_id", nullable=True),
        _id("task_id", nullable=True),
        _id("session_id", nullable=True),
        _int("restored_from", nullable=True),
        _time("at"),
        _int("change_seq"),
        sa.PrimaryKeyConstraint(
            "space_id", "drive", "path_hash", "version", name="pk_drive_versions"
        ),
        sa.CheckConstraint(_OP_CHECK, name="ck_drive_versions_op"),
        sa.CheckConstraint(_CONTENT_CHECK, name="ck_drive_versions_content"),
    )


def downgrade() -> None:
    op.drop_table("drive_versions")
    op.drop_table("drive_files")
    op.drop_table("drives")
