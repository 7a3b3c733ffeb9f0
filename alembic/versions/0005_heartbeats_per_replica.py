"""Sweeper heartbeats are kept per job and replica.

With one row per job name, a replica whose sweeper hung looked healthy as long as another
replica ran the same job. The rows are heartbeats, rewritten by the next sweep: the table is
made again with the replica in its key rather than migrated row by row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_findings", JSON, nullable=True),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
    ]


def upgrade() -> None:
    op.drop_table("sweeper_jobs")
    op.create_table(
        "sweeper_jobs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("replica", sa.String(length=120), nullable=False),
        sa.Column("sweeper_started_at", sa.DateTime(timezone=True), nullable=True),
        *_columns(),
        sa.PrimaryKeyConstraint("name", "replica"),
    )


def downgrade() -> None:
    op.drop_table("sweeper_jobs")
    op.create_table(
        "sweeper_jobs",
        sa.Column("name", sa.String(length=64), nullable=False),
        *_columns(),
        sa.PrimaryKeyConstraint("name"),
    )
