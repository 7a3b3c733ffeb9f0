"""The shared VOD quota's rows: read and update one bucket under its row lock."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from orchestrator.store.sql import insert_ignore
from orchestrator.store.tables import RateBucket

buckets = RateBucket.__table__  # type: ignore[attr-defined]
T = TypeVar("T")


def update_bucket(
    conn: sa.Connection,
    key: str,
    change: Callable[[list[float], float], tuple[list[float], float, T]],
) -> T:
    """Apply ``change(calls, blocked_until) -> (calls, blocked_until, result)`` atomically.

    The row is locked (FOR UPDATE on PostgreSQL; SQLite's write transactions are already
    exclusive), so concurrent processes see each other's calls.
    """
    conn.execute(insert_ignore(conn, buckets, ["key"]).values(key=key, calls=[], blocked_until=0.0))
    row = (
        conn.execute(
            sa.select(buckets.c.calls, buckets.c.blocked_until)
            .where(buckets.c.key == key)
            .with_for_update()
        )
    ).one()
    calls, blocked, result = change(list(row.calls or []), float(row.blocked_until))
    conn.execute(
        buckets.update().where(buckets.c.key == key).values(calls=calls, blocked_until=blocked)
    )
    return result


def bucket_usage(conn: sa.Connection, key: str) -> tuple[list[float], float]:
    row = (
        conn.execute(
            sa.select(buckets.c.calls, buckets.c.blocked_until).where(buckets.c.key == key)
        )
    ).first()
    if row is None:
        return [], 0.0
    return list(row.calls or []), float(row.blocked_until)
