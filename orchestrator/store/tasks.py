"""VOD tasks as the correlation index (which run waits for a task ID) and the sweep's poll list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.store.sql import lit
from orchestrator.store.tables import Run, TaskRow
from orchestrator.vod.events import normalize_task_id

tasks = TaskRow.__table__  # type: ignore[attr-defined]
runs = Run.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TaskOwner:
    task_id: str
    """The ID as vodflow stored it (which may differ in case from the event's)."""
    run_id: str
    step: str
    exact: bool


async def find_task(conn: AsyncConnection, task_id: str) -> TaskOwner | None:
    """The run that recorded this task ID: exactly, else by the case-folded prefix."""
    row = (
        await conn.execute(
            sa.select(tasks.c.task_id, tasks.c.run_id, tasks.c.step).where(
                tasks.c.task_id == task_id
            )
        )
    ).first()
    if row is not None:
        return TaskOwner(row.task_id, row.run_id, row.step, exact=True)
    row = (
        await conn.execute(
            sa.select(tasks.c.task_id, tasks.c.run_id, tasks.c.step)
            .where(tasks.c.folded_id == normalize_task_id(task_id))
            .limit(1)
        )
    ).first()
    if row is not None:
        return TaskOwner(row.task_id, row.run_id, row.step, exact=False)
    return None


async def claim_due_polls(
    conn: AsyncConnection, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[dict[str, Any]]:
    """Unfinished tasks whose expected time has passed, leased to ``owner`` for one query."""
    rows = (
        (
            await conn.execute(
                sa.select(tasks)
                .where(
                    tasks.c.status == lit("waiting"),
                    tasks.c.next_poll_at <= now,
                    sa.or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now),
                )
                .order_by(tasks.c.next_poll_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .mappings()
        .all()
    )
    if rows:
        await conn.execute(
            tasks.update()
            .where(tasks.c.task_id.in_([r["task_id"] for r in rows]))
            .values(lease_owner=owner, lease_until=now + lease)
        )
    return [dict(r) for r in rows]


async def record_poll(
    conn: AsyncConnection,
    task_id: str,
    *,
    now: datetime,
    status: str,
    next_poll_at: datetime | None,
) -> None:
    await conn.execute(
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
