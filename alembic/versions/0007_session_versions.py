"""Stream sessions remember the workflow version they opened under, and are found by stream.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stream_windows") as batch:
        batch.add_column(sa.Column("version", sa.String(length=32), nullable=True))
    op.create_index("ix_windows_stream", "stream_windows", ["workflow", "stream_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_windows_stream", table_name="stream_windows")
    with op.batch_alter_table("stream_windows") as batch:
        batch.drop_column("version")
