"""Inbox events are found by task ID with an index.

The dashboard's ``GET /api/inbox?taskId=`` (what did VOD send about this task?) walked the whole
inbox newest first until it had a page: about 110 ms at a million rows on SQLite, growing with
the table. The partial index on orphans serves only orphans.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_inbox_task", "inbox_events", ["task_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_inbox_task", table_name="inbox_events")
