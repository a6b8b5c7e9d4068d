"""Scale-out: the processes of a deployment and the placement of computers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def _time(name: str) -> sa.Column[object]:
    kind = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")
    return sa.Column(name, kind, nullable=False)


def upgrade() -> None:
    op.create_table(
        "processes",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        _time("started_at"),
        _time("seen_at"),
        sa.CheckConstraint("kind IN ('api', 'worker', 'api+worker')", name="ck_processes_kind"),
        sa.PrimaryKeyConstraint("id", name="pk_processes"),
    )
    op.create_table(
        "computer_placements",
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("space_id", sa.String(40), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        _time("lease_until"),
        _time("placed_at"),
        sa.PrimaryKeyConstraint("agent_id", name="pk_computer_placements"),
    )
    op.create_index(
        "ix_computer_placements_worker_id", "computer_placements", ["worker_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_computer_placements_worker_id", table_name="computer_placements")
    op.drop_table("computer_placements")
    op.drop_table("processes")
