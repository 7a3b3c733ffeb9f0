"""The sweeper's heartbeats: when each replica's jobs last started and last succeeded.

One row per job and replica: several replicas sharing a database each run every job, and one
replica's successes must not hide another's job that hung.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator.store.sql import insert_ignore
from orchestrator.store.tables import SweeperJob

jobs = SweeperJob.__table__  # type: ignore[attr-defined]


def _one(name: str, replica: str) -> sa.ColumnElement[bool]:
    return sa.and_(jobs.c.name == name, jobs.c.replica == replica)


def job_started(
    conn: sa.Connection,
    name: str,
    interval: float,
    now: datetime,
    *,
    replica: str,
    sweeper_started_at: datetime | None = None,
) -> None:
    conn.execute(
        insert_ignore(conn, jobs, ["name", "replica"]).values(
            name=name, replica=replica, interval_seconds=interval, successes=0, failures=0
        )
    )
    conn.execute(
        jobs.update()
        .where(_one(name, replica))
        .values(
            last_started_at=now,
            interval_seconds=interval,
            sweeper_started_at=sweeper_started_at,
        )
    )


def job_finished(
    conn: sa.Connection,
    name: str,
    now: datetime,
    *,
    replica: str,
    findings: dict[str, int] | None = None,
    error: str | None = None,
) -> None:
    if error is None:
        values: dict[str, Any] = {
            "last_success_at": now,
            "last_findings": findings or {},
            "successes": jobs.c.successes + 1,
        }
    else:
        values = {"last_error": error[:2000], "failures": jobs.c.failures + 1}
    conn.execute(jobs.update().where(_one(name, replica)).values(**values))


def all_jobs(conn: sa.Connection) -> list[dict[str, Any]]:
    """Every replica's jobs, by replica then name."""
    query = sa.select(jobs).order_by(jobs.c.replica, jobs.c.name)
    return [dict(r) for r in conn.execute(query).mappings()]


def forget_replica(conn: sa.Connection, replica: str) -> int:
    """A replica that stopped cleanly: its heartbeats say nothing any more."""
    return int(conn.execute(jobs.delete().where(jobs.c.replica == replica)).rowcount or 0)


def forget_silent(conn: sa.Connection, before: datetime) -> int:
    """Forget replicas none of whose jobs has started since ``before`` (gone without stopping
    cleanly: killed, or their machine lost)."""
    heard = sa.select(jobs.c.replica).where(jobs.c.last_started_at >= before)
    result = conn.execute(jobs.delete().where(jobs.c.replica.not_in(heard.scalar_subquery())))
    return int(result.rowcount or 0)
