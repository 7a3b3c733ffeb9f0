"""The database tables (SQLModel). Alembic owns the schema; these mirror its latest revision.

Naming: one table per domain noun (runs, steps, tasks, inbox_events, outbox, timers, history);
the embedded VOD engine's tables start with ``engine_``.
Hot paths have their own indexes: VOD task ID correlation (the tasks primary key), and every
sweep's ``status + due time`` via partial indexes over the unfinished rows only, so a sweep costs
the same with ten thousand rows as with a million.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine (SQLite stores them as naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: vodflow stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=JSONType, nullable=nullable)


def _time(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _text(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.Text, nullable=nullable)


def pending_only(column: str, status: str) -> dict[str, Any]:
    """``WHERE status = '<literal>'`` for a partial index (literal, so PostgreSQL plans use it)."""
    clause = sa.text(f"{column} = '{status}'")
    return {"sqlite_where": clause, "postgresql_where": clause}


class WorkflowVersion(SQLModel, table=True):
    __tablename__ = "workflow_versions"

    version: str = Field(primary_key=True, max_length=32)
    name: str = Field(index=True, max_length=64)
    path: str
    source: str = _text(nullable=False)
    loaded_at: datetime = _time(nullable=False)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        sa.Index("ix_runs_created", "created_at", "id"),
        sa.Index("ix_runs_workflow_created", "workflow", "created_at"),
        sa.Index("ix_runs_status_updated", "status", "updated_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    workflow: str = Field(max_length=64)
    version: str = Field(max_length=32)
    status: str = Field(max_length=24)
    dedup_key: str | None = Field(default=None, unique=True, max_length=300)
    """One run per workflow and trigger identity (e.g. fileId): a recording starts one run."""
    context: Any = _json(nullable=False)
    stream_id: str | None = Field(default=None, index=True, max_length=200)
    file_id: str | None = Field(default=None, index=True, max_length=200)
    trigger_event_id: int | None = None
    created_at: datetime = _time(nullable=False)
    updated_at: datetime = _time(nullable=False)
    finished_at: datetime | None = _time()
    deadline: datetime | None = _time()
    error: str | None = _text()


class StepRow(SQLModel, table=True):
    __tablename__ = "steps"

    run_id: str = Field(primary_key=True, foreign_key="runs.id", max_length=40)
    name: str = Field(primary_key=True, max_length=64)
    position: int
    kind: str = Field(max_length=16)
    status: str = Field(max_length=24)
    attempt: int = 0
    budget_from: int = 0
    sends: int = 0
    throttled: bool = False
    in_flight: bool = False
    request: Any = _json()
    started_at: datetime | None = _time()
    submitted_at: datetime | None = _time()
    finished_at: datetime | None = _time()
    retry_at: datetime | None = _time()
    deadline: datetime | None = _time()
    error: str | None = _text()
    error_class: str | None = Field(default=None, max_length=32)
    outputs: Any = _json()


class TaskRow(SQLModel, table=True):
    __tablename__ = "tasks"
    __table_args__ = (
        sa.Index("ix_tasks_run", "run_id"),
        sa.Index("ix_tasks_folded", "folded_id"),
        sa.Index("ix_tasks_poll_due", "next_poll_at", **pending_only("status", "waiting")),
    )

    task_id: str = Field(primary_key=True, max_length=200)
    """VOD's task ID exactly as VOD gave it; unique across runs."""
    folded_id: str = Field(max_length=200)
    """The ID with its type prefix lower-cased, for the case-insensitive fallback match."""
    run_id: str = Field(foreign_key="runs.id", max_length=40)
    step: str = Field(max_length=64)
    position: int
    """Order within the step (VOD's answer order), which output lists follow."""
    attempt: int
    kind: str = Field(max_length=40)
    awaited: bool = True
    status: str = Field(max_length=16)
    submitted_at: datetime = _time(nullable=False)
    expected_at: datetime = _time(nullable=False)
    finished_at: datetime | None = _time()
    error: str | None = _text()
    error_code: int | None = None
    outputs: Any = _json()
    next_poll_at: datetime | None = _time()
    polls: int = 0
    last_polled_at: datetime | None = _time()
    last_poll_status: str | None = Field(default=None, max_length=40)
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_until: datetime | None = _time()


class InboxEvent(SQLModel, table=True):
    __tablename__ = "inbox_events"
    __table_args__ = (
        sa.Index("ix_inbox_pending", "id", **pending_only("status", "pending")),
        sa.Index("ix_inbox_orphan_task", "task_id", **pending_only("status", "orphan")),
        sa.Index("ix_inbox_task", "task_id"),
        sa.Index("ix_inbox_received", "received_at"),
        sa.Index("ix_inbox_status_received", "status", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = _time(nullable=False)
    source: str = Field(max_length=16)
    event_type: str = Field(max_length=80)
    dedup_key: str | None = Field(default=None, unique=True, max_length=200)
    body: str = _text(nullable=False)
    status: str = Field(max_length=16)
    task_id: str | None = Field(default=None, max_length=200)
    file_id: str | None = Field(default=None, index=True, max_length=200)
    stream_id: str | None = Field(default=None, max_length=200)
    run_id: str | None = Field(default=None, index=True, max_length=40)
    note: str | None = _text()
    applied_at: datetime | None = _time()


class OutboxCommand(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (
        sa.Index("ix_outbox_due", "next_attempt_at", **pending_only("status", "pending")),
        sa.Index("ix_outbox_lease", "lease_until", **pending_only("status", "in_flight")),
        sa.Index("ix_outbox_run", "run_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=40)
    step: str = Field(max_length=64)
    attempt: int
    kind: str = Field(max_length=16)
    idempotency_key: str = Field(unique=True, max_length=200)
    payload: Any = _json(nullable=False)
    status: str = Field(max_length=16)
    tries: int = 0
    next_attempt_at: datetime = _time(nullable=False)
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_until: datetime | None = _time()
    last_error: str | None = _text()
    result: Any = _json()
    created_at: datetime = _time(nullable=False)
    done_at: datetime | None = _time()


class Timer(SQLModel, table=True):
    __tablename__ = "timers"
    __table_args__ = (
        sa.Index("ix_timers_due", "due_at", **pending_only("status", "pending")),
        sa.Index("ix_timers_run", "run_id", "step"),
        # Failed timers are rare and kept until an operator replays them: counted cheaply.
        sa.Index("ix_timers_failed", "id", **pending_only("status", "failed")),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=40)
    kind: str = Field(max_length=16)
    step: str | None = Field(default=None, max_length=64)
    attempt: int | None = None
    due_at: datetime = _time(nullable=False)
    status: str = Field(max_length=16)
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_until: datetime | None = _time()
    error: str | None = _text()
    """Why applying it failed (status ``failed``)."""


class HistoryRow(SQLModel, table=True):
    __tablename__ = "history"
    __table_args__ = (sa.Index("ix_history_run", "run_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=40)
    at: datetime = _time(nullable=False)
    input: str = Field(max_length=32)
    step: str | None = Field(default=None, max_length=64)
    from_status: str = Field(max_length=24)
    to_status: str = Field(max_length=24)
    reason: str = _text(nullable=False)
    detail: Any = _json()


class StreamWindow(SQLModel, table=True):
    """A stream.session trigger collecting one stream's recordings until it goes quiet."""

    __tablename__ = "stream_windows"
    __table_args__ = (
        sa.Index("ix_windows_closes", "closes_at", **pending_only("status", "open")),
        sa.Index("ix_windows_stream", "workflow", "stream_id"),
        sa.Index(
            "ux_windows_open",
            "workflow",
            "stream_id",
            unique=True,
            **pending_only("status", "open"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    workflow: str = Field(max_length=64)
    stream_id: str = Field(max_length=200)
    status: str = Field(max_length=16)
    opened_at: datetime = _time(nullable=False)
    last_activity_at: datetime = _time(nullable=False)
    closes_at: datetime = _time(nullable=False)
    segments: Any = _json(nullable=False)
    run_id: str | None = Field(default=None, max_length=40)
    version: str | None = Field(default=None, max_length=32)
    """The workflow's version when the session opened: the one its run runs (none for a
    session opened before vodflow recorded it)."""
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_until: datetime | None = _time()


class SweeperJob(SQLModel, table=True):
    """Each replica's sweeper jobs' heartbeats, so a job that stopped running on one replica is
    noticed even while another replica runs the same job."""

    __tablename__ = "sweeper_jobs"

    name: str = Field(primary_key=True, max_length=64)
    replica: str = Field(primary_key=True, max_length=120)
    """The process running the job (``host:port`` of ``vodflow serve``)."""
    sweeper_started_at: datetime | None = _time()
    """When that replica's sweeper started: the stall clock starts no earlier."""
    interval_seconds: float
    last_started_at: datetime | None = _time()
    last_success_at: datetime | None = _time()
    last_error: str | None = _text()
    last_findings: Any = _json()
    successes: int = 0
    failures: int = 0


class ClaimRow(SQLModel, table=True):
    """A role only one process on the database may hold (the embedded engine), with a lease its
    holder renews; a holder that stops renewing loses it when the lease runs out."""

    __tablename__ = "claims"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=200)
    """Where the holder serves (``host:port``), for people."""
    lease_owner: str = Field(max_length=80)
    """The holding process (``host:pid:random``): renewals and releases match on it."""
    claimed_at: datetime = _time(nullable=False)
    lease_until: datetime = _time(nullable=False)


class RateBucket(SQLModel, table=True):
    """One VOD quota (account and action) shared by every process using this database."""

    __tablename__ = "rate_buckets"

    key: str = Field(primary_key=True, max_length=120)
    calls: Any = _json(nullable=False)
    """Unix times (float seconds) of the calls made in the current window, oldest first."""
    blocked_until: float = 0.0
    """Set when VOD answered with its frequency limit: nobody calls before this."""


# --- the embedded VOD engine ---------------------------------------------------------------------


class EngineFile(SQLModel, table=True):
    """A media file the embedded engine holds: uploaded, or made by a clip or concat task."""

    __tablename__ = "engine_files"
    __table_args__ = (sa.Index("ix_engine_files_stream", "stream_id", "record_start"),)

    file_id: str = Field(primary_key=True, max_length=32)
    name: str = _text(nullable=False)
    path: str = _text(nullable=False)
    """Relative to the engine's media directory."""
    container: str = Field(max_length=32)
    size: int = Field(sa_type=sa.BigInteger)
    duration: float
    md5: str | None = Field(default=None, max_length=32)
    meta: Any = _json(nullable=False)
    """VOD's metaData object for the file, as GetVideoInfo and ProcedureStateChanged show it."""
    source_type: str = Field(max_length=32)
    stream_id: str | None = Field(default=None, max_length=200)
    record_start: int | None = Field(default=None, sa_type=sa.BigInteger)
    record_end: int | None = Field(default=None, sa_type=sa.BigInteger)
    created_at: datetime = _time(nullable=False)


class EngineTask(SQLModel, table=True):
    """A procedure and each of its tasks (clip, concat, transcode, sprites, snapshots)."""

    __tablename__ = "engine_tasks"
    __table_args__ = (
        sa.Index("ix_engine_tasks_procedure", "procedure_id", "stage"),
        sa.Index("ix_engine_tasks_status", "status", "created_at"),
        sa.Index("ix_engine_tasks_file", "file_id"),
    )

    task_id: str = Field(primary_key=True, max_length=120)
    kind: str = Field(max_length=32)
    procedure_id: str = Field(max_length=120)
    """The procedure task this belongs to; a procedure row names itself."""
    stage: int
    """Order of execution: clips 0, concat 1, the procedure's tasks 2 (the procedure row -1)."""
    position: int
    status: str = Field(max_length=16)
    file_id: str | None = Field(default=None, max_length=32)
    procedure: str | None = Field(default=None, max_length=120)
    params: Any = _json(nullable=False)
    dedup_key: str | None = Field(default=None, unique=True, max_length=120)
    """Set while a procedure is unfinished: the same request cannot be queued twice (50005)."""
    err_code: int | None = None
    message: str | None = _text()
    result: Any = _json()
    """The data object of the task's VOD 4.0 event (GetTaskInfo's data)."""
    output: Any = _json()
    """The task's processTaskList entry in its procedure's ProcedureStateChanged."""
    detail: Any = _json()
    attempts: int = 0
    created_at: datetime = _time(nullable=False)
    begun_at: datetime | None = _time()
    finished_at: datetime | None = _time()
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_until: datetime | None = _time()


class EngineEvent(SQLModel, table=True):
    """A VOD 4.0 event the engine sends: pushed to the callback URL, and pullable until
    confirmed."""

    __tablename__ = "engine_events"
    __table_args__ = (
        sa.Index("ix_engine_events_push", "next_push_at", **pending_only("push_status", "pending")),
        sa.Index("ix_engine_events_pull", "visible_at", **pending_only("pull_status", "pending")),
        sa.Index("ix_engine_events_task", "task_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    msg_handle: str = Field(unique=True, max_length=32)
    task_id: str = Field(max_length=120)
    """The task the event reports on (for NewFileUpload: the new file's ID)."""
    event_type: str = Field(max_length=64)
    body: Any = _json(nullable=False)
    created_at: datetime = _time(nullable=False)
    push_status: str = Field(max_length=16)
    """pending (to send), delivered, or off (pull-only)."""
    push_attempts: int = 0
    next_push_at: datetime | None = _time()
    push_error: str | None = _text()
    delivered_at: datetime | None = _time()
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_until: datetime | None = _time()
    pull_status: str = Field(max_length=16)
    """pending until a ConfirmEvent names the msgHandle, then confirmed."""
    visible_at: datetime = _time(nullable=False)
    confirmed_at: datetime | None = _time()


class EngineNonce(SQLModel, table=True):
    """A Nonce seen from a SecretId, kept as long as its request's Timestamp could be fresh."""

    __tablename__ = "engine_nonces"
    __table_args__ = (sa.Index("ix_engine_nonces_seen", "seen_at"),)

    secret_id: str = Field(primary_key=True, max_length=120)
    nonce: str = Field(primary_key=True, max_length=40)
    seen_at: float


metadata = SQLModel.metadata
