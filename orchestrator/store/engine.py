"""The embedded VOD engine's rows: files, procedures and their tasks, outgoing events, nonces.

Claims are rows with leases (``lease_owner`` + ``lease_until``), so several engine processes can
share one database and a crashed one's work is taken over when its lease runs out: workers claim
tasks, the callback sender claims due pushes, PullEvent hides what it hands out for a while.
PostgreSQL skips rows another transaction has locked; SQLite's write transactions are exclusive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.store.sql import insert_ignore, lit
from orchestrator.store.tables import EngineEvent, EngineFile, EngineNonce, EngineTask

files = EngineFile.__table__  # type: ignore[attr-defined]
tasks = EngineTask.__table__  # type: ignore[attr-defined]
events = EngineEvent.__table__  # type: ignore[attr-defined]
nonces = EngineNonce.__table__  # type: ignore[attr-defined]

WAITING, PROCESSING, FINISHED = "waiting", "processing", "finished"


# --- files ------------------------------------------------------------------------------------


async def insert_file(conn: AsyncConnection, file: EngineFile) -> bool:
    """Add ``file``; False when its file ID is taken (draw another)."""
    result = await conn.execute(
        insert_ignore(conn, files, ["file_id"])
        .values(**file.model_dump())
        .returning(files.c.file_id)
    )
    return result.first() is not None


async def get_file(conn: AsyncConnection, file_id: str) -> EngineFile | None:
    row = (
        (await conn.execute(sa.select(files).where(files.c.file_id == file_id))).mappings().first()
    )
    return EngineFile(**row) if row is not None else None


async def stream_recordings(
    conn: AsyncConnection, stream_id: str, start: int, end: int
) -> list[EngineFile]:
    """Recordings of ``stream_id`` overlapping ``[start, end)``, in recording order."""
    rows = (
        await conn.execute(
            sa.select(files)
            .where(
                files.c.stream_id == stream_id,
                files.c.record_start < end,
                files.c.record_end > start,
            )
            .order_by(files.c.record_start, files.c.file_id)
        )
    ).mappings()
    return [EngineFile(**row) for row in rows]


# --- procedures and tasks ---------------------------------------------------------------------


async def insert_procedure(
    conn: AsyncConnection, procedure: EngineTask, members: Sequence[EngineTask]
) -> str | None:
    """Queue a procedure and its tasks. When an unfinished procedure already has the same
    ``dedup_key``, nothing is added and its task ID is returned."""
    added = await conn.execute(
        insert_ignore(conn, tasks, ["dedup_key"])
        .values(**procedure.model_dump())
        .returning(tasks.c.task_id)
    )
    if added.first() is None:
        existing = await conn.execute(
            sa.select(tasks.c.task_id).where(tasks.c.dedup_key == procedure.dedup_key)
        )
        # It may have finished (and let go of the key) in between: then it is no duplicate.
        found = existing.scalar()
        if found is not None:
            return str(found)
        await conn.execute(tasks.insert().values(**procedure.model_dump()))
    if members:
        await conn.execute(tasks.insert(), [member.model_dump() for member in members])
    return None


async def get_task(conn: AsyncConnection, task_id: str) -> EngineTask | None:
    row = (
        (await conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id))).mappings().first()
    )
    return EngineTask(**row) if row is not None else None


async def get_tasks(conn: AsyncConnection, task_ids: Iterable[str]) -> dict[str, EngineTask]:
    wanted = list(dict.fromkeys(task_ids))
    if not wanted:
        return {}
    rows = (await conn.execute(sa.select(tasks).where(tasks.c.task_id.in_(wanted)))).mappings()
    return {row["task_id"]: EngineTask(**row) for row in rows}


async def procedure_members(conn: AsyncConnection, procedure_id: str) -> list[EngineTask]:
    """A procedure's tasks (not the procedure itself) in execution order."""
    rows = (
        await conn.execute(
            sa.select(tasks)
            .where(tasks.c.procedure_id == procedure_id, tasks.c.stage >= 0)
            .order_by(tasks.c.stage, tasks.c.position)
        )
    ).mappings()
    return [EngineTask(**row) for row in rows]


async def lock_procedure(conn: AsyncConnection, procedure_id: str) -> EngineTask | None:
    """The procedure row, locked: finishing its tasks is serialized, so exactly one finisher
    sees the last task done."""
    row = (
        (
            await conn.execute(
                sa.select(tasks).where(tasks.c.task_id == procedure_id).with_for_update()
            )
        )
        .mappings()
        .first()
    )
    return EngineTask(**row) if row is not None else None


async def claim_task(
    conn: AsyncConnection, owner: str, now: datetime, lease_until: datetime
) -> EngineTask | None:
    """The oldest runnable task, leased to ``owner``: waiting (or processing with an expired
    lease: its worker died) and every earlier stage of its procedure finished."""
    earlier = tasks.alias("earlier")
    blocked = (
        sa.select(earlier.c.task_id)
        .where(
            earlier.c.procedure_id == tasks.c.procedure_id,
            earlier.c.stage >= 0,
            earlier.c.stage < tasks.c.stage,
            earlier.c.status != lit(FINISHED),
        )
        .exists()
    )
    runnable = sa.or_(
        tasks.c.status == lit(WAITING),
        sa.and_(tasks.c.status == lit(PROCESSING), tasks.c.lease_until < now),
    )
    row = (
        (
            await conn.execute(
                sa.select(tasks)
                .where(tasks.c.stage >= 0, runnable, ~blocked)
                .order_by(tasks.c.created_at, tasks.c.stage, tasks.c.position)
                .limit(1)
                .with_for_update(skip_locked=True, of=tasks)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    task = EngineTask(**row)
    task.status, task.lease_owner, task.lease_until = PROCESSING, owner, lease_until
    task.attempts += 1
    task.begun_at = task.begun_at or now
    await conn.execute(
        tasks.update()
        .where(tasks.c.task_id == task.task_id)
        .values(
            status=PROCESSING,
            lease_owner=owner,
            lease_until=lease_until,
            attempts=task.attempts,
            begun_at=task.begun_at,
        )
    )
    await conn.execute(
        tasks.update()
        .where(tasks.c.task_id == task.procedure_id, tasks.c.status == lit(WAITING))
        .values(status=PROCESSING, begun_at=now)
    )
    return task


async def renew_leases(
    conn: AsyncConnection, owner: str, task_ids: Sequence[str], lease_until: datetime
) -> int:
    """Extend ``owner``'s leases on ``task_ids`` (those it is still running)."""
    result = await conn.execute(
        tasks.update()
        .where(
            tasks.c.task_id.in_(list(task_ids)),
            tasks.c.lease_owner == owner,
            tasks.c.status == lit(PROCESSING),
        )
        .values(lease_until=lease_until)
    )
    return result.rowcount


async def release_tasks(
    conn: AsyncConnection, owner: str, task_ids: Sequence[str] | None = None
) -> int:
    """Hand ``owner``'s running tasks (those of ``task_ids``, or all) back to the queue."""
    where = [tasks.c.lease_owner == owner, tasks.c.status == lit(PROCESSING)]
    if task_ids is not None:
        where.append(tasks.c.task_id.in_(list(task_ids)))
    result = await conn.execute(
        tasks.update().where(*where).values(status=WAITING, lease_owner=None, lease_until=None)
    )
    return result.rowcount


async def lease_owners(conn: AsyncConnection) -> set[str]:
    """Who holds the running tasks, and the events being sent."""
    running = await conn.execute(
        sa.select(tasks.c.lease_owner)
        .where(tasks.c.status == lit(PROCESSING), tasks.c.lease_owner.is_not(None))
        .distinct()
    )
    sending = await conn.execute(
        sa.select(events.c.lease_owner)
        .where(events.c.push_status == lit("pending"), events.c.lease_owner.is_not(None))
        .distinct()
    )
    return {str(owner) for owner in [*running.scalars(), *sending.scalars()]}


async def release_pushes(conn: AsyncConnection, owner: str) -> int:
    """Make the events ``owner`` was sending due again (it died mid-send)."""
    result = await conn.execute(
        events.update()
        .where(events.c.lease_owner == owner, events.c.push_status == lit("pending"))
        .values(lease_owner=None, lease_until=None)
    )
    return result.rowcount


async def finish_task(
    conn: AsyncConnection, task: EngineTask, owner: str | None, now: datetime
) -> bool:
    """Record ``task``'s outcome (err_code, message, result, output, detail). With an
    ``owner``, only while that owner still holds the lease: a task another worker took over is
    not finished twice."""
    query = tasks.update().where(tasks.c.task_id == task.task_id, tasks.c.status != lit(FINISHED))
    if owner is not None:
        query = query.where(tasks.c.lease_owner == owner)
    result = await conn.execute(
        query.values(
            status=FINISHED,
            err_code=task.err_code,
            message=task.message,
            result=task.result,
            output=task.output,
            detail=task.detail,
            finished_at=now,
            begun_at=sa.func.coalesce(tasks.c.begun_at, now),
            lease_owner=None,
            lease_until=None,
            dedup_key=None,
        )
    )
    return result.rowcount == 1


async def list_procedures(
    conn: AsyncConnection, status: str, file_id: str | None, limit: int
) -> tuple[int, list[EngineTask]]:
    """(how many, the newest ``limit``) procedures in ``status``, optionally for one file."""
    where = [tasks.c.stage == -1, tasks.c.status == status]
    if file_id is not None:
        where.append(tasks.c.file_id == file_id)
    total = (
        await conn.execute(sa.select(sa.func.count()).select_from(tasks).where(*where))
    ).scalar()
    rows = (
        await conn.execute(
            sa.select(tasks).where(*where).order_by(tasks.c.created_at.desc()).limit(limit)
        )
    ).mappings()
    return int(total or 0), [EngineTask(**row) for row in rows]


async def file_results(conn: AsyncConnection, file_id: str) -> list[EngineTask]:
    """The successful media tasks run on a file, oldest first (a later one replaced earlier
    outputs of the same definition)."""
    rows = (
        await conn.execute(
            sa.select(tasks)
            .where(
                tasks.c.file_id == file_id,
                tasks.c.stage == 2,
                tasks.c.status == lit(FINISHED),
                tasks.c.err_code == 0,
            )
            .order_by(tasks.c.finished_at, tasks.c.task_id)
        )
    ).mappings()
    return [EngineTask(**row) for row in rows]


# --- events -----------------------------------------------------------------------------------


async def insert_events(conn: AsyncConnection, rows: Sequence[EngineEvent]) -> None:
    if rows:
        await conn.execute(events.insert(), [row.model_dump(exclude={"id"}) for row in rows])


async def claim_pushes(
    conn: AsyncConnection, owner: str, now: datetime, lease_until: datetime, limit: int
) -> list[EngineEvent]:
    """Events due to be POSTed to the callback URL, leased to ``owner`` for one send."""
    rows = (
        (
            await conn.execute(
                sa.select(events)
                .where(
                    events.c.push_status == lit("pending"),
                    events.c.next_push_at <= now,
                    sa.or_(events.c.lease_until.is_(None), events.c.lease_until < now),
                )
                .order_by(events.c.next_push_at, events.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .mappings()
        .all()
    )
    claimed = [EngineEvent(**row) for row in rows]
    if claimed:
        await conn.execute(
            events.update()
            .where(events.c.id.in_([event.id for event in claimed]))
            .values(lease_owner=owner, lease_until=lease_until)
        )
    return claimed


async def record_push(
    conn: AsyncConnection,
    event_id: int,
    owner: str,
    *,
    status: str,
    attempts: int,
    next_push_at: datetime | None,
    error: str | None,
    delivered_at: datetime | None,
) -> None:
    await conn.execute(
        events.update()
        .where(events.c.id == event_id, events.c.lease_owner == owner)
        .values(
            push_status=status,
            push_attempts=attempts,
            next_push_at=next_push_at,
            push_error=error,
            delivered_at=delivered_at,
            lease_owner=None,
            lease_until=None,
        )
    )


async def next_push_at(conn: AsyncConnection) -> datetime | None:
    """When the earliest pending push is due (None: nothing to send)."""
    return (
        await conn.execute(
            sa.select(sa.func.min(events.c.next_push_at)).where(
                events.c.push_status == lit("pending")
            )
        )
    ).scalar()


async def pull_events(
    conn: AsyncConnection, now: datetime, hidden_until: datetime, limit: int
) -> list[EngineEvent]:
    """Unconfirmed events that are visible now, oldest first; hidden until ``hidden_until`` so
    a concurrent PullEvent does not hand them out too."""
    rows = (
        (
            await conn.execute(
                sa.select(events)
                .where(events.c.pull_status == lit("pending"), events.c.visible_at <= now)
                .order_by(events.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .mappings()
        .all()
    )
    pulled = [EngineEvent(**row) for row in rows]
    if pulled:
        await conn.execute(
            events.update()
            .where(events.c.id.in_([event.id for event in pulled]))
            .values(visible_at=hidden_until)
        )
    return pulled


async def confirm_events(conn: AsyncConnection, handles: Sequence[str], now: datetime) -> int:
    result = await conn.execute(
        events.update()
        .where(events.c.msg_handle.in_(list(handles)), events.c.pull_status == lit("pending"))
        .values(pull_status="confirmed", confirmed_at=now)
    )
    return result.rowcount


async def task_events(conn: AsyncConnection, task_id: str) -> list[EngineEvent]:
    rows = (
        await conn.execute(
            sa.select(events).where(events.c.task_id == task_id).order_by(events.c.id)
        )
    ).mappings()
    return [EngineEvent(**row) for row in rows]


# --- nonces -----------------------------------------------------------------------------------


async def use_nonce(
    conn: AsyncConnection,
    secret_id: str,
    nonce: str,
    now: float,
    window: float,
    timestamp: float,
) -> bool:
    """Record the Nonce of a request dated ``timestamp``; False when the same SecretId used it
    in a request that may still be within ``window`` (a replay).

    It is remembered until ``window`` seconds after the later of ``now`` and ``timestamp``: a
    request dated ahead of the clock stays acceptable that much longer, and so must its Nonce.
    """
    seen = max(now, timestamp)
    added = await conn.execute(
        insert_ignore(conn, nonces, ["secret_id", "nonce"])
        .values(secret_id=secret_id, nonce=nonce, seen_at=seen)
        .returning(nonces.c.nonce)
    )
    if added.first() is not None:
        return True
    key = sa.and_(nonces.c.secret_id == secret_id, nonces.c.nonce == nonce)
    renewed = await conn.execute(
        nonces.update().where(key, nonces.c.seen_at <= now - window).values(seen_at=seen)
    )
    return renewed.rowcount == 1


async def forget_nonces(conn: AsyncConnection, before: float) -> int:
    result = await conn.execute(nonces.delete().where(nonces.c.seen_at < before))
    return result.rowcount
