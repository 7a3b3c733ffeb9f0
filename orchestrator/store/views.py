"""Read models for the dashboard, the CLI and tests: runs, steps, tasks, history, inbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator.store.tables import HistoryRow, InboxEvent, Run, StepRow, TaskRow

runs = Run.__table__  # type: ignore[attr-defined]
steps = StepRow.__table__  # type: ignore[attr-defined]
tasks = TaskRow.__table__  # type: ignore[attr-defined]
history = HistoryRow.__table__  # type: ignore[attr-defined]
inbox = InboxEvent.__table__  # type: ignore[attr-defined]


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
    return {
        **dict(row),
        "steps": [{**dict(s), "tasks": by_step.get(s["name"], [])} for s in step_rows],
        "history": [dict(h) for h in entries],
        "events": [dict(e) for e in events],
    }


def list_runs(
    conn: sa.Connection,
    *,
    workflow: str | None = None,
    status: list[str] | None = None,
    stream_id: str | None = None,
    file_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first; ``before`` is the (created_at, id) cursor of the last row of a page."""
    query = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
    if workflow:
        query = query.where(runs.c.workflow == workflow)
    if status:
        query = query.where(runs.c.status.in_(status))
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


def run_by_dedup_key(conn: sa.Connection, dedup_key: str) -> str | None:
    run_id: str | None = (
        conn.execute(sa.select(runs.c.id).where(runs.c.dedup_key == dedup_key))
    ).scalar()
    return run_id


def inbox_counts(conn: sa.Connection) -> dict[str, int]:
    rows = conn.execute(sa.select(inbox.c.status, sa.func.count()).group_by(inbox.c.status))
    return {status: int(count) for status, count in rows}
