"""The embedded VOD engine: its files, procedures and tasks, outgoing events, and seen nonces.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "engine_files",
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("container", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("md5", sa.String(length=32), nullable=True),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("source_type", sa.String(length=32), nullable=False),
        sa.Column("stream_id", sa.String(length=200), nullable=True),
        sa.Column("record_start", sa.BigInteger(), nullable=True),
        sa.Column("record_end", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("file_id"),
    )
    op.create_index(
        "ix_engine_files_stream", "engine_files", ["stream_id", "record_start"], unique=False
    )

    op.create_table(
        "engine_tasks",
        sa.Column("task_id", sa.String(length=120), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("procedure_id", sa.String(length=120), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("file_id", sa.String(length=32), nullable=True),
        sa.Column("procedure", sa.String(length=120), nullable=True),
        sa.Column("params", JSON, nullable=False),
        sa.Column("dedup_key", sa.String(length=120), nullable=True),
        sa.Column("err_code", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("output", JSON, nullable=True),
        sa.Column("detail", JSON, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("begun_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("task_id"),
        sa.UniqueConstraint("dedup_key"),
    )
    op.create_index("ix_engine_tasks_file", "engine_tasks", ["file_id"], unique=False)
    op.create_index(
        "ix_engine_tasks_procedure", "engine_tasks", ["procedure_id", "stage"], unique=False
    )
    op.create_index(
        "ix_engine_tasks_status", "engine_tasks", ["status", "created_at"], unique=False
    )

    op.create_table(
        "engine_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("msg_handle", sa.String(length=32), nullable=False),
        sa.Column("task_id", sa.String(length=120), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("body", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("push_status", sa.String(length=16), nullable=False),
        sa.Column("push_attempts", sa.Integer(), nullable=False),
        sa.Column("next_push_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("push_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pull_status", sa.String(length=16), nullable=False),
        sa.Column("visible_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("msg_handle"),
    )
    op.create_index(
        "ix_engine_events_pull",
        "engine_events",
        ["visible_at"],
        unique=False,
        sqlite_where=sa.text("pull_status = 'pending'"),
        postgresql_where=sa.text("pull_status = 'pending'"),
    )
    op.create_index(
        "ix_engine_events_push",
        "engine_events",
        ["next_push_at"],
        unique=False,
        sqlite_where=sa.text("push_status = 'pending'"),
        postgresql_where=sa.text("push_status = 'pending'"),
    )
    op.create_index("ix_engine_events_task", "engine_events", ["task_id"], unique=False)

    op.create_table(
        "engine_nonces",
        sa.Column("secret_id", sa.String(length=120), nullable=False),
        sa.Column("nonce", sa.String(length=40), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("secret_id", "nonce"),
    )
    op.create_index("ix_engine_nonces_seen", "engine_nonces", ["seen_at"], unique=False)


def downgrade() -> None:
    op.drop_table("engine_nonces")
    op.drop_table("engine_events")
    op.drop_table("engine_tasks")
    op.drop_table("engine_files")
