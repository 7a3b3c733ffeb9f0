"""stream.session windows: a stream's recordings collected until the stream has been quiet."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.store.sql import lit
from orchestrator.store.tables import StreamWindow

windows = StreamWindow.__table__  # type: ignore[attr-defined]
OPEN = sa.text("status = 'open'")


async def add_segment(
    conn: AsyncConnection,
    *,
    workflow: str,
    stream_id: str,
    segment: dict[str, JsonValue],
    now: datetime,
    quiet: timedelta,
    max_length: timedelta,
) -> tuple[int, bool]:
    """Add a recording to the stream's open window (opening one). Returns (window id, added)."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(windows)
    await conn.execute(
        insert.values(
            workflow=workflow,
            stream_id=stream_id,
            status="open",
            opened_at=now,
            last_activity_at=now,
            closes_at=now + quiet,
            segments=[],
        ).on_conflict_do_nothing(index_elements=["workflow", "stream_id"], index_where=OPEN)
    )
    row = (
        (
            await conn.execute(
                sa.select(windows)
                .where(
                    windows.c.workflow == workflow,
                    windows.c.stream_id == stream_id,
                    windows.c.status == lit("open"),
                )
                .with_for_update()
            )
        )
        .mappings()
        .one()
    )
    segments: list[dict[str, Any]] = list(row["segments"] or [])
    added = all(s.get("fileId") != segment.get("fileId") for s in segments)
    if added:
        segments.append(segment)
    closes = min(now + quiet, row["opened_at"] + max_length)
    await conn.execute(
        windows.update()
        .where(windows.c.id == row["id"])
        .values(segments=segments, last_activity_at=now, closes_at=closes)
    )
    return int(row["id"]), added


async def touch_stream(
    conn: AsyncConnection, stream_id: str, now: datetime, quiet: dict[str, timedelta]
) -> int:
    """Stream activity without a recording (the stream ended): open windows wait ``quiet`` more."""
    rows = (
        await conn.execute(
            sa.select(windows.c.id, windows.c.workflow, windows.c.opened_at).where(
                windows.c.stream_id == stream_id, windows.c.status == lit("open")
            )
        )
    ).all()
    for row in rows:
        wait = quiet.get(row.workflow)
        if wait is None:
            continue
        await conn.execute(
            windows.update()
            .where(windows.c.id == row.id)
            .values(last_activity_at=now, closes_at=now + wait)
        )
    return len(rows)


async def claim_due_windows(
    conn: AsyncConnection, now: datetime, limit: int
) -> list[dict[str, Any]]:
    """Open windows whose quiet period is over, locked for the caller's transaction."""
    rows = (
        (
            await conn.execute(
                sa.select(windows)
                .where(windows.c.status == lit("open"), windows.c.closes_at <= now)
                .order_by(windows.c.closes_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]


async def close_window(conn: AsyncConnection, window_id: int, run_id: str | None) -> None:
    await conn.execute(
        windows.update().where(windows.c.id == window_id).values(status="closed", run_id=run_id)
    )
