"""The sweeper's heartbeats: when each job last started and last succeeded."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator.store.sql import insert_ignore
from orchestrator.store.tables import SweeperJob

jobs = SweeperJob.__table__  # type: ignore[attr-defined]


def job_started(conn: sa.Connection, name: str, interval: float, now: datetime) -> None:
    conn.execute(
        insert_ignore(conn, jobs, ["name"]).values(
            name=name, interval_seconds=interval, successes=0, failures=0
        )
    )
    conn.execute(
        jobs.update()
        .where(jobs.c.name == name)
        .values(last_started_at=now, interval_seconds=interval)
    )


def job_finished(
    conn: sa.Connection,
    name: str,
    now: datetime,
    *,
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
    conn.execute(jobs.update().where(jobs.c.name == name).values(**values))


def all_jobs(conn: sa.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in (conn.execute(sa.select(jobs).order_by(jobs.c.name))).mappings()]
