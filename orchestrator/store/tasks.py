"""VOD tasks as the correlation index (which run waits for a task ID) and the sweep's poll list."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.store import driver
from orchestrator.store.sql import lit
from orchestrator.store.tables import InboxEvent, Run, TaskRow
from orchestrator.vod.events import PROCEDURE_EVENT, normalize_task_id

tasks = TaskRow.__table__  # type: ignore[attr-defined]
runs = Run.__table__  # type: ignore[attr-defined]
inbox = InboxEvent.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TaskOwner:
    task_id: str
    """The ID as vodflow stored it (which may differ in case from the event's)."""
    run_id: str
    step: str
    exact: bool


def find_task(conn: sa.Connection, task_id: str) -> TaskOwner | None:
    """The run that recorded this task ID: exactly, else by the case-folded prefix."""
    return find_tasks(conn, [task_id]).get(task_id)


_OWNER_COLUMNS = ("task_id", "run_id", "step")


def find_tasks(conn: sa.Connection, task_ids: Collection[str]) -> dict[str, TaskOwner]:
    """``find_task`` for many IDs in (at most) two queries; unknown IDs are left out.

    On the hot path (every group of task callbacks), so read through ``driver``."""
    found = {
        row["task_id"]: TaskOwner(row["task_id"], row["run_id"], row["step"], exact=True)
        for row in driver.select_where_in(conn, tasks, "task_id", task_ids, columns=_OWNER_COLUMNS)
    }
    missing = {normalize_task_id(t): t for t in task_ids if t not in found}
    if missing:
        folded = (*_OWNER_COLUMNS, "folded_id")
        for row in driver.select_where_in(conn, tasks, "folded_id", missing, columns=folded):
            asked = missing[row["folded_id"]]
            owner = TaskOwner(row["task_id"], row["run_id"], row["step"], exact=False)
            found.setdefault(asked, owner)
    return found


@dataclass(frozen=True)
class FileEvent:
    """An event of a file that was recorded against the run that recorded its task ID."""

    file_id: str
    event_type: str
    task_id: str
    """The ID as vodflow stored it."""
    run_id: str
    step: str
    kind: str
    """The kind of the task vodflow recorded (``procedure`` for a procedure's own ID)."""
    body: str | None
    """Only for procedure events, whose sub-tasks' IDs are in it."""


def recorded_events_of_files(conn: sa.Connection, file_ids: Collection[str]) -> list[FileEvent]:
    """The task events of these files that reached the run owning their task (applied, late or
    ignored as duplicates), for correlating by fileId what no run recorded the ID of."""
    if not file_ids:
        return []
    procedure = inbox.c.event_type == lit(PROCEDURE_EVENT)
    rows = conn.execute(
        sa.select(
            inbox.c.file_id,
            inbox.c.event_type,
            tasks.c.task_id,
            tasks.c.run_id,
            tasks.c.step,
            tasks.c.kind,
            sa.case((procedure, inbox.c.body), else_=sa.null()).label("body"),
        )
        .join(tasks, tasks.c.task_id == inbox.c.task_id)
        .where(
            inbox.c.file_id.in_(list(file_ids)),
            inbox.c.status.in_([lit("applied"), lit("late"), lit("ignored")]),
        )
        .order_by(inbox.c.id)
    )
    return [
        FileEvent(
            str(r.file_id),
            str(r.event_type),
            str(r.task_id),
            str(r.run_id),
            str(r.step),
            str(r.kind),
            r.body,
        )
        for r in rows
    ]


def claim_due_polls(
    conn: sa.Connection, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[dict[str, Any]]:
    """Unfinished tasks whose expected time has passed, leased to ``owner`` for one query.

    Read and leased straight on the driver (``store.driver``): a sweep handles hundreds of rows,
    and the status stays a literal in the SQL so the partial index serves it on PostgreSQL too.
    """
    at = driver.to_driver(conn, tasks.c.next_poll_at, now)
    rows = driver.select(
        conn,
        tasks,
        "status = 'waiting' AND next_poll_at <= ? AND (lease_until IS NULL OR lease_until < ?)",
        (at, at),
        order_by=("next_poll_at",),
        limit=limit,
        skip_locked=True,
    )
    until = now + lease
    driver.update_many(
        conn,
        tasks,
        ["task_id"],
        [{"task_id": r["task_id"], "lease_owner": owner, "lease_until": until} for r in rows],
    )
    for row in rows:
        row.update(lease_owner=owner, lease_until=until)
    return rows


def renew_poll_leases(
    conn: sa.Connection, owner: str, task_ids: Collection[str], now: datetime, lease: timedelta
) -> list[str]:
    """Extend to ``now + lease`` the query leases ``owner`` still holds among these tasks (a
    sweep whose queries wait on VOD's quota outlasts one lease); returns the tasks it holds."""
    if not task_ids:
        return []
    return [
        str(task_id)
        for task_id in conn.execute(
            tasks.update()
            .where(
                tasks.c.task_id.in_(list(task_ids)),
                tasks.c.status == sa.literal_column("'waiting'"),
                tasks.c.lease_owner == owner,
            )
            .values(lease_until=now + lease)
            .returning(tasks.c.task_id)
        ).scalars()
    ]


def record_poll(
    conn: sa.Connection,
    task_id: str,
    *,
    now: datetime,
    status: str,
    next_poll_at: datetime | None,
) -> None:
    conn.execute(
        tasks.update()
        .where(tasks.c.task_id == task_id)
        .values(
            polls=tasks.c.polls + 1,
            last_polled_at=now,
            last_poll_status=status[:40],
            next_poll_at=next_poll_at,
            lease_owner=None,
            lease_until=None,
        )
    )
