"""Read models for the dashboard, the CLI and tests: runs, steps, tasks, history, inbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.store.tables import (
    HistoryRow,
    InboxEvent,
    Run,
    StepRow,
    StreamWindow,
    TaskRow,
    Timer,
)

runs = Run.__table__  # type: ignore[attr-defined]
steps = StepRow.__table__  # type: ignore[attr-defined]
tasks = TaskRow.__table__  # type: ignore[attr-defined]
history = HistoryRow.__table__  # type: ignore[attr-defined]
inbox = InboxEvent.__table__  # type: ignore[attr-defined]
timers = Timer.__table__  # type: ignore[attr-defined]
windows = StreamWindow.__table__  # type: ignore[attr-defined]

_TIMER_COLUMNS = (
    *(timers.c.id, timers.c.run_id, timers.c.kind, timers.c.step, timers.c.attempt),
    *(timers.c.due_at, timers.c.status, timers.c.error),
)


def run_detail(conn: sa.Connection, run_id: str) -> dict[str, Any] | None:
    row = (conn.execute(sa.select(runs).where(runs.c.id == run_id))).mappings().first()
    if row is None:
        return None
    step_rows = (
        conn.execute(sa.select(steps).where(steps.c.run_id == run_id).order_by(steps.c.position))
    ).mappings()
    task_rows = (
        conn.execute(sa.select(tasks).where(tasks.c.run_id == run_id).order_by(tasks.c.position))
    ).mappings()
    by_step: dict[str, list[dict[str, Any]]] = {}
    for task in task_rows:
        by_step.setdefault(task["step"], []).append(dict(task))
    entries = (
        conn.execute(sa.select(history).where(history.c.run_id == run_id).order_by(history.c.id))
    ).mappings()
    events = (
        conn.execute(
            sa.select(
                inbox.c.id,
                inbox.c.received_at,
                inbox.c.source,
                inbox.c.event_type,
                inbox.c.status,
                inbox.c.task_id,
                inbox.c.note,
            )
            .where(inbox.c.run_id == run_id)
            .order_by(inbox.c.id)
        )
    ).mappings()
    run_timers = conn.execute(
        sa.select(*_TIMER_COLUMNS)
        .where(timers.c.run_id == run_id)
        .order_by(timers.c.due_at, timers.c.id)
    ).mappings()
    return {
        **dict(row),
        "steps": [{**dict(s), "tasks": by_step.get(s["name"], [])} for s in step_rows],
        "history": [dict(h) for h in entries],
        "events": [dict(e) for e in events],
        "timers": [dict(t) for t in run_timers],
    }


def step_names(conn: sa.Connection, run_id: str) -> list[str] | None:
    """A run's step names in order, or None when there is no such run."""
    names = list(
        conn.execute(
            sa.select(steps.c.name).where(steps.c.run_id == run_id).order_by(steps.c.position)
        ).scalars()
    )
    if names or conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first():
        return names
    return None


def list_timers(
    conn: sa.Connection,
    *,
    status: list[str] | None = None,
    run_id: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Timers, newest first; ``before`` is the id cursor of the last row of a page."""
    query = sa.select(*_TIMER_COLUMNS)
    return _newest_first(conn, query, timers, status, {"run_id": run_id}, before, limit)


SESSION_STATUSES = ("open", "closed", "cancelled")
_SESSION_COLUMNS = tuple(c for c in windows.c if not c.name.startswith("lease_"))
"""A session as the API shows it: all but the sweeper's lease."""


def list_sessions(
    conn: sa.Connection,
    *,
    status: list[str] | None = None,
    workflow: str | None = None,
    stream_id: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """stream.session windows, newest first: open ones collecting a stream's recordings until
    it has been quiet, closed ones with the run they started."""
    query = sa.select(*_SESSION_COLUMNS)
    equal = {"workflow": workflow, "stream_id": stream_id}
    return _newest_first(conn, query, windows, status, equal, before, limit)


def session(conn: sa.Connection, session_id: int) -> dict[str, Any] | None:
    query = sa.select(*_SESSION_COLUMNS).where(windows.c.id == session_id)
    row = conn.execute(query).mappings().first()
    return dict(row) if row else None


def timer(conn: sa.Connection, timer_id: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(*_TIMER_COLUMNS).where(timers.c.id == timer_id)).mappings().first()
    return dict(row) if row else None


def _late(now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """A task the run waits on, past its expected time: what makes a run ``overdue``.

    Only a task of the attempt its step awaits: VOD may never report on a task of an attempt that
    timed out (its step retried) or of a run that ended (cancelled, failed), and such a task stays
    ``waiting``, but nothing waits on it any more."""
    awaiting = sa.exists().where(
        steps.c.run_id == tasks.c.run_id,
        steps.c.name == tasks.c.step,
        steps.c.attempt == tasks.c.attempt,
        steps.c.status == "awaiting_callback",
    )
    return (
        tasks.c.status == "waiting",
        tasks.c.awaited.is_(True),
        tasks.c.expected_at < now,
        awaiting,
    )


def _overdue(now: datetime) -> sa.ColumnElement[bool]:
    """The run waits on a task past its expected time (the health ``overdue``)."""
    return sa.exists().where(tasks.c.run_id == runs.c.id, *_late(now))


def _throttled() -> sa.ColumnElement[bool]:
    """The run's current step (its first that has not succeeded) waits because VOD throttled it:
    a retrying run is ``retrying`` then, and ``failing`` otherwise."""
    later = steps.alias("later")
    current = (
        sa.select(sa.func.min(later.c.position))
        .where(later.c.run_id == runs.c.id, later.c.status != "succeeded")
        .scalar_subquery()
    )
    return sa.exists().where(
        steps.c.run_id == runs.c.id, steps.c.position == current, steps.c.throttled.is_(True)
    )


def health_is(health: str, now: datetime) -> sa.ColumnElement[bool]:
    """Runs with this health that is not a status of its own (``overdue``, ``failing``), as the
    dashboard derives it from the run, its tasks and its current step."""
    if health == "overdue":
        return sa.and_(runs.c.status == "awaiting_callback", _overdue(now))
    if health == "failing":
        return sa.and_(runs.c.status == "retrying", ~_throttled())
    raise ValueError(f"health {health!r}: expected overdue or failing")


def list_runs(
    conn: sa.Connection,
    *,
    workflow: str | None = None,
    status: list[str] | None = None,
    health: list[str] | None = None,
    now: datetime | None = None,
    stream_id: str | None = None,
    file_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first; ``before`` is the (created_at, id) cursor of the last row of a page. Runs
    with any of the statuses or any of the healths (``overdue``, ``failing``, as of ``now``) when
    either is given."""
    query = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
    if workflow:
        query = query.where(runs.c.workflow == workflow)
    wanted = [runs.c.status.in_(status)] if status else []
    if health:
        when = now if now is not None else datetime.now(UTC)
        wanted += [health_is(h, when) for h in health]
    if wanted:
        query = query.where(sa.or_(*wanted))
    if stream_id:
        query = query.where(runs.c.stream_id == stream_id)
    if file_id:
        query = query.where(runs.c.file_id == file_id)
    if since:
        query = query.where(runs.c.created_at >= since)
    if until:
        query = query.where(runs.c.created_at < until)
    if before:
        at, run_id = before
        query = query.where(
            sa.or_(runs.c.created_at < at, sa.and_(runs.c.created_at == at, runs.c.id < run_id))
        )
    return [dict(r) for r in (conn.execute(query)).mappings()]


def run_by_dedup_key(conn: sa.Connection, dedup_key: str) -> tuple[str, Any] | None:
    """The run started under this dedup key, and its trigger context."""
    row = conn.execute(
        sa.select(runs.c.id, runs.c.context).where(runs.c.dedup_key == dedup_key)
    ).first()
    return None if row is None else (str(row.id), row.context)


def inbox_counts(conn: sa.Connection) -> dict[str, int]:
    rows = conn.execute(sa.select(inbox.c.status, sa.func.count()).group_by(inbox.c.status))
    return {status: int(count) for status, count in rows}


def list_inbox(
    conn: sa.Connection,
    *,
    status: list[str] | None = None,
    source: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
    file_id: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Inbox events, newest first; ``before`` is the id cursor of the last row of a page. Each
    of the run, task and file filters reads an index, so a page costs the same in a large inbox."""
    equal = {"source": source, "run_id": run_id, "task_id": task_id, "file_id": file_id}
    return _newest_first(conn, sa.select(inbox), inbox, status, equal, before, limit)


def _newest_first(
    conn: sa.Connection,
    query: sa.Select[Any],
    table: sa.Table,
    status: list[str] | None,
    equal: dict[str, str | None],
    before: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """A page of ``query`` over ``table``, newest (highest id) first: rows with one of the
    statuses (when given), each column of ``equal`` with a value equal to it, and ids below the
    cursor ``before``."""
    query = query.order_by(table.c.id.desc()).limit(limit)
    if status:
        query = query.where(table.c.status.in_(status))
    for column, value in equal.items():
        if value:
            query = query.where(table.c[column] == value)
    if before is not None:
        query = query.where(table.c.id < before)
    return [dict(r) for r in conn.execute(query).mappings()]


def inbox_event(conn: sa.Connection, event_id: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(inbox).where(inbox.c.id == event_id)).mappings().first()
    return dict(row) if row else None


def overdue_runs(conn: sa.Connection, run_ids: list[str], now: datetime) -> set[str]:
    """Which of these runs wait on a task past its expected time."""
    if not run_ids:
        return set()
    rows = conn.execute(
        sa.select(tasks.c.run_id).where(tasks.c.run_id.in_(run_ids), *_late(now)).distinct()
    )
    return {r[0] for r in rows}


def current_steps(conn: sa.Connection, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each run's first step that has not succeeded (what the run is doing or stuck on)."""
    if not run_ids:
        return {}
    rows = conn.execute(
        sa.select(steps)
        .where(steps.c.run_id.in_(run_ids), steps.c.status != "succeeded")
        .order_by(steps.c.run_id, steps.c.position)
    ).mappings()
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(row["run_id"], dict(row))
    return out


def stats(conn: sa.Connection, now: datetime) -> dict[str, Any]:
    """Counts and recent durations for the dashboard's overview."""
    by_status = {
        status: int(count)
        for status, count in conn.execute(
            sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
        )
    }
    stalled = conn.execute(sa.select(sa.func.count()).where(*_late(now))).scalar_one()
    oldest_inbox = conn.execute(
        sa.select(inbox.c.received_at)
        .where(inbox.c.status == "pending")
        .order_by(inbox.c.id)
        .limit(1)
    ).scalar()
    minute_ago = now - timedelta(minutes=1)
    per_minute = conn.execute(
        sa.select(sa.func.count()).where(
            inbox.c.received_at >= minute_ago, inbox.c.source.in_(["vod", "lvb", "pull"])
        )
    ).scalar_one()
    day_ago = now - timedelta(days=1)
    step_rows = conn.execute(
        sa.select(steps.c.started_at, steps.c.finished_at)
        .where(steps.c.status == "succeeded", steps.c.finished_at >= day_ago)
        .limit(10_000)
    ).all()
    hour_ago = now - timedelta(hours=1)
    lag_rows = conn.execute(
        sa.select(inbox.c.received_at, inbox.c.applied_at)
        .where(
            inbox.c.applied_at >= hour_ago,
            inbox.c.status == "applied",
            inbox.c.task_id.is_not(None),
        )
        .limit(10_000)
    ).all()
    open_sessions = conn.execute(
        sa.select(sa.func.count()).where(windows.c.status == "open")
    ).scalar_one()
    return {
        "open_sessions": int(open_sessions),
        "runs_by_status": by_status,
        "stalled_tasks": int(stalled),
        "oldest_pending_seconds": (now - oldest_inbox).total_seconds() if oldest_inbox else None,
        "callbacks_per_minute": int(per_minute),
        "step_seconds": [(f - s).total_seconds() for s, f in step_rows if s and f],
        "callback_lag_seconds": [(a - r).total_seconds() for r, a in lag_rows if a and r],
        **queue_depths(conn),
    }


def queue_depths(conn: sa.Connection) -> dict[str, Any]:
    """Inbox events waiting, by status, and outbox commands not done (cheap: for the gauges)."""
    depth = {
        status: int(count)
        for status, count in conn.execute(
            sa.select(inbox.c.status, sa.func.count())
            .where(inbox.c.status.in_(["pending", "orphan", "failed", "invalid"]))
            .group_by(inbox.c.status)
        )
    }
    outbox_pending = conn.execute(
        sa.text("SELECT count(*) FROM outbox WHERE status IN ('pending', 'in_flight')")
    ).scalar_one()
    failed_timers = conn.execute(
        sa.text("SELECT count(*) FROM timers WHERE status = 'failed'")  # ix_timers_failed
    ).scalar_one()
    return {
        "inbox": depth,
        "outbox_pending": int(outbox_pending),
        "failed_timers": int(failed_timers),
    }


def history_since(conn: sa.Connection, after: int, limit: int = 200) -> list[dict[str, Any]]:
    """History entries after ``after`` (by id), with their run's workflow and status (for SSE)."""
    rows = conn.execute(
        sa.select(
            history.c.id,
            history.c.run_id,
            history.c.at,
            history.c.input,
            history.c.step,
            history.c.from_status,
            history.c.to_status,
            history.c.reason,
            runs.c.workflow,
        )
        .join(runs, runs.c.id == history.c.run_id)
        .where(history.c.id > after)
        .order_by(history.c.id)
        .limit(limit)
    ).mappings()
    return [dict(r) for r in rows]


def last_history_id(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(history.c.id), 0))).scalar_one())


def run_counts(conn: sa.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for workflow, status, count in conn.execute(
        sa.select(runs.c.workflow, runs.c.status, sa.func.count()).group_by(
            runs.c.workflow, runs.c.status
        )
    ):
        out.setdefault(workflow, {})[status] = int(count)
    return out
