"""The inbox, the outbox and timers: durable queues with leases, as named queries.

Inbox events are every inbound body as received (dedup key unique: a resent callback is not stored
twice). Outbox commands are every outbound call, written in the transaction that decided them and
claimed with a lease, so a process that dies mid-call leaves a row another process re-sends once
the lease expires. Timers are due inputs for the machine (timeouts, retries), claimed the same way.

Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas never take the same row; SQLite
serializes writers, which gives the same guarantee on one machine.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.store import driver
from orchestrator.store.sql import lit
from orchestrator.store.tables import InboxEvent, OutboxCommand, Timer
from orchestrator.vod.events import PROCEDURE_EVENT

inbox = InboxEvent.__table__  # type: ignore[attr-defined]
outbox = OutboxCommand.__table__  # type: ignore[attr-defined]
timers = Timer.__table__  # type: ignore[attr-defined]


class InboxStatus:
    PENDING = "pending"  # accepted, not applied yet
    APPLIED = "applied"  # changed a run (or started one, or joined a session)
    ORPHAN = "orphan"  # a task event whose task is not known yet: waits for its task ID
    LATE = "late"  # reached a run that had already ended: recorded, not applied
    IGNORED = "ignored"  # nothing to do (no workflow matches, an unknown kind, a duplicate task)
    UNMATCHED = "unmatched"  # an orphan nobody claimed before it expired
    INVALID = "invalid"  # malformed or failed authentication: kept for inspection
    FAILED = "failed"  # applying it raised: kept, with the error, for replay


INBOX_STATUSES = tuple(v for k, v in vars(InboxStatus).items() if k.isupper())
TIMER_STATUSES = ("pending", "fired", "cancelled", "failed")  # failed: as an inbox event's


@dataclass(frozen=True)
class NewInboxEvent:
    source: str
    event_type: str
    dedup_key: str | None
    body: str
    task_id: str | None = None
    file_id: str | None = None
    stream_id: str | None = None
    status: str = InboxStatus.PENDING
    note: str | None = None
    received_at: datetime | None = None
    """When the request arrived, if it waited for its group's transaction (else that
    transaction's time): the callback latency the dashboard shows counts from it."""


def insert_inbox(
    conn: sa.Connection, events: Sequence[NewInboxEvent], now: datetime
) -> list[int | None]:
    """Insert events; returns each one's id, or None where its dedup key was already stored.

    One statement for the whole group, returning the new ids (on the driver: this is every
    callback's path): a group of callbacks costs little more than one.
    """
    rows = [_inbox_values(event, now) for event in events]
    keyed = [row for row in rows if row["dedup_key"] is not None]
    ids: dict[str, int] = {}
    if keyed:
        new = driver.insert_returning(
            conn, inbox, keyed, ["id", "dedup_key"], ignore_conflict_on=["dedup_key"]
        )
        ids = {row["dedup_key"]: int(row["id"]) for row in new}
    out: list[int | None] = []
    taken: set[str] = set()
    for row in rows:
        key = row["dedup_key"]
        if key is None:
            out.append(int(conn.execute(inbox.insert().returning(inbox.c.id), row).scalar_one()))
        elif key in ids and key not in taken:
            taken.add(key)  # a key twice in one group: the second copy is the duplicate
            out.append(ids[key])
        else:
            out.append(None)
    return out


def _inbox_values(event: NewInboxEvent, now: datetime) -> dict[str, Any]:
    return {
        "received_at": event.received_at or now,
        "source": event.source,
        "event_type": event.event_type,
        "dedup_key": event.dedup_key,
        # As received, but for NUL, which PostgreSQL's text cannot hold (only a body that is
        # no JSON carries one raw, and it is kept for inspection, not read again).
        "body": event.body.replace("\x00", "\ufffd"),
        "status": event.status,
        "task_id": event.task_id,
        "file_id": event.file_id,
        "stream_id": event.stream_id,
        "note": event.note,
    }


def pending_inbox(conn: sa.Connection, limit: int) -> list[dict[str, Any]]:
    """The oldest pending events, locked for this transaction (skipped by other replicas)."""
    query = (
        sa.select(inbox)
        .where(inbox.c.status == lit(InboxStatus.PENDING))
        .order_by(inbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [dict(r) for r in (conn.execute(query)).mappings()]


def mark_inbox(
    conn: sa.Connection,
    event_id: int,
    status: str,
    *,
    now: datetime,
    run_id: str | None = None,
    note: str | None = None,
) -> None:
    mark_inbox_many(conn, [(event_id, status, run_id, note)], now)


def mark_inbox_many(
    conn: sa.Connection, outcomes: Sequence[tuple[int, str, str | None, str | None]], now: datetime
) -> None:
    """Record (id, status, run_id, note) for many events in one statement (on the driver:
    every task callback is marked so)."""
    driver.update_many(
        conn,
        inbox,
        ["id"],
        (
            {"id": i, "status": st, "run_id": run, "note": note, "applied_at": now}
            for i, st, run, note in outcomes
        ),
    )


def wake_orphans(conn: sa.Connection, task_ids: Sequence[str]) -> int:
    """Orphans waiting for these task IDs become pending again (they can be matched now).

    An orphan procedure event waits for its own ID or for one of its sub-tasks' (the runner ties
    it to the run that recorded them); the sub-tasks' IDs are only in its body, so orphan
    procedure events whose body names one of these IDs are woken too. A false match is harmless:
    the event is looked at again and stays an orphan. Called once per transition that records
    tasks (not per callback), over the orphans only.
    """
    if not task_ids:
        return 0
    named = sa.or_(*(inbox.c.body.contains(task_id, autoescape=True) for task_id in task_ids))
    result = conn.execute(
        inbox.update()
        .where(
            inbox.c.status == lit(InboxStatus.ORPHAN),
            sa.or_(
                inbox.c.task_id.in_(list(task_ids)),
                sa.and_(inbox.c.event_type == lit(PROCEDURE_EVENT), named),
            ),
        )
        .values(status=InboxStatus.PENDING)
    )
    # Events recorded (not applied) against a run that their fileId tied them to, while no run
    # knew their ID (``orchestrator.correlate``): the run recording it now is theirs.
    tied = conn.execute(
        inbox.update()
        .where(
            inbox.c.task_id.in_(list(task_ids)),
            inbox.c.status == lit(InboxStatus.IGNORED),
            sa.or_(inbox.c.run_id.is_not(None), inbox.c.event_type == lit(PROCEDURE_EVENT)),
        )
        .values(status=InboxStatus.PENDING)
    )
    return int(result.rowcount or 0) + int(tied.rowcount or 0)


@dataclass(frozen=True)
class Orphan:
    id: int
    task_id: str
    event_type: str
    body: str | None
    """Only for procedure events, whose sub-tasks' IDs are in it."""
    file_id: str | None = None


def orphans(conn: sa.Connection, limit: int) -> list[Orphan]:
    """The oldest orphans (with the body of procedure events)."""
    procedure = inbox.c.event_type == lit(PROCEDURE_EVENT)
    rows = conn.execute(
        sa.select(
            inbox.c.id,
            inbox.c.task_id,
            inbox.c.event_type,
            sa.case((procedure, inbox.c.body), else_=sa.null()).label("body"),
            inbox.c.file_id,
        )
        .where(inbox.c.status == lit(InboxStatus.ORPHAN), inbox.c.task_id.is_not(None))
        .order_by(inbox.c.id)
        .limit(limit)
    )
    return [Orphan(int(r.id), str(r.task_id), str(r.event_type), r.body, r.file_id) for r in rows]


def requeue(conn: sa.Connection, event_ids: Sequence[int]) -> int:
    """Orphans become pending again."""
    if not event_ids:
        return 0
    result = conn.execute(
        inbox.update()
        .where(inbox.c.id.in_(list(event_ids)), inbox.c.status == lit(InboxStatus.ORPHAN))
        .values(status=InboxStatus.PENDING)
    )
    return int(result.rowcount or 0)


def expire_orphans(conn: sa.Connection, older_than: datetime, now: datetime) -> int:
    result = conn.execute(
        inbox.update()
        .where(inbox.c.status == lit(InboxStatus.ORPHAN), inbox.c.received_at < older_than)
        .values(
            status=InboxStatus.UNMATCHED,
            applied_at=now,
            note="no run recorded this task ID before the orphan expired",
        )
    )
    return int(result.rowcount or 0)


REPLAYABLE = (
    InboxStatus.FAILED,
    InboxStatus.ORPHAN,
    InboxStatus.UNMATCHED,
    InboxStatus.LATE,
    InboxStatus.IGNORED,
)
"""Statuses of events that changed nothing, so applying them again rewrites no record: a failed
one once its cause is fixed, an orphan or unmatched one whose task is known now, a late one, an
ignored one (say, a recording no workflow matched, before a new workflow). An applied event is
not among them: its effect happened, and applying it again would only record it anew as late or
as a duplicate, as if it had not been applied. Invalid bodies cannot be read; pending events are
waiting already."""


UNAPPLIED = (InboxStatus.ORPHAN, InboxStatus.UNMATCHED, InboxStatus.IGNORED)
"""Statuses of events that changed nothing, for want of a run waiting on their task, and that
applying again cannot harm (unlike a failed one, which waits for an operator to fix its cause,
or a late one, whose run had ended)."""


def requeue_unapplied(conn: sa.Connection, dedup_key: str) -> int:
    """The stored event with this key becomes pending again if it changed nothing when it came:
    the sweep's task query found a waiting task's result, and it is this copy (a procedure's
    event ignored, an orphan that expired, before a run recorded the task)."""
    result = conn.execute(
        inbox.update()
        .where(inbox.c.dedup_key == dedup_key, inbox.c.status.in_(UNAPPLIED))
        .values(status=InboxStatus.PENDING, applied_at=None)
    )
    return int(result.rowcount or 0)


def replay_inbox(conn: sa.Connection, event_id: int) -> bool:
    """Make an event pending again (an operator's replay). False when there is no such event
    or its status is not in ``REPLAYABLE``."""
    result = conn.execute(
        inbox.update()
        .where(inbox.c.id == event_id, inbox.c.status.in_(REPLAYABLE))
        .values(status=InboxStatus.PENDING, applied_at=None)
    )
    return bool(result.rowcount)


# --- outbox -------------------------------------------------------------------------------


def claim_outbox(
    conn: sa.Connection,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    exclude: Collection[int] = (),
) -> list[dict[str, Any]]:
    """Claim due outbox commands: they become in_flight under ``owner`` until the lease ends.
    Each claim counts in ``tries``, which names it (see :func:`_claimed`). ``exclude``: the
    commands ``owner`` is still working on, though their leases ran out and they were handed
    back: not claimed again by it while that work goes on."""
    due = [outbox.c.status == lit("pending"), outbox.c.next_attempt_at <= now]
    if exclude:
        due.append(outbox.c.id.not_in(list(exclude)))
    rows = (
        (
            conn.execute(
                sa.select(outbox)
                .where(*due)
                .order_by(outbox.c.next_attempt_at, outbox.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .mappings()
        .all()
    )
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    conn.execute(
        outbox.update()
        .where(outbox.c.id.in_(ids))
        .values(
            status="in_flight",
            lease_owner=owner,
            lease_until=now + lease,
            tries=outbox.c.tries + 1,
        )
    )
    return [{**dict(r), "tries": r["tries"] + 1} for r in rows]


def _claimed(command_id: int, owner: str, tries: int) -> list[sa.ColumnElement[bool]]:
    """The command is still in the claim ``owner`` made as its try number ``tries``: in flight,
    under ``owner``'s name, and not claimed again since (by another process, or by ``owner``
    itself after its lease ran out: the claim's ``tries`` is its fencing token)."""
    return [
        outbox.c.id == command_id,
        outbox.c.status == lit("in_flight"),
        outbox.c.lease_owner == owner,
        outbox.c.tries == tries,
    ]


def finish_outbox(
    conn: sa.Connection,
    command_id: int,
    owner: str,
    *,
    tries: int,
    now: datetime,
    result: Any,
    error: str | None = None,
) -> bool:
    """Record a command's outcome; False when the claim was lost (another took it over)."""
    done = conn.execute(
        outbox.update()
        .where(*_claimed(command_id, owner, tries))
        .values(
            status="done",
            result=result,
            last_error=error,
            done_at=now,
            lease_owner=None,
            lease_until=None,
        )
    )
    return bool(done.rowcount)


def hold_outbox_lease(
    conn: sa.Connection, command_id: int, owner: str, tries: int, now: datetime, lease: timedelta
) -> bool:
    """Renew the claim ``owner`` made as try ``tries`` on one command right before it is
    carried out: False when the claim is lost (the process stood still past its lease, and the
    command was handed to another claim, which may have carried it out already). Renewed, the
    command cannot be handed over for a whole lease, so the send that follows is the only one."""
    held = conn.execute(
        outbox.update().where(*_claimed(command_id, owner, tries)).values(lease_until=now + lease)
    )
    return bool(held.rowcount)


def renew_outbox_leases(
    conn: sa.Connection, owner: str, command_ids: Sequence[int], now: datetime, lease: timedelta
) -> tuple[list[int], list[int]]:
    """Extend to ``now + lease`` the leases ``owner`` still holds among these commands (its
    heartbeat while it works on them). Returns (renewed, lost): a command the sweeper handed
    back, or another process claimed since, is not ``owner``'s any more and is left alone (a
    command already done is neither)."""
    if not command_ids:
        return [], []
    renewed = conn.execute(
        outbox.update()
        .where(
            outbox.c.id.in_(list(command_ids)),
            outbox.c.status == lit("in_flight"),
            outbox.c.lease_owner == owner,
        )
        .values(lease_until=now + lease)
        .returning(outbox.c.id)
    ).scalars()
    ids = [int(i) for i in renewed]
    kept = set(ids)
    rest = [i for i in command_ids if i not in kept]
    lost: list[int] = []
    if rest:
        lost = [
            int(i)
            for i in conn.execute(
                sa.select(outbox.c.id).where(outbox.c.id.in_(rest), outbox.c.status != lit("done"))
            ).scalars()
        ]
    return ids, lost


def release_outbox(
    conn: sa.Connection,
    command_id: int,
    owner: str,
    *,
    tries: int,
    retry_at: datetime,
    error: str,
) -> None:
    """Give a command back to the queue, to be tried again at ``retry_at`` (if the claim is
    still this one: see :func:`_claimed`)."""
    conn.execute(
        outbox.update()
        .where(*_claimed(command_id, owner, tries))
        .values(
            status="pending",
            next_attempt_at=retry_at,
            last_error=error,
            lease_owner=None,
            lease_until=None,
        )
    )


def expire_outbox_leases(conn: sa.Connection, now: datetime) -> list[int]:
    """In-flight commands whose owner stopped renewing: back to pending, to be sent again."""
    rows = (
        (
            conn.execute(
                sa.select(outbox.c.id)
                .where(outbox.c.status == lit("in_flight"), outbox.c.lease_until < now)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )
    if rows:
        conn.execute(
            outbox.update()
            .where(outbox.c.id.in_(rows))
            .values(
                status="pending",
                next_attempt_at=now,
                lease_owner=None,
                lease_until=None,
                last_error="the lease expired while the command was in flight",
            )
        )
    return list(rows)


# --- timers -------------------------------------------------------------------------------


def claim_due_timers(conn: sa.Connection, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Due timers, marked fired in this transaction (the caller applies them in it too)."""
    rows = (
        (
            conn.execute(
                sa.select(timers)
                .where(timers.c.status == lit("pending"), timers.c.due_at <= now)
                .order_by(timers.c.due_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .mappings()
        .all()
    )
    if rows:
        conn.execute(
            timers.update().where(timers.c.id.in_([r["id"] for r in rows])).values(status="fired")
        )
    return [dict(r) for r in rows]


def mark_timers_failed(conn: sa.Connection, errors: Mapping[int, str]) -> None:
    """Timers whose input could not be applied, with why: kept, not pruned, until an operator
    replays them (:func:`replay_timer`); the run itself is left as it was."""
    for timer_id, error in errors.items():  # rare: one statement each
        conn.execute(
            timers.update().where(timers.c.id == timer_id).values(status="failed", error=error)
        )


def replay_timer(conn: sa.Connection, timer_id: int) -> bool:
    """Make a failed timer pending again (an operator's replay, once the cause is fixed): the
    next timer sweep fires it. False when there is no such failed timer."""
    result = conn.execute(
        timers.update()
        .where(timers.c.id == timer_id, timers.c.status == lit("failed"))
        .values(status="pending", error=None)
    )
    return bool(result.rowcount)


def next_timer_due(conn: sa.Connection) -> datetime | None:
    due: datetime | None = (
        conn.execute(
            sa.select(timers.c.due_at)
            .where(timers.c.status == lit("pending"))
            .order_by(timers.c.due_at)
            .limit(1)
        )
    ).scalar()
    return due


_DONE_INBOX = (
    InboxStatus.APPLIED,
    InboxStatus.IGNORED,
    InboxStatus.LATE,
    InboxStatus.UNMATCHED,
    InboxStatus.INVALID,
)


def prune(conn: sa.Connection, older_than: datetime, limit: int = 5000) -> dict[str, int]:
    """Delete handled inbox events, done outbox commands and spent timers older than a time.

    Pending work (pending inbox events, orphans, failed events kept for replay, outbox commands
    not done, pending timers) is never pruned. At most ``limit`` rows of each per call, so a
    large backlog is worked off over several sweeps without one long transaction.
    """
    found: dict[str, int] = {}
    for name, table, done, when in (
        ("inbox", inbox, inbox.c.status.in_(_DONE_INBOX), inbox.c.received_at),
        ("outbox", outbox, outbox.c.status == "done", outbox.c.created_at),
        ("timers", timers, timers.c.status.in_(["fired", "cancelled"]), timers.c.due_at),
    ):
        ids = sa.select(table.c.id).where(done, when < older_than).limit(limit)
        result = conn.execute(table.delete().where(table.c.id.in_(ids.scalar_subquery())))
        found[name] = int(result.rowcount or 0)
    return found
