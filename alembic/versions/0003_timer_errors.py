"""Timers that could not be applied keep their error, and are found by a partial index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("timers") as batch:
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
    op.create_index(
        "ix_timers_failed",
        "timers",
        ["id"],
        unique=False,
        sqlite_where=sa.text("status = 'failed'"),
        postgresql_where=sa.text("status = 'failed'"),
    )


def downgrade() -> None:
    op.drop_index("ix_timers_failed", table_name="timers")
    with op.batch_alter_table("timers") as batch:
        batch.drop_column("error")
