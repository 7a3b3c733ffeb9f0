"""stream.session windows: a stream's recordings collected until the stream has been quiet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.dialects import postgresql, sqlite

from orchestrator.store.sql import lit
from orchestrator.store.tables import StreamWindow

windows = StreamWindow.__table__  # type: ignore[attr-defined]
OPEN = sa.text("status = 'open'")


@dataclass(frozen=True)
class Collected:
    """What became of a recording announced to a stream session."""

    window_id: int
    added: bool
    """False: announced before, in the same window (what the later one knows is filled in), or
    in an ended one (``ended``)."""
    ended: str | None = None
    """The status (closed, cancelled) of the ended session that held the recording already:
    it is not collected again, so it starts no second run."""


def add_segment(
    conn: sa.Connection,
    *,
    workflow: str,
    stream_id: str,
    segment: dict[str, JsonValue],
    now: datetime,
    quiet: timedelta,
    max_length: timedelta,
    version: str | None = None,
) -> Collected:
    """Add a recording to the stream's open window (opening one), unless one of the stream's
    ended sessions held it already.

    On PostgreSQL the open window can be closing in another transaction (a replica's session
    sweep) between the insert that found it and the lock that waits for it: the lock then finds
    no open window, and the next try opens a new one. So the ended sessions are looked at again
    once the window is locked: the one that closed meanwhile may hold this recording (announced
    twice, and the first announcement went into it), and a window this call opened is then
    removed again."""
    file_id = segment.get("fileId")

    def ended() -> Collected | None:
        """The stream's ended session that holds this recording already, if one does."""
        if not isinstance(file_id, str):
            return None
        held = session_of_file(conn, workflow=workflow, stream_id=stream_id, file_id=file_id)
        return None if held is None else Collected(int(held["id"]), False, held["status"])

    earlier = ended()
    if earlier is not None:
        return earlier
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(windows)
    row = None
    for _ in range(3):
        opened = conn.execute(
            insert.values(
                workflow=workflow,
                stream_id=stream_id,
                status="open",
                opened_at=now,
                last_activity_at=now,
                closes_at=now + quiet,
                segments=[],
                version=version,
            )
            .on_conflict_do_nothing(index_elements=["workflow", "stream_id"], index_where=OPEN)
            .returning(windows.c.id)
        ).scalar_one_or_none()
        row = (
            (
                conn.execute(
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
            .one_or_none()
        )
        if row is None:
            continue
        if conn.dialect.name == "postgresql":  # SQLite runs one writer at a time
            earlier = ended()  # a session closed since the first look may hold it
            if earlier is not None:
                if opened is not None:
                    conn.execute(windows.delete().where(windows.c.id == opened))
                return earlier
        break
    if row is None:
        raise LookupError(
            f"{workflow}'s session of stream {stream_id}: every window opened for it was "
            "closed before the recording could join it"
        )
    segments: list[dict[str, Any]] = list(row["segments"] or [])
    same = [n for n, s in enumerate(segments) if s.get("fileId") == file_id]
    added = not same
    if added:
        segments.append(segment)
    else:
        # The same recording announced again (VOD's NewFileUpload, then the live service's
        # event with the recording times): what the later one knows fills in the first.
        segments[same[0]] = {**segments[same[0]], **segment}
    closes = min(now + quiet, row["opened_at"] + max_length)
    conn.execute(
        windows.update()
        .where(windows.c.id == row["id"])
        .values(segments=segments, last_activity_at=now, closes_at=closes)
    )
    return Collected(int(row["id"]), added=added)


def session_of_file(
    conn: sa.Connection, *, workflow: str, stream_id: str, file_id: str
) -> dict[str, Any] | None:
    """The closed or cancelled session of this workflow and stream that held the recording
    ``file_id`` (its newest), or None. A recording is announced twice (the live service's
    callback and VOD's NewFileUpload): the later one must not open a session of its own, and
    so start a second run, or bring back a session an operator cancelled."""
    rows = conn.execute(
        sa.select(windows.c.id, windows.c.status, windows.c.run_id, windows.c.segments)
        .where(
            windows.c.workflow == workflow,
            windows.c.stream_id == stream_id,
            windows.c.status != lit("open"),
        )
        .order_by(windows.c.id.desc())
        .limit(RECENT_SESSIONS)
    ).mappings()
    for row in rows:
        if any(s.get("fileId") == file_id for s in row["segments"] or []):
            return dict(row)
    return None


RECENT_SESSIONS = 20
"""How many of a stream's ended sessions a recording is looked for in: announcements of one
recording come minutes apart, sessions hours."""


def touch_stream(
    conn: sa.Connection, stream_id: str, now: datetime, quiet: dict[str, timedelta]
) -> int:
    """Stream activity without a recording (the stream ended): open windows wait ``quiet`` more."""
    rows = (
        conn.execute(
            sa.select(windows.c.id, windows.c.workflow, windows.c.opened_at).where(
                windows.c.stream_id == stream_id, windows.c.status == lit("open")
            )
        )
    ).all()
    for row in rows:
        wait = quiet.get(row.workflow)
        if wait is None:
            continue
        conn.execute(
            windows.update()
            .where(windows.c.id == row.id)
            .values(last_activity_at=now, closes_at=now + wait)
        )
    return len(rows)


def claim_due_windows(conn: sa.Connection, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Open windows whose quiet period is over, locked for the caller's transaction."""
    rows = (
        (
            conn.execute(
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


def close_window(conn: sa.Connection, window_id: int, run_id: str | None) -> None:
    conn.execute(
        windows.update().where(windows.c.id == window_id).values(status="closed", run_id=run_id)
    )


def cancel_window(conn: sa.Connection, window_id: int) -> bool:
    """An open window cancelled: its recordings start no run. False when it is not open
    (closed meanwhile, with or without a run, or cancelled already)."""
    result = conn.execute(
        windows.update()
        .where(windows.c.id == window_id, windows.c.status == lit("open"))
        .values(status="cancelled")
    )
    return bool(result.rowcount)
